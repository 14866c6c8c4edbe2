"""Misbehaving upstreams for the reliability suite (the stub serves `stub:tests.support.upstreams:create_app`)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Iterator, Mapping

from aiohttp import web


@contextlib.contextmanager
def silent_port() -> Iterator[int]:
    """A port whose listener never accepts and whose backlog is full: further SYNs go unanswered, as to a
    frozen instance (a connect times out rather than being refused)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    try:
        for _ in range(8):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(listener.getsockname())
            fillers.append(s)
        yield listener.getsockname()[1]
    finally:
        for s in fillers:
            s.close()
        listener.close()


async def half_then_close(request: web.Request) -> web.StreamResponse:
    """Promise 1 MB, send 10 KB, hang up."""
    resp = web.StreamResponse(headers={"Content-Length": str(2**20)})
    await resp.prepare(request)
    await resp.write(b"x" * 10_000)
    await asyncio.sleep(0.05)
    assert request.transport is not None
    request.transport.close()
    return resp


async def garbage(request: web.Request) -> web.StreamResponse:
    """Answer something that is not HTTP at all."""
    assert request.transport is not None
    request.transport.write(b"\x00\x01 this is not HTTP \xff\xfe\r\n\r\n")
    request.transport.close()
    await asyncio.sleep(0.05)
    return web.Response()


_SEEN: "set[object]" = set()


async def once_per_connection(request: web.Request) -> web.StreamResponse:
    """Answer the first request of a connection; hang up on the next one without answering.

    This is a keep-alive connection the instance closed while it sat in the proxy's pool.
    """
    transport = request.transport
    assert transport is not None
    if id(transport) in _SEEN:
        transport.close()
        await asyncio.sleep(0.05)
        return web.Response()
    _SEEN.add(id(transport))
    return web.json_response({"ok": True})


async def ws_request_id(request: web.Request) -> web.WebSocketResponse:
    """A WebSocket that tells the client which X-Request-Id its handshake carried, then closes."""
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.send_str(request.headers.get("X-Request-Id", ""))
    await ws.close()
    return ws


async def closing(request: web.Request) -> web.Response:
    """Answer (`Connection: close`) and close, as busybox httpd does: the body's length and a digest echoed."""
    body = await request.read()
    resp = web.json_response({"method": request.method, "path": request.path_qs, "length": len(body),
                              "sum": sum(body) % 65521})
    resp.force_close()
    return resp


async def ok(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def create_app(env: Mapping[str, str]) -> web.Application:
    app = web.Application()
    app.router.add_get("/half", half_then_close)
    app.router.add_get("/garbage", garbage)
    app.router.add_get("/v2/health/ready", ok)
    app.router.add_get("/ok", ok)
    app.router.add_route("*", "/closing/{n}", closing)
    app.router.add_get("/once", once_per_connection)
    app.router.add_get("/ws-request-id", ws_request_id)
    return app
