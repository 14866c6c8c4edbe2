"""Diagnostic routes for the proxy's end-to-end tests (slow answers, streaming, WebSocket, big bodies).

Mounted only when MODEL_SERVICE_DEBUG_ROUTES=1; never part of the normal product surface.
"""

from __future__ import annotations

import asyncio
import hashlib
import math

from aiohttp import WSMsgType, web

MAX_SLEEP = 3600.0
MAX_CHUNKS = 100_000


def _float_param(request: web.Request, name: str, default: float, lo: float, hi: float) -> float:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise web.HTTPBadRequest(reason=f"{name} must be a number") from None
    if not math.isfinite(value) or not lo <= value <= hi:
        raise web.HTTPBadRequest(reason=f"{name} must be between {lo:g} and {hi:g}")
    return value


async def sleep(request: web.Request) -> web.Response:
    seconds = _float_param(request, "seconds", 1.0, 0.0, MAX_SLEEP)
    await asyncio.sleep(seconds)
    return web.json_response({"slept": seconds})


async def stream(request: web.Request) -> web.StreamResponse:
    chunks = int(_float_param(request, "chunks", 5, 0, MAX_CHUNKS))
    interval = _float_param(request, "interval", 0.1, 0.0, MAX_SLEEP)
    resp = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-cache"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    try:
        for i in range(chunks):
            if i:
                await asyncio.sleep(interval)
            await resp.write(f"chunk-{i}\n".encode())  # write() drains, so each chunk goes out now
        await resp.write_eof()
    except ConnectionResetError:
        pass  # the reader left mid-stream: an expected end, not an error to log
    return resp


async def ws_echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(heartbeat=None, max_msg_size=16 * 1024 * 1024)
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
        elif msg.type == WSMsgType.ERROR:
            break
    return ws


async def echo(request: web.Request) -> web.Response:
    """Read the body in chunks (bounded memory even for 200 MB) and report its size and digest."""
    digest = hashlib.sha256()
    total = 0
    async for chunk in request.content.iter_chunked(1 << 16):
        digest.update(chunk)
        total += len(chunk)
    return web.json_response({"bytes": total, "sha256": digest.hexdigest()}, headers={"X-Body-Bytes": str(total)})


async def headers(request: web.Request) -> web.Response:
    out: dict[str, str] = {}
    for key, value in request.headers.items():
        out[key] = f"{out[key]}, {value}" if key in out else value
    return web.json_response({"headers": out, "method": request.method, "path": request.path_qs})


async def status(request: web.Request) -> web.Response:
    code = int(_float_param(request, "code", 200, 200, 599))
    if code in (204, 304):
        return web.Response(status=code)
    return web.json_response({"status": code}, status=code)


def add_debug_routes(app: web.Application) -> None:
    app.router.add_get("/debug/sleep", sleep)
    app.router.add_get("/debug/stream", stream)
    app.router.add_get("/debug/ws", ws_echo)
    app.router.add_post("/debug/echo", echo)
    app.router.add_get("/debug/headers", headers)
    app.router.add_get("/debug/status", status)
