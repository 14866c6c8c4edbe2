"""One HTTP/2 client stream served with the HTTP/1.1 request's lifecycle.

The same route (the fast path's router, then the route's host pick), the same key rules
(`RouteHandler.key_for`, `key_problem_in`), the same lease (single-flight start, held until ready,
counted in flight, idle renewed at its end), the same refusals (proxy/errors.py) and the same access
line and metrics (`RouteHandler.record`). The answer is relayed to the instance in the class's
`protocol`: HTTP/1.1 through the instance's aiohttp session, h2c and gRPC on its pooled HTTP/2 connection
(proxy/wire/h2upstream.py, proxy/http/h2_to_h2.py) with trailers passed through; clustered, a key another replica
owns goes to its owner (proxy/http/h2peer.py). For gRPC the proxy's own refusals are gRPC
statuses in a trailers-only answer (`grpc_status`), and `grpc-timeout` bounds the wait and the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from typing import TYPE_CHECKING
from urllib.parse import quote

import h2.errors
import structlog
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.errors import (BodyTooLarge, InvalidKey, InvalidPath, Refusal, StartFailed, StartTimeout,
                          UpstreamError, refusal_body, refusal_headers)
from proxy.http.h2_to_h1 import exchange
from proxy.http.h2app import serve_by_app
from proxy.http.h2peer import owner_hint, to_owner
from proxy.wire.h2upstream import StreamClosed
from proxy.http.h2_to_h2 import SKIP, body_of, next_piece, relay, response_head
from proxy.request_id import HEADER_LOWER, request_id
from proxy.wire.paths import escape_reason

if TYPE_CHECKING:
    from proxy.http.h2server import ClientStream, H2ServerProtocol, Header
    from proxy.http.routes import RouteHandler
    from proxy.lifecycle.manager import Manager

log = structlog.get_logger("proxy.h2")
_GRPC_TIMEOUT = re.compile(r"([0-9]{1,8})([HMSmun])")
_NO_DEADLINE = contextlib.nullcontext()  # a call without grpc-timeout
_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
# gRPC status codes (grpc/status.h) for the proxy's own answers
OK, UNKNOWN, INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND = 0, 2, 3, 4, 5
RESOURCE_EXHAUSTED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, UNAUTHENTICATED = 8, 12, 13, 14, 16
MAX_FIELD = 8190  # bytes of one header field (name and value): an HTTP/1.1 line's limit (aiohttp's max_field_size)
_BY_STATUS = {400: INVALID_ARGUMENT, 401: UNAUTHENTICATED, 404: UNIMPLEMENTED, 413: RESOURCE_EXHAUSTED,
              431: RESOURCE_EXHAUSTED, 429: UNAVAILABLE, 502: UNAVAILABLE, 503: UNAVAILABLE, 504: DEADLINE_EXCEEDED}


class NoRoute(Refusal):
    status, error = 404, "not found"


class NotProxied(NoRoute):
    """No proxied route takes the path: the proxy's own endpoints or a 404, answered by the application."""


class HeaderTooLarge(Refusal):
    """A header field longer than an HTTP/1.1 header line may be (aiohttp's and nginx's 8 KiB buffers)."""

    status, error = 431, "request header fields too large"


class DeadlineExceeded(Refusal):
    """The client's `grpc-timeout` passed before the answer came."""

    status, error = 504, "deadline exceeded"


def grpc_status(refusal: Refusal) -> int:
    """The gRPC status of a refusal: start failed -> UNAVAILABLE, start timeout -> DEADLINE_EXCEEDED, too large
    -> RESOURCE_EXHAUSTED, and the others by their HTTP status (gRPC's own HTTP-to-status table)."""
    if isinstance(refusal, StartFailed):
        return UNAVAILABLE
    if isinstance(refusal, (StartTimeout, DeadlineExceeded)):
        return DEADLINE_EXCEEDED
    if isinstance(refusal, BodyTooLarge):
        return RESOURCE_EXHAUSTED
    return _BY_STATUS.get(refusal.status, UNKNOWN if refusal.status < 500 else INTERNAL)


def grpc_timeout(value: str | None) -> float | None:
    """`grpc-timeout` in seconds (`100m`, `5S`, `1H`); None when absent or malformed (no deadline)."""
    match = _GRPC_TIMEOUT.fullmatch(value) if value else None
    return int(match.group(1)) * _UNITS[match.group(2)] if match else None


def _text(value: bytes) -> str:
    return value.decode("latin-1")


