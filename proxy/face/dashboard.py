"""The dashboard at /ui on the admin listener: classes and keys with their state, a live event feed, per-class
cold-start percentiles and a sparkline of the last hour, and start/stop/pause buttons.

The page is a shell (no data in it) that reads `/ui/keys` (one page of keys: thousands stay cheap),
`/ui/classes` and the event stream `/ui/events`; each read follows the admin listener's read rule (open on
loopback, else the token). The page streams with `fetch` so it can send the token as a header (an EventSource
cannot), and re-reads its page at most once a second, only after events: no polling storm. Actions go to the
existing control API (`POST /admin/keys/{class}/{key}/start|stop|pause`) with the token; without one the
page is read-only.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import deque
from typing import Any, Callable

from aiohttp import web

from proxy.config.schema import Config
from proxy.errors import InvalidInput
from proxy.face.render import render
from proxy.lifecycle.events import BreakerOpened, Event, EventBus, Happening, Transition
from proxy.lifecycle.manager import Manager
from proxy.lifecycle.registry import Registry

HOUR = 3600.0
FEED = 200  # recent events a new viewer is shown first
PAGE, MAX_PAGE = 50, 500  # keys per page: the default and the most one request may ask
QUEUE = 1000  # events buffered per viewer; a viewer that falls behind is told to read afresh
KEEPALIVE = 15.0

KeyStatus = Callable[[Manager], dict[str, Any]]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


class Dashboard:
    def __init__(self, config: Config, registry: Registry, bus: EventBus, key_status: KeyStatus) -> None:
        self.config = config
        self.registry = registry
        self.key_status = key_status
        self.starts: dict[str, deque[tuple[float, float]]] = {name: deque() for name in config.containers}
        self.feed: deque[dict[str, Any]] = deque(maxlen=FEED)
        self.viewers: set[asyncio.Queue[dict[str, Any] | None]] = set()
        bus.subscribe(self.on_event)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/ui", self.page)
        app.router.add_get("/ui/keys", self.keys)
        app.router.add_get("/ui/classes", self.classes)
        app.router.add_get("/ui/events", self.events)

    # ---------------------------------------------------------------- the event bus

    def on_event(self, event: Event) -> None:
        if isinstance(event, Transition):
            item = {"kind": "state", "t": event.timestamp, "container": event.class_name, "key": event.key,
                    "from": event.old.value, "to": event.new.value, "reason": event.reason,
                    "happening": event.happening.value if event.happening else None,
                    "seconds": round(event.duration, 3)}
            if event.happening is Happening.STARTED:
                self.starts.setdefault(event.class_name, deque()).append((event.timestamp, event.duration))
        elif isinstance(event, BreakerOpened):
            item = {"kind": "breaker", "t": event.timestamp, "container": event.class_name, "key": event.key,
                    "reason": event.reason, "seconds": event.backoff}
        else:
            return
        self.feed.append(item)
        for queue in self.viewers:
            if queue.full():
                queue.get_nowait()
                item = {"kind": "resync", "t": item["t"]}  # it fell behind: it reads its page afresh
            queue.put_nowait(item)

    # ---------------------------------------------------------------- reads

    async def page(self, request: web.Request) -> web.Response:
        html, headers = render("dashboard.html", {"classes": list(self.config.containers)})
        return web.Response(body=html.encode(), headers=headers)

    async def keys(self, request: web.Request) -> web.Response:
        """`?offset=&limit=&q=&container=`: one page of keys, by class then key, and how many match."""
        query = request.query
        try:
            offset = max(0, int(query.get("offset", "0")))
            limit = min(MAX_PAGE, max(1, int(query.get("limit", str(PAGE)))))
        except ValueError:
            raise InvalidInput("offset and limit are whole numbers") from None
        needle, class_name = query.get("q", "").lower(), query.get("container", "")
        chosen = sorted((m for m in self.registry if (not class_name or m.klass.name == class_name)
                         and needle in m.key.lower()), key=lambda m: (m.klass.name, m.key))
        now = time.time()
        rows = [self._row(m, now) for m in chosen[offset:offset + limit]]
        return web.json_response({"total": len(chosen), "offset": offset, "limit": limit, "keys": rows},
                                 headers={"Cache-Control": "no-store"})

    def _row(self, manager: Manager, now: float) -> dict[str, Any]:
        status = self.key_status(manager)
        last = status.get("last_activity")
        usage = status.get("usage") or {}
        idle = round(now - last, 1) if last and manager.in_flight == 0 and manager.state.value == "running" else None
        return {"key": manager.key, "container": manager.klass.name, "state": manager.state.value,
                "in_flight": manager.in_flight, "idle_seconds": idle, "starts": manager.start_count,
                "image": manager.klass.spec.image, "generation": status.get("generation"),
                "cost_usd": usage.get("estimated_cost_usd"), "last_error": status.get("last_error")}

    async def classes(self, request: web.Request) -> web.Response:
        """Per class: keys and running, cold-start p50/p90/p99 of the last hour, its 60 minutes' slowest starts."""
        now = time.time()
        counts: dict[str, list[int]] = {name: [0, 0] for name in self.config.containers}
        for manager in self.registry:
            count = counts.setdefault(manager.klass.name, [0, 0])
            count[0] += 1
            count[1] += manager.state.value == "running"
        out = []
        for name, klass in self.config.containers.items():
            recent = self.starts.setdefault(name, deque())
            while recent and recent[0][0] < now - HOUR:
                recent.popleft()
            seconds = [s for _, s in recent]
            minutes = [0.0] * 60
            for at, s in recent:
                slot = min(59, int((now - at) // 60))
                minutes[59 - slot] = max(minutes[59 - slot], s)
            out.append({"name": name, "image": klass.spec.image, "keys": counts[name][0],
                        "running": counts[name][1], "max_instances": klass.max_instances, "starts_last_hour":
                        len(seconds), "p50": percentile(seconds, 0.5), "p90": percentile(seconds, 0.9),
                        "p99": percentile(seconds, 0.99), "sparkline": [round(m, 3) for m in minutes]})
        return web.json_response({"classes": out}, headers={"Cache-Control": "no-store"})

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-Sent Events: the recent feed, then each lifecycle event as it happens."""
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(QUEUE)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        self.viewers.add(queue)
        try:
            for recent in list(self.feed):
                await response.write(_sse(recent))
            await response.write(_sse({"kind": "live"}))
            while True:
                try:
                    async with asyncio.timeout(KEEPALIVE):
                        item = await queue.get()
                except TimeoutError:
                    await response.write(b": keepalive\n\n")
                    continue
                if item is None:
                    break
                await response.write(_sse(item))
        except (ConnectionResetError, ConnectionError):
            pass
        finally:
            self.viewers.discard(queue)
        return response

    def close(self) -> None:
        """End every stream (the listener shuts down)."""
        for queue in self.viewers:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(None)


def _sse(item: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(item)}\n\n".encode()
