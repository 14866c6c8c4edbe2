"""Debug routes: absent unless MODEL_SERVICE_DEBUG_ROUTES=1; sleep, stream, ws echo, body echo, headers, status."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from aiohttp import WSMsgType

from model_service.app import create_app

DEBUG_PATHS = ["/debug/sleep?seconds=0", "/debug/stream?chunks=1", "/debug/headers", "/debug/status?code=200",
               "/debug/ws"]


@pytest.fixture
async def debug_client(aiohttp_client):
    return await aiohttp_client(create_app({"MODEL_SERVICE_DEBUG_ROUTES": "1"}))


@pytest.mark.parametrize("env", [{}, {"MODEL_SERVICE_DEBUG_ROUTES": "0"}])
async def test_debug_routes_absent_by_default(aiohttp_client, env) -> None:
    client = await aiohttp_client(create_app(env))
    for path in DEBUG_PATHS:
        resp = await client.get(path)
        assert resp.status == 404, path
        assert (await resp.json())["error"] == "Not Found"
    assert (await client.post("/debug/echo", data=b"x")).status == 404


async def test_sleep(debug_client) -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    resp = await debug_client.get("/debug/sleep?seconds=0.2")
    assert resp.status == 200 and (await resp.json()) == {"slept": 0.2}
    assert loop.time() - t0 >= 0.19
    assert (await debug_client.get("/debug/sleep?seconds=abc")).status == 400
    assert (await debug_client.get("/debug/sleep?seconds=-1")).status == 400


async def test_stream_yields_chunks_incrementally(debug_client) -> None:
    loop = asyncio.get_running_loop()
    resp = await debug_client.get("/debug/stream?chunks=4&interval=0.1")
    assert resp.status == 200 and resp.headers.get("Transfer-Encoding") == "chunked"
    lines, times = [], []
    async for line in resp.content:
        lines.append(line)
        times.append(loop.time())
    assert lines == [b"chunk-0\n", b"chunk-1\n", b"chunk-2\n", b"chunk-3\n"]
    assert times[-1] - times[0] >= 0.25  # arrived spread out, not all at the end


async def test_ws_echo(debug_client) -> None:
    async with debug_client.ws_connect("/debug/ws") as ws:
        await ws.send_str("hello")
        msg = await ws.receive(timeout=2)
        assert msg.type == WSMsgType.TEXT and msg.data == "hello"
        await ws.send_bytes(b"\x00\x01\xff")
        msg = await ws.receive(timeout=2)
        assert msg.type == WSMsgType.BINARY and msg.data == b"\x00\x01\xff"


async def test_echo_counts_bytes_past_client_max_size(debug_client) -> None:
    size = 5 * 1024 * 1024 + 7  # bigger than the 1 MiB model-route limit: echo streams, never buffers

    async def body():
        block = b"a" * (1024 * 1024)
        sent = 0
        while sent < size:
            part = block[: size - sent]
            sent += len(part)
            yield part

    resp = await debug_client.post("/debug/echo", data=body())
    assert resp.status == 200
    expected = hashlib.sha256(b"a" * size).hexdigest()
    assert await resp.json() == {"bytes": size, "sha256": expected}
    assert resp.headers["X-Body-Bytes"] == str(size)
    empty = await debug_client.post("/debug/echo", data=b"")
    assert (await empty.json())["bytes"] == 0


async def test_headers(debug_client) -> None:
    resp = await debug_client.get("/debug/headers?x=1", headers={"X-Forwarded-For": "1.2.3.4", "X-Test": "yes"})
    assert resp.status == 200
    body = await resp.json()
    assert body["headers"]["X-Test"] == "yes" and body["headers"]["X-Forwarded-For"] == "1.2.3.4"
    assert body["method"] == "GET" and body["path"] == "/debug/headers?x=1"


@pytest.mark.parametrize("code", [200, 201, 404, 500, 503])
async def test_status(debug_client, code) -> None:
    resp = await debug_client.get(f"/debug/status?code={code}")
    assert resp.status == code
    assert (await resp.json()) == {"status": code}


async def test_status_no_body_and_invalid(debug_client) -> None:
    assert (await debug_client.get("/debug/status?code=204")).status == 204
    resp = await debug_client.get("/debug/status?code=99")
    assert resp.status == 400 and "error" in await resp.json()
