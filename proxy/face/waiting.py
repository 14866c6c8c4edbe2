"""The waiting page: a browser that opens a sleeping app sees its start live, then the app itself.

`RouteHandler` asks `wait_or_page` before it leases a key that is not running, for a browser navigation
(proxy/face/navigation.py) on a route with `waiting_page`. The start begins and the request waits `after`
seconds as any would: a fast start is served at once (no flash). Later, the browser gets a 503 page
(`Cache-Control: no-store`, `Retry-After`: temporary for caches and crawlers) while the start goes on; the
page follows its key's progress by SSE at `/.lazy-proxy/wait/<token>/events` (or the JSON snapshot at
`/.lazy-proxy/wait/<token>`, token from proxy/face/progress.py) and, once ready, loads the same URL again;
without JavaScript a meta refresh does. A failed start shows its public reason and a retry button.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from proxy.config.routes import WaitingPage
from proxy.errors import NotFound, Refusal, refusal_body
from proxy.face.progress import Progress, Start, Unit
from proxy.face.render import render
from proxy.lifecycle.events import EventBus, State
from proxy.lifecycle.manager import Manager
from proxy.lifecycle.registry import Registry
from proxy.request_id import HEADER

RESERVED = "/.lazy-proxy/wait"  # the proxied listener's one reserved path (it shadows the apps' own)
REFRESH = 2  # seconds: the meta refresh without JavaScript, and Retry-After
STREAM_LIMIT = 600.0  # seconds an event stream stays open at most (the page reconnects)
KEEPALIVE = 15.0  # seconds between comment lines on a quiet stream


class WaitingPages:
    def __init__(self, bus: EventBus, registry: Registry, detail: str = "public") -> None:
        self.progress = Progress(bus, detail)
        self.registry = registry
        self.detail = detail
        self.closing = False

    def add_routes(self, app: web.Application) -> None:
        """Before the configured routes, so a catch-all route does not take them."""
        app.router.add_get(RESERVED + "/{token}", self.status)
        app.router.add_get(RESERVED + "/{token}/events", self.events)
        app.on_shutdown.append(self.close)

    def resources(self) -> list[web.Resource]:
        """The same two endpoints for a router already serving (a live reload indexes them:
        proxy/http/route_table.py), each GET with HEAD as `add_get` makes them."""
        out: list[web.Resource] = []
        for path, handler in ((RESERVED + "/{token}", self.status), (RESERVED + "/{token}/events", self.events)):
            resource = web.DynamicResource(path)
            resource.add_route("HEAD", handler)
            resource.add_route("GET", handler)
            out.append(resource)
        return out

    async def close(self, app: web.Application | None = None) -> None:
        """End the event streams (the proxy shuts down): each page falls back to reloading its URL."""
        self.closing = True
        self.progress.wake_all()

    # ---------------------------------------------------------------- the request path

    async def wait_or_page(self, request: web.Request, manager: Manager, options: WaitingPage,
                           rid: str) -> float | web.Response:
        """Seconds waited when the key became ready within `after`; else the waiting page."""
        retry = float(REFRESH)
        try:
            async with asyncio.timeout(options.after):
                return await manager.ensure_running(reason="request") or 0.0
        except TimeoutError:
            pass  # the start goes on (requests share it); the page follows it
        except Refusal as refusal:  # failed, timed out, or refused before it began (breaker, capacity)
            self.progress.fail(manager.klass.name, manager.key, str(refusal_body(refusal, rid, self.detail)["reason"]))
            retry = max(retry, refusal.retry_after or 0.0)  # a breaker's backoff: no sooner than that
        return self.page(request, manager, options, rid, retry)

    def page(self, request: web.Request, manager: Manager, options: WaitingPage, rid: str,
             retry: float = REFRESH) -> web.Response:
        unit = (manager.klass.name, manager.key)
        token = self.progress.token(*unit)
        snapshot = self.snapshot(unit)
        raw = request.raw_path  # as asked (`//host` would be another site's: the page links "" then, the same URL)
        context: dict[str, Any] = {
            "app": manager.key, "url": raw if raw.startswith("/") and not raw.startswith("//") else "",
            "status_url": f"{RESERVED}/{token}", "events_url": f"{RESERVED}/{token}/events",
            "state": snapshot, "refresh": REFRESH, "theme": options.theme}
        html, headers = render(f"waiting-{options.theme}.html", context, options.template)
        headers.update({"Retry-After": str(round(retry)), "X-Robots-Tag": "noindex, nofollow",
                        "Vary": "Accept, Sec-Fetch-Mode, Sec-Fetch-Dest", HEADER: rid})
        return web.Response(status=503, body=html.encode(), headers=headers)

    # ---------------------------------------------------------------- what the page reads

    def snapshot(self, unit: Unit) -> dict[str, Any]:
        """The key's start for its page: state, phase under way, finished phases, public reason."""
        class_name, key = unit
        start = self.progress.starts.get(unit)
        manager = self.registry.peek(key, class_name)
        running = manager is not None and manager.state is State.RUNNING
        if start is None or (running and start.state != "ready"):
            start = Start(state="ready" if running else "starting")
        return start.snapshot(key)

    def _unit(self, request: web.Request) -> Unit:
        unit = self.progress.unit_of(request.match_info["token"])
        if unit is None:
            raise NotFound("no such waiting page")
        return unit

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(self.snapshot(self._unit(request)), headers={"Cache-Control": "no-store"})

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-Sent Events: the snapshot now and at each change, until the start is ready or failed."""
        unit = self._unit(request)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        until = loop.time() + STREAM_LIMIT
        sent: tuple[Any, ...] | None = None
        try:
            while loop.time() < until and not self.closing:
                snapshot = self.snapshot(unit)
                seen = (snapshot["state"], snapshot["phase"], len(snapshot["phases"]), snapshot["reason"])
                if seen != sent:
                    await response.write(f"data: {json.dumps(snapshot)}\n\n".encode())
                    sent = seen
                else:
                    await response.write(b": still starting\n\n")
                if snapshot["state"] != "starting" or self.closing:
                    break
                await self.progress.next_change(unit, KEEPALIVE)
        except (ConnectionResetError, ConnectionError):
            return response
        await response.write_eof()
        return response
