"""Churn on the stub: a few hundred start/stop cycles under real concurrency.

(On docker/podman the same workload is a soak, not a unit test: bench/soak.py.)
"""

from __future__ import annotations

import asyncio

import pytest

from proxy.lifecycle.events import State


@pytest.fixture
def backend_kind() -> str:
    return "stub"


async def test_churn_never_stops_an_instance_under_a_request(make_proxy):
    """Many keys cycling start/stop with a tiny sleep_after while requests keep arriving: none may fail."""
    h = await make_proxy(svc={"sleep_after": "100ms"})
    keys = [f"churn-{i}" for i in range(10)]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 4
    statuses: list[int] = []

    async def worker(n: int) -> None:
        i = n
        while loop.time() < deadline:
            key = keys[i % len(keys)]
            path = "/debug/sleep?seconds=0.15" if i % 3 == 0 else "/api/health"  # some outlive sleep_after
            statuses.append((await h.client.get(f"/k/{key}{path}")).status)
            await asyncio.sleep(0.02 * (i % 7))  # gaps on both sides of sleep_after
            i += 7

    await asyncio.gather(*(worker(n) for n in range(12)))
    assert statuses and set(statuses) == {200}
    starts = sum(h.manager(k).start_count for k in keys)
    assert starts > len(keys)  # instances really cycled
    await h.wait_for(lambda: all(h.manager(k).state is State.STOPPED for k in keys))
    assert all(h.manager(k).in_flight == 0 for k in keys)
    stops = await h.metric("proxy_container_stops_total", container_class="svc", reason="idle")
    assert stops == starts
