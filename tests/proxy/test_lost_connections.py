"""A port that accepts and then drops every connection (a runtime's port proxy while its instance goes):
the request is asked of the runtime like a refused one, not answered 502 (stub backend, deterministic)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from backends.base import BackendUnavailable, InstanceState


@pytest.fixture
def backend_kind() -> str:
    return "stub"


async def dropping_port(h: Any, key: str) -> tuple[Any, asyncio.Server]:
    """The key's instance stops behind the proxy's back and its port then accepts and drops connections."""
    assert (await h.client.get(f"/k/{key}/api/health")).status == 200
    m = h.manager(key)
    instance = m.instance
    await h.backend.stop(instance)

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)  # the request came: a port proxy reads it, then finds no instance behind it
        writer.transport.abort()

    server = await asyncio.start_server(drop, instance.host, instance.port, reuse_address=True)
    return m, server


async def test_a_port_that_drops_connections_for_a_gone_instance_is_restarted(make_proxy):
    h = await make_proxy()
    m, server = await dropping_port(h, "dropped")
    async with server:
        resp = await h.client.get("/k/dropped/api/health")
        assert resp.status == 200, await resp.text()  # the runtime says gone: started again, sent there
    assert m.start_count == 2


async def test_a_port_that_drops_connections_while_the_runtime_cannot_be_asked_is_503(make_proxy, monkeypatch):
    h = await make_proxy()
    m, server = await dropping_port(h, "unasked")

    async def unreachable(instance: Any) -> InstanceState:
        raise BackendUnavailable("stub runtime unreachable (test)")

    monkeypatch.setattr(h.backend, "inspect", unreachable)
    async with server:
        resp = await h.client.get("/k/unasked/api/health")
    assert resp.status == 503 and int(resp.headers["Retry-After"]) >= 1, await resp.text()
    assert (await resp.json())["error"] == "runtime unreachable"
    await h.wait_for(lambda: m.in_flight == 0)
