"""Egress: the response bytes a client received are the bytes the usage meter counts and prices."""

from __future__ import annotations

import asyncio
import re

import pytest


@pytest.fixture
def backend_kind() -> str:
    return "stub"


async def _get(host: str, port: int, path: str) -> bytes:
    """Every byte of one response (framed by Content-Length), as the client's socket received them."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    body = await asyncio.wait_for(reader.readexactly(length), 5)
    writer.close()
    return head + body


async def test_egress_bytes_match_what_the_client_received(make_proxy):
    h = await make_proxy(config={"pricing": {"egress_per_gb": 1000.0}})
    server = h.client.server
    host, port = str(server.host), int(server.port)  # type: ignore[arg-type]
    cold = await _get(host, port, "/s/api/container-info")  # waits for the start: the aiohttp path
    warm = [await _get(host, port, "/s/api/container-info") for _ in range(3)]  # the fast path
    missing = await _get(host, port, "/s/no/such/path")  # the instance's 404 is egress too
    assert b"X-Proxy-Cold-Start: 1" in cold and all(b" 200 " in w.split(b"\r\n")[0] for w in warm)
    received = len(cold) + sum(map(len, warm)) + len(missing)
    labels = (("container_class", "svc"), ("key", "shared"))
    metrics = await h.metrics()
    assert metrics[("proxy_container_egress_bytes_total", labels)] == received
    assert metrics[("proxy_container_egress_bytes_total", (("container_class", "svc"), ("key", "_other")))] == 0
    usage = h.proxy.key_status(h.manager("shared"))["usage"]
    assert usage["egress_bytes"] == received
    without_egress = h.proxy.usage._bill("svc", usage["running_seconds"], usage["paused_seconds"])
    assert usage["estimated_cost_usd"] - without_egress["estimated_cost_usd"] == pytest.approx(received / 1e9 * 1000)


async def test_websocket_messages_to_the_client_are_egress(make_proxy):
    h = await make_proxy()
    labels = (("container_class", "svc"), ("key", "shared"))
    await h.client.get("/s/v2/health/ready")  # started (its answer's bytes are egress too)
    before = (await h.metrics())[("proxy_container_egress_bytes_total", labels)]
    ws = await h.client.ws_connect("/s/debug/ws")
    for message in ("héllo", "x" * 1000):
        await ws.send_str(message)
        assert (await ws.receive()).data == message
    await ws.send_bytes(b"\x00" * 300)
    assert (await ws.receive()).data == b"\x00" * 300
    await ws.close()
    after = (await h.metrics())[("proxy_container_egress_bytes_total", labels)]
    assert after - before == len("héllo".encode()) + 1000 + 300  # message payloads, as sent to the client
