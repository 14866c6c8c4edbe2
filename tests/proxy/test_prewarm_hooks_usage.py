"""Cron pre-warm on an injected clock, lifecycle webhooks to a real local receiver, the usage meter."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone

import pytest
from aiohttp import web

from proxy.lifecycle.events import State, StopReason


@pytest.fixture
def backend_kind() -> str:
    return "stub"


class FakeClock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def at(hour: int, minute: int, second: int = 0) -> float:
    return datetime(2026, 1, 1, hour, minute, second, tzinfo=timezone.utc).timestamp()


async def test_cron_prewarm_with_overrides_on_an_injected_clock(make_proxy):
    clock = FakeClock(at(10, 0, 30))
    h = await make_proxy(svc={"cron": [{"schedule": "*/5 * * * *", "key": "batch",
                                        "command": ["python", "proc.py"], "env": {"ENVIRONMENT": "batch"}}]},
                         clock=clock)
    scheduler = h.proxy.scheduler
    assert await scheduler.run_due() == []  # 10:00:30, next tick is 10:05
    assert "batch" not in h.proxy.registry.managers
    clock.now = at(10, 5, 0)
    assert await scheduler.run_due() == ["cron:svc:0"]
    m = h.manager("batch")
    assert m.state is State.RUNNING and m.start_count == 1
    spec = h.backend.specs["batch"]
    assert spec.command == ("python", "proc.py") and spec.env["ENVIRONMENT"] == "batch"
    assert spec.env["API_TITLE"] == "test"  # the class env is kept under the override
    info = await (await h.client.get("/k/batch/api/container-info")).json()
    assert info["environment"] == "batch"
    # Missed ticks while "down" (an hour passes) fire once, not twelve times.
    clock.now = at(11, 7, 0)
    assert await scheduler.run_due() == ["cron:svc:0"]
    assert await scheduler.run_due() == []
    assert scheduler.jobs[0].next_at == at(11, 10, 0)


async def test_keepalive_cron_expression_prewarms_shared_key(make_proxy):
    clock = FakeClock(at(9, 59, 50))
    h = await make_proxy(svc={"keepalive": "*/2 * * * *"}, clock=clock)
    clock.now = at(10, 0, 0)
    assert await h.proxy.scheduler.run_due() == ["keepalive:svc"]
    # Default keepalive keys: the keys routes name literally (the shared key and the lb pool).
    assert {m.key for m in h.proxy.registry if m.state is State.RUNNING} == {"shared", "lb#0", "lb#1", "lb#2"}


@pytest.fixture
async def receiver(aiohttp_server):
    events: list[dict] = []
    arrived = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        events.append(await request.json())
        arrived.set()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = await aiohttp_server(app)
    return events, arrived, str(server.make_url("/hook"))


async def test_webhooks_receive_start_and_stop(make_proxy, receiver):
    events, _, url = receiver
    h = await make_proxy(svc={"sleep_after": "300ms"}, config={"hooks": {"webhooks": [{"url": url}]}})
    seen_in_process: list[str] = []
    h.proxy.hooks.on("start", lambda e: seen_in_process.append(e["key"]))
    assert (await h.client.get("/k/hooked/api/health")).status == 200
    await h.wait_for(lambda: [e["event"] for e in events] == ["start", "stop"], timeout=10)
    start, stop = events
    assert start["key"] == "hooked" and start["container"] == "svc" and start["duration_seconds"] > 0
    assert stop["reason"] == "idle" and stop["timestamp"] >= start["timestamp"]
    assert seen_in_process == ["hooked"]


async def test_error_hook_on_failed_start(make_proxy, receiver):
    events, _, url = receiver
    h = await make_proxy(svc={"image": "stub:nope_module:create_app"},
                         config={"hooks": {"webhooks": [{"url": url, "events": ["error"]}]}})
    assert (await h.client.get("/s/api/health")).status == 503
    await h.wait_for(lambda: len(events) == 1)
    assert events[0]["event"] == "error" and "nope_module" in events[0]["reason"]


async def test_dead_webhook_never_delays_requests(make_proxy, unused_tcp_port_factory):
    dead = f"http://127.0.0.1:{unused_tcp_port_factory()}/hook"
    # A receiver that accepts connections and never answers is worse than a refused port.
    hang_server = await asyncio.start_server(lambda r, w: asyncio.sleep(3600), "127.0.0.1", 0)
    hang = f"http://127.0.0.1:{hang_server.sockets[0].getsockname()[1]}/hook"
    try:
        h = await make_proxy(config={"hooks": {"webhooks": [
            {"url": dead, "retries": 3}, {"url": hang, "timeout": "5s", "retries": 2}]}})
        began = time.perf_counter()
        resp = await h.client.get("/s/api/health")
        cold = time.perf_counter() - began
        assert resp.status == 200
        started = time.perf_counter()
        for _ in range(20):
            assert (await h.client.get("/s/api/health")).status == 200
        warm = (time.perf_counter() - started) / 20
        # The start event's hooks are still retrying/hanging in the background, yet requests are not slowed.
        assert h.proxy.hooks._tasks, "webhook deliveries should still be pending"
        assert cold < 3 and warm < 0.5
    finally:
        hang_server.close()


async def test_usage_counters_match_running_time(make_proxy):
    h = await make_proxy(config={"metrics": {"key_labels": ["metered"]}})  # its own `key` label
    assert (await h.client.get("/k/metered/api/health")).status == 200
    began = time.time()
    await asyncio.sleep(1.2)
    await h.proxy.registry.get("metered", "svc").stop(StopReason.IDLE)
    ran = time.time() - began
    m = await h.metrics()
    labels = (("container_class", "svc"), ("key", "metered"))
    seconds = m[("proxy_container_usage_running_seconds_total", labels)]
    assert abs(seconds - ran) < 1.0
    # dev instance type: 256 MiB and 1/16 vCPU, 2 GB disk.
    assert m[("proxy_container_usage_memory_byte_seconds_total", labels)] == pytest.approx(seconds * 0.25 * 2**30)
    assert m[("proxy_container_usage_vcpu_seconds_total", labels)] == pytest.approx(seconds / 16)
    assert m[("proxy_container_usage_disk_byte_seconds_total", labels)] == pytest.approx(seconds * 2.0e9)
    egress = m[("proxy_container_egress_bytes_total", labels)]
    assert egress > 0  # the health answer's bytes, at 0.025 USD per GB
    cost = seconds * (0.25 * 0.0000025 + 0.000020 / 16 + 2.0 * 0.00000007) + egress / 1e9 * 0.025
    assert m[("proxy_container_usage_estimated_cost_usd_total", labels)] == pytest.approx(cost)
    status = await (await h.client.get("/container-status")).json()
    entry = next(e for e in status["keys"] if e["key"] == "metered")
    assert entry["usage"]["running_seconds"] == pytest.approx(seconds, abs=0.05)
    # Counters do not grow while stopped.
    await asyncio.sleep(0.3)
    assert (await h.metrics())[("proxy_container_usage_running_seconds_total", labels)] == seconds