async def serve_stream(conn: H2ServerProtocol, stream: ClientStream) -> None:
    """Serve one request stream; whatever happens, it is answered or reset, and recorded once."""
    began = time.perf_counter()
    pseudo: dict[str, str] = {}
    fields: CIMultiDict[str] = CIMultiDict()
    for name, value in stream.headers:
        if name[:1] == b":":
            pseudo[_text(name)] = _text(value)
        else:
            fields.add(_text(name), _text(value))
    headers = CIMultiDictProxy(fields)
    method, target = pseudo.get(":method", ""), pseudo.get(":path", "")
    authority = pseudo.get(":authority") or headers.get("host") or ""
    grpc = headers.get("content-type", "").startswith("application/grpc")
    rid, given = request_id(headers)
    handler: RouteHandler | None = None
    key, status, sent = "", 500, 0
    try:
        try:
            if any(len(name) + len(value) > MAX_FIELD for name, value in stream.headers):
                raise HeaderTooLarge(f"a header field is longer than {MAX_FIELD} bytes")
            handler, key, variables = _route(conn, method, target, authority, headers)
            grpc = grpc or handler.config.containers[handler.route.container].protocol == "grpc"
            if handler.cluster is not None and not handler.cluster.ownership.owns(handler.route.container, key) \
                    and (answer := await to_owner(stream, handler, key, method, target, authority,
                                                  _forwarded(stream, headers, conn, authority, rid, given))):
                status, sent = answer  # the key's owner is another replica: its answer (proxy/http/h2peer.py)
            else:
                status, sent = await _serve(conn, stream, handler, key, variables, pseudo, headers, rid, given,
                                            grpc_timeout(headers.get("grpc-timeout")) if grpc else None)
        except Refusal as refusal:
            if isinstance(refusal, NotProxied) and not grpc:  # own endpoints, 404s: the application's answer
                status, sent = await serve_by_app(conn, stream, method, target, authority, headers)
                return
            status = refusal.status
            await _refuse(stream, refusal, rid, grpc, handler.error_detail if handler is not None else "public",
                          owner_hint(stream, refusal))
    except (asyncio.CancelledError, ConnectionError):
        status = 499  # the client reset the stream or left
        stream.abort(h2.errors.ErrorCodes.CANCEL)
    except Exception as exc:  # noqa: BLE001 - a bug resets one stream, never the connection
        log.error("server_error", error=f"{type(exc).__name__}: {exc}", request_id=rid)
        stream.abort()
    finally:
        if handler is not None:
            handler.record(key, method, target.partition("?")[0], status, time.perf_counter() - began, False,
                           conn.peer_host, rid, sent, stream.received)


def _route(conn: H2ServerProtocol, method: str, target: str, authority: str,
           headers: CIMultiDictProxy[str]) -> tuple[RouteHandler, str, dict[str, str]]:
    """The route, key and variables of a stream, as the HTTP/1.1 paths pick them."""
    path = target.partition("?")[0]
    if method == "CONNECT" or not path.startswith("/"):
        raise InvalidPath("HTTP/2 requests need an origin-form :path (CONNECT is not proxied)")
    if (reason := escape_reason(path)) is not None:
        raise InvalidPath(reason)
    found = conn.fast.router.resolve(path)
    if found is None:
        raise NotProxied(f"no route for {path}")
    group, variables = found
    handler = group.only
    if handler is None:
        picked = group.pick(authority)
        if picked is None:
            raise NoRoute(f"no route for {path} on host {authority}")
        handler, host_variables = picked
        variables = {**variables, **host_variables}
    key = handler.key_for(variables, headers)
    if handler.key_is_template and (reason := handler.key_problem_in(headers, key)) is not None:
        raise InvalidKey(reason)
    length = headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > handler.config.max_body_size:
        raise BodyTooLarge(f"Content-Length {length} exceeds max_body_size={handler.config.max_body_size} bytes")
    return handler, key, variables


async def _serve(conn: H2ServerProtocol, stream: ClientStream, handler: RouteHandler, key: str,
                 variables: dict[str, str], pseudo: dict[str, str], headers: CIMultiDictProxy[str], rid: str,
                 given: bool, deadline: float | None) -> tuple[int, int]:
    manager = handler.manager_for(key)
    try:
        async with asyncio.timeout(deadline) if deadline is not None else _NO_DEADLINE:  # (a timer costs)
            async with manager.lease(start=handler.starts_for(headers.get("user-agent", ""))) as lease:
                extra: list[Header] = []
                if lease.cold_wait is not None:
                    extra = [(b"x-proxy-cold-start", b"1"),
                             (b"x-proxy-cold-start-wait-ms", f"{lease.cold_wait * 1000:.1f}".encode())]
                target = handler.target_for(pseudo[":path"], variables)
                forwarded = _forwarded(stream, headers, conn, pseudo.get(":authority") or headers.get("host") or "",
                                       rid, given)
                if manager.klass.protocol == "http1":
                    return await _to_http1(stream, handler, manager, pseudo[":method"], target, forwarded, extra)
                return await _to_h2(stream, handler, manager, pseudo[":method"], target, forwarded, extra)
    except TimeoutError:
        raise DeadlineExceeded(f"grpc-timeout {headers.get('grpc-timeout')} passed") from None
    except Refusal as refusal:
        if handler.retry_advisor is not None:
            handler.retry_advisor.advise(refusal, manager)
        raise


