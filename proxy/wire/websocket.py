"""WebSockets to an instance (HTTP requests go through proxy/http/exchange.py), and the hop-by-hop header rule.

The WebSocket handshake is redone on each hop by aiohttp; messages, and the close code and reason,
are pumped both ways. Hop-by-hop headers stay on their hop.
"""

from __future__ import annotations

import asyncio
from typing import Callable

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy.errors import UpstreamError
from proxy.request_id import HEADER as REQUEST_ID
from proxy.request_id import of as request_id_of

HOP_BY_HOP = frozenset(
    h.lower()
    for h in ("Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Connection",
              "TE", "Trailer", "Transfer-Encoding", "Upgrade")
)
# The WebSocket handshake is redone on each hop by aiohttp.
WS_HANDSHAKE = frozenset({"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
                          "sec-websocket-protocol", "sec-websocket-accept"})
# A replica's mark on a request it forwarded to the key's owner (proxy/cluster/forward.py): between
# replicas only, never passed on to an instance.
PEER_MARK = "x-lazy-proxy-forwarded"
REQUEST_DROP = HOP_BY_HOP | {"host", PEER_MARK}


def _strip(headers: "CIMultiDictProxy[str]", drop: frozenset[str]) -> CIMultiDict[str]:
    """Copy without hop-by-hop headers, including any the Connection header names."""
    named = {t.strip().lower() for v in headers.getall("Connection", ()) for t in v.split(",")}
    if named:
        drop = drop | named
    return CIMultiDict([(k, v) for k, v in headers.items() if k.lower() not in drop])


def upstream_headers(request: web.Request, drop: frozenset[str] = REQUEST_DROP) -> CIMultiDict[str]:
    """The client's headers minus hop-by-hop ones, with X-Forwarded-* set as nginx's
    `$proxy_add_x_forwarded_for` does: every earlier X-Forwarded-For value, in order, then the peer; and
    the request id (the client's X-Request-Id where it stands, or the one that replaces it)."""
    headers = _strip(request.headers, drop)
    headers[REQUEST_ID] = request_id_of(request)
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


async def forward_websocket(
    request: web.Request,
    session: aiohttp.ClientSession,
    url: str,
    *,
    on_message: Callable[[], None],
    connect_timeout: float,
    open_sockets: "set[web.WebSocketResponse]",
    on_egress: Callable[[int], None] = lambda nbytes: None,
    extra_headers: dict[str, str] | None = None,
) -> web.WebSocketResponse:
    """Connect upstream first (so a dead instance still gets a JSON 502), then pump both ways.

    `extra_headers`: added to the upstream handshake (a cluster peer's loop-stopping header)."""
    protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
    headers = upstream_headers(request, REQUEST_DROP | WS_HANDSHAKE)
    headers.update(extra_headers or {})
    try:
        upstream = await session.ws_connect(
            URL(url, encoded=True), headers=headers, protocols=protocols,
            timeout=aiohttp.ClientWSTimeout(ws_close=connect_timeout), autoping=True, max_msg_size=0,
        )
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        raise UpstreamError(502, f"upstream WebSocket failed: {type(exc).__name__}: {exc}") from exc
    client = web.WebSocketResponse(protocols=[upstream.protocol] if upstream.protocol else (), max_msg_size=0)
    async with upstream:
        await client.prepare(request)
        open_sockets.add(client)  # so shutdown can close it with 1001 instead of waiting it out
        pumps = [asyncio.create_task(_pump(client, upstream, on_message)),
                 asyncio.create_task(_pump(upstream, client, on_message, on_egress))]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Stop both pumps before closing anything: a close racing a pending receive() on the same
            # socket would be cancelled half-way and replaced by a plain 1000. (This also runs when the
            # client's connection drops right after its close frame and the handler is cancelled.)
            for task in pumps:
                task.cancel()
            results = await asyncio.gather(*pumps, return_exceptions=True)
            code, reason = next((r for r in results if isinstance(r, tuple)), (1000, b""))
            open_sockets.discard(client)
            for ws in (upstream, client):  # the side that closed first is closed; the other hears its close
                if not ws.closed:
                    await ws.close(code=code, message=reason)
    return client


async def _pump(
    src: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    dst: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    on_message: Callable[[], None],
    on_sent: Callable[[int], None] | None = None,
) -> tuple[int, bytes]:
    """Relay messages one way until `src` closes; return the close code and reason it sent. `on_sent` hears
    each message's payload size (the client's side: the key's egress)."""
    while True:
        msg = await src.receive()
        on_message()
        if msg.type is WSMsgType.TEXT:
            await dst.send_str(msg.data)
            if on_sent is not None:
                on_sent(len(msg.data.encode()))
        elif msg.type is WSMsgType.BINARY:
            await dst.send_bytes(msg.data)
            if on_sent is not None:
                on_sent(len(msg.data))
        elif msg.type is WSMsgType.CLOSE:
            return msg.data or 1000, (msg.extra or "").encode()
        elif msg.type in (WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            return src.close_code or 1000, b""
