"""The pause tier on real daemons: after `pause_after` idle the container is frozen (`docker pause`), a
request thaws it and is served, the usage meter stops billing CPU while it is paused, and `sleep_after`
still stops it (thawed first)."""

from __future__ import annotations

import asyncio

import pytest

from proxy.lifecycle.events import State
from tests.conftest import ENGINE_PARAMS


@pytest.fixture(params=ENGINE_PARAMS)
def backend_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_an_idle_instance_is_paused_woken_by_a_request_and_stopped_later(make_proxy, raw):
    h = await make_proxy(svc={"pause_after": "1s", "sleep_after": "6s"})
    assert (await h.client.get("/k/nap/api/health")).status == 200
    m = h.manager("nap")
    instance = m.instance
    await h.wait_for(lambda: m.state is State.PAUSED, timeout=5)
    for _ in range(50):  # `paused` at once; the freeze itself follows within milliseconds
        if (await raw.containers.container(instance.id).show())["State"]["Paused"]:
            break
        await asyncio.sleep(0.1)
    assert (await raw.containers.container(instance.id).show())["State"]["Paused"] is True
    status = await (await h.client.get("/container-status")).json()
    entry = next(e for e in status["keys"] if e["key"] == "nap")
    assert entry["state"] == "paused"
    before = h.proxy.usage.report("svc", "nap")
    await asyncio.sleep(0.5)
    after = h.proxy.usage.report("svc", "nap")
    assert after["vcpu_seconds"] == before["vcpu_seconds"]  # frozen: no CPU billed
    assert after["memory_gib_seconds"] > before["memory_gib_seconds"]  # its memory is still held

    resp = await h.client.get("/k/nap/api/health")  # wakes it: the same instance, no new start
    assert resp.status == 200 and resp.headers.get("X-Proxy-Cold-Start") == "1"
    assert m.instance == instance and m.start_count == 1 and m.state is State.RUNNING
    assert (await raw.containers.container(instance.id).show())["State"]["Paused"] is False

    await h.wait_for(lambda: m.state is State.PAUSED, timeout=5)  # idle again: paused again
    await h.wait_for(lambda: m.state is State.STOPPED, timeout=10)  # then stopped, sleep_after after the request
    info = await raw.containers.container(instance.id).show()
    assert info["State"]["Running"] is False and info["State"]["Paused"] is False
