"""Configured routes: URL -> key -> manager -> forward. The request path in one place.

    app -> RouteHandler(route) -> registry.get(key) -> manager.lease() -> backend instance -> forward
"""

from __future__ import annotations

import asyncio
import re
import time

import aiohttp
import structlog
from aiohttp import web
from yarl import URL

from backends.base import Instance
from proxy.config import Config, Route
from proxy.errors import json_error
from proxy.forward import BodyTooLarge, UpstreamError, forward_http, forward_websocket, is_websocket
from proxy.keys import validate_key
from proxy.manager import CapacityExceeded, Manager, NotWarm, StartFailed, StartTimeout
from proxy.metrics import Metrics
from proxy.pools import Pools
from proxy.registry import Registry

log = structlog.get_logger("proxy.request")
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


class RouteHandler:
    """Serves one configured route."""

    def __init__(self, route: Route, config: Config, registry: Registry, metrics: Metrics, pools: Pools) -> None:
        self.route = route
        self.config = config
        self.registry = registry
        self.metrics = metrics
        self.pools = pools
        self.websockets: set[web.WebSocketResponse] = set()
        self.timeout = aiohttp.ClientTimeout(total=None, connect=config.connect_timeout,
                                             sock_read=config.upstream_timeout)
        self._key_is_template = bool(_PLACEHOLDER.search(route.key))

    def _key(self, request: web.Request) -> str:
        if not self._key_is_template:
            return self.route.key
        return _PLACEHOLDER.sub(lambda m: request.match_info.get(m.group(1), ""), self.route.key)

    def _upstream_url(self, request: web.Request, base: str) -> str:
        if self.route.upstream_path is None:
            return base + request.raw_path
        path = _PLACEHOLDER.sub(lambda m: request.match_info.get(m.group(1), ""), self.route.upstream_path)
        url = str(URL(base).with_path(path))  # re-quotes the decoded path variables
        query = request.rel_url.raw_query_string
        return f"{url}?{query}" if query else url

    def _manager(self, key: str) -> Manager:
        if self.route.mode == "lb":
            return self.registry.pick_lb(key, self.route.container, self.route.instances)
        return self.registry.get(key, self.route.container)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        began = time.perf_counter()
        key = self._key(request)
        status = 500
        try:
            response = await self._serve(request, key)
            gone = request.transport is None or request.transport.is_closing()
            status = 499 if gone else response.status  # 499: the client left before the end
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except (ConnectionResetError, asyncio.CancelledError):
            status = 499  # client went away; nothing to answer
            raise
        finally:
            seconds = time.perf_counter() - began
            self.metrics.observe_request(self.route.name, status, seconds)
            if self.config.log_requests:
                log.info("request", route=self.route.name, key=key, method=request.method, path=request.path,
                         status=status, ms=round(seconds * 1000, 2))

    async def _serve(self, request: web.Request, key: str) -> web.StreamResponse:
        if (reason := validate_key(key)) is not None:
            return json_error(400, "invalid key", reason)
        if request.content_length is not None and request.content_length > self.config.max_body_size:
            return json_error(413, "request body too large",
                              f"Content-Length {request.content_length} exceeds max_body_size="
                              f"{self.config.max_body_size} bytes")
        manager = self._manager(key)
        try:
            async with manager.lease(start=self.route.mode != "warm") as lease:
                headers = {}
                if lease.cold_wait is not None:
                    headers = {"X-Proxy-Cold-Start": "1",
                               "X-Proxy-Cold-Start-Wait-Ms": f"{lease.cold_wait * 1000:.1f}"}
                return await self._forward(request, manager, lease.instance, headers)
        except NotWarm as exc:
            return json_error(503, "not warm", str(exc), headers={"Retry-After": "1"})
        except StartFailed as exc:
            return json_error(503, "start failed", exc.reason, key=key,
                              headers={"Retry-After": str(max(1, round(exc.retry_after)))})
        except CapacityExceeded as exc:
            return json_error(503, "capacity exceeded", str(exc), headers={"Retry-After": "5"})
        except StartTimeout as exc:
            return json_error(504, "start timeout", str(exc), key=key)

    async def _forward(self, request: web.Request, manager: Manager, instance: Instance,
                       headers: dict[str, str]) -> web.StreamResponse:
        session = self.pools.session(instance)
        url = self._upstream_url(request, instance.url)
        try:
            if is_websocket(request):
                return await forward_websocket(request, session, url, on_message=manager.touch,
                                               connect_timeout=self.config.connect_timeout,
                                               open_sockets=self.websockets)
            return await forward_http(request, session, url, max_body=self.config.max_body_size,
                                      timeout=self.timeout, extra_headers=headers)
        except BodyTooLarge as exc:
            return json_error(413, "request body too large", str(exc))
        except UpstreamError as exc:
            if exc.status == 502:
                manager.suspect()  # a dead instance goes to `stopped`; the next request starts it again
            return json_error(exc.status, "upstream error", exc.reason, key=manager.key)
