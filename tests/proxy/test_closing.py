"""Instances that close every connection (issue 28): once an answer said so, requests to that instance connect
cheaply (proxy/wire/closing.py). Under real concurrency every answer is right, nothing stays in flight, no
socket is left open; a refused cheap connect is handled as any refused connect; keep-alive instances never dial."""

from __future__ import annotations

import asyncio
import os

import aiohttp
import pytest

import proxy.http.exchange as exchange_module
from tests.conftest import with_misbehaving_upstream


@pytest.fixture
def backend_kind() -> str:
    return "stub"


@pytest.fixture
async def h(make_proxy):
    return await make_proxy(config=with_misbehaving_upstream("5s"))


@pytest.fixture
def dials(monkeypatch) -> list[int]:
    """Counts the exchanges' cheap connects."""
    calls: list[int] = []
    real = exchange_module.dial

    def counting(loop, pool, request, done):
        calls.append(1)
        real(loop, pool, request, done)

    monkeypatch.setattr(exchange_module, "dial", counting)
    return calls


def open_sockets() -> int:
    return sum(1 for e in os.scandir("/proc/self/fd") if os.readlink(e.path).startswith("socket:"))


async def test_concurrent_requests_to_a_closing_instance_are_answered_and_leave_nothing(h, dials):
    first = await h.client.get("/bad/closing/0")
    assert first.status == 200 and (await first.json())["path"] == "/closing/0"
    before = open_sockets()

    async def one(session: aiohttp.ClientSession, client: int, n: int) -> None:
        body = bytes([client, n]) * (n * 60_000)  # up to 480 KB: more than one send takes
        resp = await session.post(h.client.make_url(f"/bad/closing/{client}-{n}"), data=body)
        got = await resp.json()
        assert resp.status == 200 and got == {"method": "POST", "path": f"/closing/{client}-{n}",
                                              "length": len(body), "sum": sum(body) % 65521}, got
        assert "close" not in resp.headers.get("Connection", "").lower()  # the client keeps its connection

    async def client(session: aiohttp.ClientSession, c: int) -> None:
        for n in range(5):
            await one(session, c, n)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(client(session, c) for c in range(40)))
    m = h.manager("bad")
    # (at least the bodiless ones: a body still streaming in when the request starts takes the usual connect)
    assert len(dials) >= 40 and h.proxy.pools.upstream(m.instance).closes
    await h.wait_for(lambda: m.in_flight == 0 and h.proxy.pools.in_use(m.instance) == 0)
    await h.wait_for(lambda: open_sockets() <= before)  # each instance connection closed, on both ends
    assert await h.metric("proxy_requests_total", route="/bad/{tail:.*}", code="200") == 201


async def test_a_closing_instance_stopped_from_outside_is_started_again(h, dials):
    # The cheap connect is refused: asked of the runtime as any refused connect, started again, answered.
    assert (await h.client.get("/bad/closing/a")).status == 200
    m = h.manager("bad")
    await h.backend.stop(m.instance)  # behind the proxy's back, like `docker stop`
    for n in range(3):
        resp = await h.client.get(f"/bad/closing/b{n}")
        assert resp.status == 200 and (await resp.json())["path"] == f"/closing/b{n}"
    assert m.start_count == 2 and dials
    assert await h.metric("proxy_requests_total", route="/bad/{tail:.*}", code="502") == 0
    await h.wait_for(lambda: m.in_flight == 0)


async def test_an_instance_that_keeps_connections_never_dials(h, dials):
    for _ in range(5):
        assert (await h.client.get("/s/api/health")).status == 200
        assert (await h.client.get("/bad/ok")).status == 200
    assert dials == []
    assert h.proxy.pools.fast_idle() >= 2
