"""Configured routes: URL -> key -> manager -> forward. The request path in one place.

    app -> RouteHandler(route) -> registry.get(key) -> manager.lease() -> backend instance -> forward

This is the aiohttp path; warm plain requests take the fast path (proxy/http/fastpath.py), which uses this
handler's key, target and accounting rules so the two cannot drift apart.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Callable, Mapping

import aiohttp
from aiohttp import hdrs, web

from proxy.cluster.forward import Forwarder
from proxy.scale.autoscale import scaler_for
from proxy.config.schema import Config, Route
from backends.base import Instance
from proxy.errors import (BodyTooLarge, ExpectationFailed, InvalidKey, InvalidPath, Refusal, UpstreamError,
                          refusal_response)
from proxy.wire.websocket import forward_websocket, is_websocket
from proxy.keys import validate_key
from proxy.face.navigation import is_navigation
from proxy.face.waiting import WaitingPages
from proxy.lifecycle.events import State
from proxy.lifecycle.manager import Manager
from proxy.observe.metrics import Metrics
from proxy.wire.paths import escape_reason, upstream_target
from proxy.wire.pools import Pools
from proxy.lifecycle.registry import Registry
from proxy.http.h1_to_h2 import exchange_over_h2
from proxy.http.watch import ExchangeWatch
from proxy.observe.request_log import BODY_BYTES, RequestLog
from proxy.observe.tally import Tally
from proxy.observe.usage import UsageMeter
from proxy.request_id import of as request_id_of
from proxy.http.responder import OUTCOME, WrittenResponse, run_exchange
from proxy.http.retry_after import RetryAdvisor
from proxy.wire.route_match import Headers, HostPattern, KeyTemplate, agent_matcher, normalize_host


TALLIES = 1024  # kept per route: one per key its fast path serves


class RouteHandler:
    """Serves one configured route."""

    def __init__(self, route: Route, config: Config, registry: Registry, metrics: Metrics, pools: Pools,
                 exchanges: ExchangeWatch, reqlog: RequestLog | None, retry_advisor: RetryAdvisor | None = None,
                 usage: UsageMeter | None = None) -> None:
        self.route = route
        self.scaler = scaler_for(route, registry)  # an autoscaled lb route's pool and picking rule
        # (class, key, bytes) once per relayed request: the usage meter's egress (UsageMeter.egress)
        self.egress: Callable[[str, str, int], None] = usage.egress if usage is not None else _no_egress
        self.usage = usage
        self.tallies: dict[Manager, Tally] = {}  # the fast path's records per key (`tally`)
        self.retry_advisor = retry_advisor
        self.exchanges = exchanges
        self.config = config
        self.registry = registry
        self.metrics = metrics
        self.pools = pools
        self.reqlog = reqlog
        self.error_detail = config.errors.detail  # refusal bodies: public sentences or full detail
        self.websockets: set[web.WebSocketResponse] = set()
        self.cluster: Forwarder | None = None  # set by the Proxy when `cluster.store` is not none
        self.waiting: WaitingPages | None = None  # set by the Proxy when a route has `waiting_page`
        self.key_is_template = "{" in route.key
        self.key_template = KeyTemplate(route.key)
        self.host = HostPattern(route.host) if route.host is not None else None
        self._ignored_agents = agent_matcher(route.ignore_user_agents)
        self._pattern: re.Pattern[str] | None = None
        self._stats = metrics.request_stats(route.name)
        self._observe = self._stats.observe
        self._log_prefix = RequestLog.prefix(route.name, route.key)  # the line start of a fixed-key route

    def bind(self, resource: web.AbstractResource) -> None:
        """Remember the route's compiled pattern, to read its variables from the raw (undecoded) path."""
        self._pattern = resource.get_info().get("pattern")

    # ---------------------------------------------------------------- rules shared with the fast path

    def key_for(self, variables: Mapping[str, str], headers: Headers | None = None) -> str:
        """The key from the path's and host's variables and, for `{header:..}`/`{cookie:..}`, the headers."""
        return self.key_template.fill(variables, headers) if self.key_is_template else self.route.key

    def host_variables(self, host_header: str | None) -> dict[str, str]:
        """The variables of the route's `host` (the route was picked for this Host, so it matches)."""
        return {} if self.host is None else self.host.match(normalize_host(host_header)) or {}

    def request_key(self, request: web.Request) -> str:
        if not self.key_is_template:
            return self.route.key
        variables: Mapping[str, str] = request.match_info
        if self.host is not None:
            variables = {**variables, **self.host_variables(request.headers.get(hdrs.HOST))}
        return self.key_for(variables, request.headers)

    def key_problem(self, request: web.Request, key: str) -> str | None:
        """Why `key` cannot serve (400): a header or cookie it is made of is missing, or it is not a valid key."""
        return self.key_problem_in(request.headers, key)

    def key_problem_in(self, headers: Headers, key: str) -> str | None:
        """`key_problem` from the request's headers alone (HTTP/2 streams have no web.Request)."""
        if (reason := validate_key(key)) is None:
            return None
        return self.key_template.missing(headers) or reason

    def starts(self, request: web.Request) -> bool:
        """Whether this request may start the key: never on a warm route, nor for an ignored User-Agent."""
        return self.starts_for(request.headers.get(hdrs.USER_AGENT, ""))

    def starts_for(self, user_agent: str) -> bool:
        """`starts` from the request's User-Agent alone (HTTP/2 streams have no web.Request)."""
        if self.route.mode == "warm":
            return False
        agents = self._ignored_agents
        return agents is None or not agents.search(user_agent)

    def target_for(self, raw_target: str, raw_variables: Mapping[str, str]) -> str:
        return upstream_target(self.route.upstream_path, raw_target, raw_variables)

    def manager_for(self, key: str) -> Manager:
        if self.scaler is not None:
            return self.scaler.pick()
        if self.route.mode == "lb":
            return self.registry.pick_lb(key, self.route.container, self.route.instances)
        return self.registry.get(key, self.route.container)

    def record(self, key: str, method: str, path: str, status: int, seconds: float, fast: bool = False,
               client: str = "", rid: str = "", sent: int = 0, received: int = 0) -> None:
        """Metrics and the request log line for one finished request, whichever path served it: `client` the
        peer address, `rid` the request id, `sent`/`received` the response/request body bytes."""
        self._observe(status, seconds, fast)
        if self.reqlog is not None:
            self.reqlog.request(self._line_start(key), method, path, status, seconds, client, rid, sent, received)

    def _line_start(self, key: str) -> str:
        """The access line's start for a request of `key` (made once for a fixed-key route)."""
        return RequestLog.prefix(self.route.name, key) if self.key_is_template else self._log_prefix

    def tally(self, manager: Manager, key: str) -> Tally:
        """What a fast-path request of `key` on `manager` records at its end, resolved once (kept in `tallies`,
        at most TALLIES, all forgotten when full): `record` and `egress` in one call."""
        tallies = self.tallies
        if len(tallies) >= TALLIES:
            tallies.clear()
        tally = tallies[manager] = Tally(key, self._stats, self._line_start(key), self.reqlog, self.usage,
                                         manager.klass.name, manager.key)
        return tally

    def _raw_variables(self, request: web.Request) -> dict[str, str] | None:
        """The route's variables as the client wrote them (None: the raw path does not spell the route)."""
        if self._pattern is None:
            return {}
        match = self._pattern.fullmatch(request.raw_path.partition("?")[0])
        if match is None:
            return None
        if self.host is None:
            return match.groupdict()
        return {**match.groupdict(), **self.host_variables(request.headers.get(hdrs.HOST))}

    async def expect(self, request: web.Request) -> web.StreamResponse | None:
        """`Expect: 100-continue`: refuse an over-limit body *before* inviting the client to send it."""
        try:
            self._check_length(request)
        except BodyTooLarge as refusal:
            response = refusal_response(refusal, request_id_of(request), self.error_detail)
            response.force_close()  # the body is never read, so the connection cannot carry another request
            return response
        if request.version == aiohttp.HttpVersion11 and request.headers.get("Expect", "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # the interim line is not part of the response
            return None
        return refusal_response(ExpectationFailed(f"unsupported Expect: {request.headers.get('Expect')}"),
                                request_id_of(request), self.error_detail)

    def _check_length(self, request: web.Request) -> None:
        if request.content_length is not None and request.content_length > self.config.max_body_size:
            raise BodyTooLarge(f"Content-Length {request.content_length} exceeds "
                               f"max_body_size={self.config.max_body_size} bytes")

    # ---------------------------------------------------------------- the aiohttp path

    async def handle(self, request: web.Request) -> web.StreamResponse:
        began = time.perf_counter()
        key = self.request_key(request)
        rid = request_id_of(request)
        status, sent = 500, 0
        try:
            response = await self._serve(request, key, rid)
            status, sent = _as_seen(request, response)
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except (ConnectionResetError, asyncio.CancelledError):
            status, sent = request.get(OUTCOME, (499, 0))  # the client went away (after a whole exchange: its status)
            raise
        finally:
            self.record(key, request.method, request.path, status, time.perf_counter() - began, False,
                        request.remote or "", rid, sent or request.get(BODY_BYTES, 0), request.content.total_bytes)

    async def _serve(self, request: web.Request, key: str, rid: str) -> web.StreamResponse:
        manager: Manager | None = None
        try:
            if (reason := self.key_problem(request, key)) is not None:
                raise InvalidKey(reason)
            if (reason := escape_reason(request.raw_path.partition("?")[0])) is not None:
                raise InvalidPath(reason)
            raw_variables = self._raw_variables(request)
            if raw_variables is None:
                raise InvalidPath("percent-encoded characters in the route's fixed part")
            self._check_length(request)
            if self.cluster is not None and (answer := await self.cluster.elsewhere(
                    request, self.route.container, key, self.websockets)) is not None:
                return answer  # the key's owner is another replica (proxy/cluster/)
            manager = self.manager_for(key)
            waited: float | None = None
            if self.waiting is not None and self.route.waiting_page is not None and manager.state is not \
                    State.RUNNING and self.starts(request) and is_navigation(request.method, request.headers):
                page = await self.waiting.wait_or_page(request, manager, self.route.waiting_page, rid)
                if isinstance(page, web.StreamResponse):
                    return page  # a browser waits on a page that follows the start (proxy/face/waiting.py)
                waited = page
            async with manager.lease(start=self.starts(request)) as lease:
                headers = {}
                if (cold := lease.cold_wait if lease.cold_wait is not None else waited) is not None:
                    headers = {"X-Proxy-Cold-Start": "1", "X-Proxy-Cold-Start-Wait-Ms": f"{cold * 1000:.1f}"}
                target = self.target_for(request.raw_path, raw_variables)
                return await self._forward(request, manager, lease.instance, target, headers, rid)
        except Refusal as refusal:
            if manager is not None and self.retry_advisor is not None:
                self.retry_advisor.advise(refusal, manager)
            return refusal_response(refusal, rid, self.error_detail)

    async def _forward(self, request: web.Request, manager: Manager, instance: Instance, target: str,
                       headers: dict[str, str], rid: str) -> web.StreamResponse:
        if manager.klass.protocol != "http1":  # h2c/grpc instances: a stream on their HTTP/2 connection
            return await exchange_over_h2(request, self.pools.h2(instance), instance, target, headers, rid, manager.key,
                                    self.config.upstream_timeout)
        if not is_websocket(request):
            return await run_exchange(request, self, manager, instance, target, headers, rid)

        def egress(nbytes: int) -> None:  # the key's egress meter, and the access line's byte count
            request[BODY_BYTES] = request.get(BODY_BYTES, 0) + nbytes
            self.egress(manager.klass.name, manager.key, nbytes)

        try:
            return await forward_websocket(request, self.pools.session(instance), instance.url + target,
                                           on_message=manager.touch, connect_timeout=self.config.connect_timeout,
                                           open_sockets=self.pools.sockets(instance), on_egress=egress)
        except UpstreamError as exc:
            manager.health.suspect()  # a dead instance goes to `stopped`; the next request starts it again
            exc.extra["key"] = manager.key
            raise


def _as_seen(request: web.Request, response: web.StreamResponse) -> tuple[int, int]:
    """The status the client saw and the body bytes it got. A relayed response knows both (499 only when
    the client left before its end); one already written (a WebSocket, a peer's streamed answer) ended
    before this; only an answer aiohttp has yet to write is lost when the client has gone meanwhile."""
    if isinstance(response, WrittenResponse):
        return response.status, response.body_bytes
    if response.prepared:
        return response.status, 0
    gone = request.transport is None or request.transport.is_closing()
    body = response.body if isinstance(response, web.Response) else None
    return 499 if gone else response.status, len(body) if isinstance(body, bytes) else 0


def _no_egress(class_name: str, key: str, nbytes: int) -> None:
    """Egress is not metered (no usage meter)."""
