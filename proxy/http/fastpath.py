"""The fast path: warm plain HTTP/1.1 requests relayed without aiohttp's request/response objects.

`FastPath.plan` looks at a parsed request head and either returns an `Exchange` that relays it to a
pooled keep-alive connection of the key's running instance, or None, and the request is served by
the aiohttp application on the same connection (see proxy/http/server.py). The fast path serves a request
only when all of these hold, so every rule that needs more (starting, refusing, WebSockets) lives
once, in the aiohttp path:

- HTTP/1.1, method GET/POST/PUT/PATCH/DELETE/OPTIONS (HEAD, CONNECT, TRACE: aiohttp), no `Upgrade`,
  no `Expect` (100-continue is answered by the aiohttp path, after the body-size check);
- an origin-form target whose path is plain (no `%`, no `/.`, no `\\`): aiohttp's router sees it as
  sent, so both paths pick the same route; any other target is checked and served by aiohttp;
- it matches a proxied route (the proxy's own endpoints go to aiohttp); where routes of that path differ
  by host, the Host picks one exactly as on the aiohttp path (`RouteGroup.pick`), and a Host none takes
  goes to aiohttp (404); the key, from the path, host, headers or cookies (`KeyTemplate`), is valid, a declared
  Content-Length is within max_body_size, and the key's instance is **running** (and, clustered, the key
  is owned here: one set lookup) and speaks HTTP/1.1 (a class's `protocol: h2c|grpc`: proxy/http/h1_to_h2.py).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Final, Iterable

from aiohttp import HttpVersion11, hdrs
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from multidict import istr

from proxy.config.schema import MAX_CONCURRENT_STREAMS
from proxy.lifecycle.events import State
from proxy.keys import validate_key
from proxy.wire.paths import is_plain
from proxy.http.exchange import Client, Exchange, request_head
from proxy.http.message import Message
from proxy.http.usual import UsualHead
from proxy.http.usual import parse as usual_parse
from proxy.http.usual import request_head as usual_request_head
from proxy.http.watch import ExchangeWatch
from proxy.request_id import HEADER, new_id, request_id

if TYPE_CHECKING:
    from aiohttp import web

    from backends.base import Instance
    from proxy.cluster.owner import Ownership
    from proxy.lifecycle.manager import Manager
    from proxy.wire.upstream import UpstreamPool
    from proxy.wire.route_match import Headers
    from proxy.wire.route_match import RouteGroup
    from proxy.http.routes import RouteHandler

    _Group = RouteGroup[RouteHandler]
    _Candidate = tuple[str | None, re.Pattern[str] | None, _Group | None]

FAST_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_RUNNING: Final = State.RUNNING  # (a constant: compiled, no attribute look-up on the enum per request)
_ID_HEADER = istr(HEADER)  # (an istr is looked up in the headers without case-folding it each time)


class _Fixed:
    """What a request's path decides. For a plain path it is the same for every request while the routes stand
    (kept by the router, forgotten at a reload) when its route is the path's only one and its key is made of
    the path alone; `stable` then also when its manager is (a registry's manager for a key stays that key's,
    unlike an lb or autoscaled route's pick, or a cluster's owner): it and its instance's pool are kept too."""

    __slots__ = ("handler", "variables", "key", "stable", "same_target", "manager", "instance", "pool")

    def __init__(self, handler: RouteHandler, variables: dict[str, str], key: str, stable: bool) -> None:
        self.handler = handler
        self.variables = variables
        self.key = key
        self.stable = stable
        self.same_target = handler.route.upstream_path is None  # the instance gets the target as sent
        self.manager: Manager | None = None
        self.instance: Instance | None = None
        self.pool: UpstreamPool | None = None


class FastRouter:
    """aiohttp's route resolution for plain paths, without a Request: same resources, same order.

    aiohttp indexes resources by the literal prefix before their first variable and tries the
    longest prefix first, in registration order within a prefix; this does the same.
    """

    CACHE = 4096  # resolved paths remembered (per-key routes have one path per key)

    def __init__(self, app: web.Application, handlers: dict[Any, _Group]) -> None:
        self._cache: dict[str, tuple[_Group, dict[str, str]] | None] = {}
        self.fixed: dict[str, _Fixed] = {}  # plain paths whose route and key do not depend on the request
        self._index: dict[str, list[_Candidate]] = {}
        self._handlers = handlers
        self.reindex(app.router.resources())

    def reindex(self, resources: Iterable[web.AbstractResource]) -> None:
        """Index `resources` in this order (a live reload's routes: proxy/http/route_table.py), cache emptied."""
        index: dict[str, list[_Candidate]] = {}
        for resource in resources:
            info = resource.get_info()
            canonical = resource.canonical
            if "{" in canonical:
                canonical = canonical.partition("{")[0].rpartition("/")[0]
            index.setdefault(canonical.rstrip("/") or "/", []).append(
                (info.get("path"), info.get("pattern"), self._handlers.get(resource)))
        self._index = index
        self._cache = {}
        self.fixed = {}

    def keep(self, path: str, fixed: _Fixed) -> None:
        """Remember what `path` decides (bounded as the resolutions are)."""
        if len(self.fixed) >= self.CACHE:
            self.fixed.clear()
        self.fixed[path] = fixed

    def resolve(self, path: str) -> tuple[_Group, dict[str, str]] | None:
        """The proxied routes of `path` and its variables; None for own endpoints and no match."""
        try:
            return self._cache[path]
        except KeyError:
            pass
        if len(self._cache) >= self.CACHE:
            self._cache.clear()
        found = self._cache[path] = self._resolve(path)
        return found

    def _resolve(self, path: str) -> tuple[_Group, dict[str, str]] | None:
        part = path
        while part:
            for plain, pattern, handler in self._index.get(part, ()):
                if plain is not None:
                    if plain == path:
                        return (handler, {}) if handler is not None else None
                elif pattern is not None and (match := pattern.fullmatch(path)) is not None:
                    return (handler, match.groupdict()) if handler is not None else None
            if part == "/":
                return None
            part = part.rpartition("/")[0] or "/"
        return None