def _forwarded(stream: ClientStream, headers: CIMultiDictProxy[str], conn: H2ServerProtocol, authority: str, rid: str,
               given: bool) -> list[Header]:
    """The request's headers as the instance gets them: hop-by-hop removed, X-Forwarded-* and the id set."""
    out: list[Header] = []
    chain: list[bytes] = []
    for name, value in stream.headers:
        if name[:1] == b":":
            continue
        if name in SKIP or (name == HEADER_LOWER and not given):
            if name == b"x-forwarded-for":
                chain.append(value)
            if name == b"te" and value == b"trailers":
                out.append((name, value))  # gRPC needs it; HTTP/2 allows no other TE
            continue
        out.append((name, value))
    chain.append(conn.peer_host.encode())
    out += [(b"x-forwarded-for", b", ".join(chain)), (b"x-forwarded-proto", conn.scheme.encode())]
    if authority:
        out.append((b"x-forwarded-host", authority.encode("latin-1")))
    if not given:
        out.append((HEADER_LOWER, rid.encode()))
    return out


async def _to_http1(stream: ClientStream, handler: RouteHandler, manager: Manager, method: str, target: str,
                    forwarded: list[Header], extra: list[Header]) -> tuple[int, int]:
    instance = manager.instance
    assert instance is not None
    config = handler.config
    pool = handler.pools.upstream(instance)
    lines = [f"{method} {target} HTTP/1.1\r\nHost: ".encode("latin-1"), pool.authority, b"\r\n"]
    cookies = [v for n, v in forwarded if n == b"cookie"]  # HTTP/2 may split Cookie; HTTP/1.1 wants one line
    for name, value in forwarded:
        if name not in (b"cookie", b"te"):
            lines += (name, b": ", value, b"\r\n")
    if cookies:
        lines += (b"cookie: ", b"; ".join(cookies), b"\r\n")
    body = None if stream.ended and not stream.chunks else body_of(stream, config.max_body_size)
    chunked = body is not None and not any(n == b"content-length" for n, _ in forwarded)
    if chunked:
        lines.append(b"transfer-encoding: chunked\r\n")
    lines.append(b"\r\n")
    try:
        relay = await exchange(pool, method, b"".join(lines), body, chunked, config.upstream_timeout, manager.key)
    except ConnectionRefusedError as exc:
        manager.health.suspect()
        raise UpstreamError(502, str(exc), key=manager.key) from None
    sent = 0
    try:
        status, headers = relay.head.result()
        bodyless = method == "HEAD" or status in (204, 304)
        stream.send_headers(response_head(status, headers, extra), end=bodyless)
        if bodyless:
            return status, 0
        try:
            while (chunk := await next_piece(relay, config.upstream_timeout)) is not None:
                await stream.send_data(chunk)
                sent += len(chunk)
                handler.egress(manager.klass.name, manager.key, len(chunk))
        except (ConnectionResetError, asyncio.TimeoutError):
            stream.abort()  # the head is out: the client learns of the cut by the reset
            return status, sent
        stream.end()
        return status, sent
    finally:
        if not relay.ended:
            relay.abandon()


async def _to_h2(stream: ClientStream, handler: RouteHandler, manager: Manager, method: str, target: str,
                 forwarded: list[Header], extra: list[Header]) -> tuple[int, int]:
    instance = manager.instance
    assert instance is not None
    config = handler.config
    pool = handler.pools.h2(instance)
    request = [(b":method", method.encode()), (b":scheme", b"http"), (b":authority", pool.authority),
               (b":path", target.encode("latin-1")), *forwarded]
    try:
        return await relay(stream, pool, request, config.max_body_size, config.upstream_timeout, manager.key, extra,
                           lambda nbytes: handler.egress(manager.klass.name, manager.key, nbytes))
    except OSError as exc:
        manager.health.suspect()
        raise UpstreamError(502, f"{type(exc).__name__}: {exc}", key=manager.key) from None
    except StreamClosed as exc:
        raise UpstreamError(502, str(exc), key=manager.key) from None


async def _refuse(stream: ClientStream, refusal: Refusal, rid: str, grpc: bool, detail: str,
                  extra: list[Header]) -> None:
    """The proxy's own answer: JSON as on HTTP/1.1, or for gRPC a trailers-only answer with the status."""
    body = refusal_body(refusal, rid, detail)
    if grpc:
        stream.send_headers([(b":status", b"200"), (b"content-type", b"application/grpc"),
                             (b"grpc-status", str(grpc_status(refusal)).encode()),
                             (b"grpc-message", quote(body["reason"], safe=" ").encode()),
                             (b"x-request-id", rid.encode()), *extra], end=True)
        return
    data = json.dumps(body).encode()
    head = [(b":status", str(refusal.status).encode()), (b"content-type", b"application/json; charset=utf-8"),
            (b"content-length", str(len(data)).encode())]
    head += [(n.lower().encode(), v.encode()) for n, v in refusal_headers(refusal, rid).items()] + extra
    stream.send_headers(head)
    await stream.send_data(data, end=True)

