"""capacity_wait (issue 15): at max_instances, starts wait in arrival order for a free slot instead of a 503."""

from __future__ import annotations

import asyncio

import pytest

from proxy.lifecycle.events import ACTIVE

pytestmark = pytest.mark.parametrize("backend_kind", ["stub"])  # in-process stub backend only


async def test_six_keys_share_two_slots(make_proxy):
    h = await make_proxy(svc={"max_instances": 2, "capacity_wait": "5s", "sleep_after": "200ms"})
    keys = [f"q{i}" for i in range(6)]
    most_active = 0
    sampling = True

    async def sample() -> None:
        nonlocal most_active
        while sampling:
            live = sum(m.state in ACTIVE for m in h.proxy.registry)
            most_active = max(most_active, live, h.proxy.capacity.active("svc"))
            await asyncio.sleep(0.005)

    async def one(key: str) -> tuple[int, str | None]:
        resp = await h.client.get(f"/k/{key}/debug/sleep?seconds=0.1")
        await resp.read()
        return resp.status, resp.headers.get("Retry-After")

    sampler = asyncio.create_task(sample())
    try:
        results = await asyncio.gather(*(one(k) for k in keys))
    finally:
        sampling = False
        await sampler

    assert results == [(200, None)] * 6
    assert 1 <= most_active <= 2
    assert sum(h.manager(k).start_count for k in keys) == 6
    assert await h.metric("proxy_container_class_starts_total", container_class="svc") == 6
    assert h.proxy.capacity.waiting("svc") == 0 and h.proxy.capacity.active("svc") <= 2


async def test_capacity_wait_0_still_refuses_at_once(make_proxy):
    h = await make_proxy(svc={"max_instances": 1})
    first = await h.client.get("/k/a/debug/status?code=200")
    assert first.status == 200
    resp = await h.client.get("/k/b/debug/status?code=200")
    body = await resp.json()
    assert resp.status == 503 and body["error"] == "capacity exceeded"
    assert 59 <= int(resp.headers["Retry-After"]) <= 62  # a stops after sleep_after (60 s) idle, then b starts
