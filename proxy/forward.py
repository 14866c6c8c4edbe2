"""Forwarding one request (or WebSocket) to an instance, streaming both ways.

Bodies are never buffered whole: the request body is relayed chunk by chunk (counted against
max_body_size), the response is written as it arrives. Hop-by-hop headers stay on their hop.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Callable

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy.errors import BodyTooLarge, UpstreamError

HOP_BY_HOP = frozenset(
    h.lower()
    for h in ("Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Connection",
              "TE", "Trailer", "Transfer-Encoding", "Upgrade")
)
# The WebSocket handshake is redone on each hop by aiohttp.
WS_HANDSHAKE = frozenset({"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
                          "sec-websocket-protocol", "sec-websocket-accept"})
REQUEST_DROP = HOP_BY_HOP | {"host"}
RESPONSE_DROP = HOP_BY_HOP | {"content-length"}
CHUNK = 64 * 1024
SMALL_BODY = 64 * 1024  # responses up to this size (with a Content-Length) are relayed in one piece


def _strip(headers: "CIMultiDictProxy[str]", drop: frozenset[str]) -> CIMultiDict[str]:
    """Copy without hop-by-hop headers, including any the Connection header names."""
    named = {t.strip().lower() for v in headers.getall("Connection", ()) for t in v.split(",")}
    if named:
        drop = drop | named
    return CIMultiDict([(k, v) for k, v in headers.items() if k.lower() not in drop])


def upstream_headers(request: web.Request, drop: frozenset[str] = REQUEST_DROP) -> CIMultiDict[str]:
    """The client's headers minus hop-by-hop ones, with X-Forwarded-* set as nginx's
    `$proxy_add_x_forwarded_for` does: every earlier X-Forwarded-For value, in order, then the peer."""
    headers = _strip(request.headers, drop)
    peer = request.remote or ""
    prior = ", ".join(request.headers.getall("X-Forwarded-For", ()))
    headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    headers["X-Forwarded-Proto"] = request.scheme
    headers["X-Forwarded-Host"] = request.host
    return headers


def is_websocket(request: web.Request) -> bool:
    return (
        request.headers.get("Upgrade", "").lower() == "websocket"
        and "upgrade" in request.headers.get("Connection", "").lower()
    )


async def _body(request: web.Request, limit: int) -> AsyncIterator[bytes]:
    seen = 0
    async for chunk in request.content.iter_chunked(CHUNK):
        seen += len(chunk)
        if seen > limit:
            raise BodyTooLarge(f"request body exceeds max_body_size={limit} bytes")
        yield chunk


async def forward_http(
    request: web.Request,
    session: aiohttp.ClientSession,
    url: str,
    *,
    max_body: int,
    timeout: aiohttp.ClientTimeout,
    extra_headers: dict[str, str] | None = None,
) -> web.StreamResponse:
    """Relay `request` to `url`; raise UpstreamError/BodyTooLarge before the response has started."""
    has_body = request.body_exists or request.content_length
    data = _body(request, max_body) if has_body else None
    try:
        upstream = await session.request(
            request.method, URL(url, encoded=True), headers=upstream_headers(request), data=data,
            allow_redirects=False, timeout=timeout,
        )
    except BodyTooLarge:
        raise
    except asyncio.TimeoutError:
        raise UpstreamError(504, "upstream did not answer within upstream_timeout") from None
    except (aiohttp.ClientError, OSError) as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, BodyTooLarge):
            raise cause from None
        raise UpstreamError(502, f"upstream connection failed: {type(exc).__name__}: {exc}") from None
    async with upstream:
        headers = _strip(upstream.headers, RESPONSE_DROP)
        headers.update(extra_headers or {})
        length = upstream.content_length
        if length is not None and length <= SMALL_BODY and upstream.status not in (204, 304) \
                and request.method != "HEAD":
            # Small and of known size (most API answers): headers and body leave in one write.
            try:
                body = await upstream.read()
            except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, asyncio.TimeoutError) as exc:
                raise UpstreamError(502, f"upstream broke mid-response: {type(exc).__name__}") from None
            return web.Response(status=upstream.status, reason=upstream.reason, headers=headers, body=body)
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
        if length is not None:
            response.content_length = length
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, asyncio.TimeoutError) as exc:
            # Headers are gone already: the only honest signal left is to cut the connection.
            if request.transport is not None:
                request.transport.close()
            raise UpstreamError(502, f"upstream broke mid-response: {type(exc).__name__}") from None
        except ConnectionResetError:
            return response  # the client left mid-stream; aiohttp finishes quietly
        await response.write_eof()
        return response


async def forward_websocket(
    request: web.Request,
    session: aiohttp.ClientSession,
    url: str,
    *,
    on_message: Callable[[], None],
    connect_timeout: float,
    open_sockets: "set[web.WebSocketResponse]",
) -> web.WebSocketResponse:
    """Connect upstream first (so a dead instance still gets a JSON 502), then pump both ways."""
    protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
    try:
        upstream = await session.ws_connect(
            URL(url, encoded=True), headers=upstream_headers(request, REQUEST_DROP | WS_HANDSHAKE), protocols=protocols,
            timeout=aiohttp.ClientWSTimeout(ws_close=connect_timeout), autoping=True, max_msg_size=0,
        )
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        raise UpstreamError(502, f"upstream WebSocket failed: {type(exc).__name__}: {exc}") from None
    client = web.WebSocketResponse(protocols=[upstream.protocol] if upstream.protocol else (), max_msg_size=0)
    async with upstream:
        await client.prepare(request)
        open_sockets.add(client)  # so shutdown can close it with 1001 instead of waiting it out
        pumps = [asyncio.create_task(_pump(client, upstream, on_message)),
                 asyncio.create_task(_pump(upstream, client, on_message))]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            open_sockets.discard(client)
            await client.close(code=upstream.close_code or 1000)
    return client


async def _pump(
    src: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    dst: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    on_message: Callable[[], None],
) -> None:
    """Relay messages one way; a close (code and reason) is passed on to the other side."""
    code, reason = 1000, b""
    while True:
        msg = await src.receive()
        on_message()
        if msg.type is WSMsgType.TEXT:
            await dst.send_str(msg.data)
        elif msg.type is WSMsgType.BINARY:
            await dst.send_bytes(msg.data)
        elif msg.type is WSMsgType.CLOSE:
            code, reason = msg.data or 1000, (msg.extra or "").encode()
            break
        elif msg.type in (WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            code = src.close_code or 1000
            break
    if not dst.closed:
        await dst.close(code=code, message=reason)