class FastPath:
    """Decides per request head; holds what exchanges share."""

    def __init__(self, app: web.Application, handlers: dict[Any, _Group], exchanges: ExchangeWatch,
                 ownership: Ownership | None = None, max_streams: int = MAX_CONCURRENT_STREAMS) -> None:
        self.router = FastRouter(app, handlers)
        self.app = app  # HTTP/2 streams no proxied route takes are answered by it (proxy/http/h2app.py)
        self.exchanges = exchanges
        self.ownership = ownership
        self.max_streams = max_streams  # HTTP/2 clients' concurrent streams (server.max_concurrent_streams)

    def plan(self, message: Message, payload: StreamReader, proto: Client) -> Exchange | None:
        if message.method not in FAST_METHODS or message.version != HttpVersion11 or message.upgrade:
            return None
        headers = message.headers
        fixed = self._fixed(message.path, message)
        if fixed is None or hdrs.EXPECT in headers:
            return None
        if payload is not EMPTY_PAYLOAD and int(headers.get(hdrs.CONTENT_LENGTH) or 0) > self.exchanges.max_body:
            return None  # (no body: no length, or 0)
        return self._exchange(fixed, message, payload, proto, None, b"")

    def plan_packet(self, data: bytes, proto: Client, via: bytes) -> Exchange | None:
        """`plan` for a packet proxy/http/usual.py takes (a GET-like method, HTTP/1.1, no body, no Upgrade/Expect):
        parsed, planned and its exchange made in one call (compiled, the whole request side of the usual packet
        up to `Exchange.start` runs as native code); None: aiohttp's parser gets the packet, untouched. `via`: the
        connection's part of the instance's head (proxy/http/usual.py's `via`)."""
        head = usual_parse(data)
        if head is None:
            return None
        fixed = self._fixed(head.path, head)
        return None if fixed is None else self._exchange(fixed, head, EMPTY_PAYLOAD, proto, head, via)

    def _fixed(self, target: str, message: Message) -> _Fixed | None:
        """What the target's path decides (kept for plain paths), or None: not a plain path a proxied route takes."""
        kept = self.router.fixed
        fixed = kept.get(target)  # (only plain paths are kept: a target with a query is looked up by its path)
        if fixed is None:
            path = target.partition("?")[0]
            fixed = kept.get(path) if path is not target else None
            if fixed is None:
                if not path.startswith("/") or not is_plain(path):
                    return None
                fixed = self._decide(path, message.headers)
        return fixed

    def _exchange(self, fixed: _Fixed, message: Message, payload: StreamReader, proto: Client,
                  usual: UsualHead | None, via: bytes) -> Exchange | None:
        """The exchange for a request whose route and key are decided, if the key's instance takes it warm."""
        handler, key = fixed.handler, fixed.key
        if self.ownership is not None and not self.ownership.owns(handler.route.container, key):
            return None  # clustered: a key not (or no longer certainly) owned here takes the aiohttp path
        manager = fixed.manager
        if manager is None:
            manager = handler.manager_for(key)
            if fixed.stable:
                fixed.manager = manager
        instance = manager.instance
        if manager.state is not _RUNNING or instance is None or manager.klass.protocol != "http1":
            return None
        pool = fixed.pool
        if instance is not fixed.instance or pool is None or pool.closed:
            pool = handler.pools.upstream(instance)
            if fixed.stable:
                fixed.instance, fixed.pool = instance, pool
        target = message.path
        upstream = target if fixed.same_target else handler.target_for(target, fixed.variables)
        if usual is not None:  # (its id: the client's when it passes on, else one made here)
            rid = usual.rid or new_id()
            head = usual_request_head(usual, upstream, pool, via, rid)
        else:
            headers = message.headers
            rid, given = (new_id(), False) if _ID_HEADER not in headers else request_id(headers)
            head = request_head(message, upstream, pool, proto.peer_host, proto.scheme, rid, given)
        return Exchange(self.exchanges, proto, handler, manager, pool, message, payload, key, head, rid)

    def _decide(self, path: str, headers: Headers) -> _Fixed | None:
        """Route, host pick and key for a plain path: kept for the path when they do not depend on the request."""
        found = self.router.resolve(path)
        if found is None:
            return None
        group, variables = found
        handler = group.only
        if handler is None:  # routes by host share this path: pick as RouteGroup.handle does
            picked = group.pick(headers.get(hdrs.HOST))
            if picked is None:
                return None
            handler, host_variables = picked
            if host_variables:
                variables = {**variables, **host_variables}
        key = handler.key_for(variables, headers)
        if handler.key_is_template and validate_key(key) is not None:
            return None
        by_path = group.only is not None and not handler.key_template.from_request
        fixed = _Fixed(handler, variables, key, stable=by_path and handler.scaler is None
                       and handler.route.mode != "lb" and self.ownership is None)
        if by_path:
            self.router.keep(path, fixed)
        return fixed
