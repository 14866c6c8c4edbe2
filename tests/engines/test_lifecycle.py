"""Manager lifecycle under real concurrency, on every backend (stub, process, docker, podman, swarm)."""

from __future__ import annotations

import asyncio

import pytest

from proxy.lifecycle.events import State, StopReason
from tests.conftest import LIFECYCLE_PARAMS

PASSENGER = {"sex": "female", "age": 29, "pclass": 1}


@pytest.fixture(params=LIFECYCLE_PARAMS)
def backend_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_lazy_start_and_herd_single_flight(make_proxy):
    h = await make_proxy()
    assert "shared" not in h.proxy.registry.managers  # nothing started before the first request

    async def one():
        resp = await h.client.post("/api/inference", json=PASSENGER)
        body = await resp.json()
        return resp.status, body.get("prediction_status"), resp.headers.get("X-Proxy-Cold-Start")

    results = await asyncio.gather(*(one() for _ in range(200)))
    assert [r[:2] for r in results] == [(200, "survived")] * 200
    cold = sum(r[2] == "1" for r in results)  # those that arrived before ready waited for the one start
    assert cold >= 1
    m = h.manager("shared")
    assert m.start_count == 1 and m.state is State.RUNNING and m.in_flight == 0
    assert await h.metric("proxy_container_starts_total", container_class="svc", key="shared") == 1
    assert await h.metric("proxy_requests_total", route="/api/{tail:.*}", code="200") == 200
    assert await h.metric("proxy_container_running_instances", container_class="svc") == 1
    assert await h.metric("proxy_cold_start_wait_seconds_count", container_class="svc") == cold
    # Warm now: no cold-start header.
    resp = await h.client.post("/api/inference", json=PASSENGER)
    assert resp.status == 200 and "X-Proxy-Cold-Start" not in resp.headers


async def test_aborted_clients_leave_in_flight_at_zero(make_proxy):
    h = await make_proxy()
    assert (await h.client.get("/s/debug/status?code=200")).status == 200  # warm it

    async def abort(path: str, after: float) -> None:
        task = asyncio.create_task(h.client.get(path))
        await asyncio.sleep(after)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def abort_mid_stream() -> None:
        resp = await h.client.get("/s/debug/stream?chunks=50&interval=0.05")
        assert await resp.content.readline() == b"chunk-0\n"
        resp.close()  # drop the connection mid-stream

    async def fail() -> int:
        return (await h.client.get("/s/debug/status?code=500")).status

    async def ok() -> int:
        return (await h.client.get("/s/debug/sleep?seconds=0.1")).status

    results = await asyncio.gather(
        *(abort("/s/debug/sleep?seconds=3", 0.2) for _ in range(10)),
        *(abort_mid_stream() for _ in range(10)),
        *(fail() for _ in range(10)),
        *(ok() for _ in range(10)),
    )
    assert results[20:30] == [500] * 10 and results[30:40] == [200] * 10
    await h.wait_for(lambda: all(m.in_flight == 0 for m in h.proxy.registry))
    assert await h.metric("proxy_container_in_flight", container_class="svc", key="shared") == 0


async def test_abort_while_waiting_for_start(make_proxy):
    # A readiness path that takes 1 s keeps the start open long enough to abort inside it.
    h = await make_proxy(svc={"readiness": {"path": "/debug/sleep?seconds=1"}})
    tasks = [asyncio.create_task(h.client.get("/s/api/health")) for _ in range(5)]
    await h.wait_for(lambda: ("svc", "shared") in h.proxy.registry.managers and h.manager("shared").in_flight == 5)
    assert h.manager("shared").state is State.STARTING
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    m = h.manager("shared")
    await h.wait_for(lambda: m.in_flight == 0)
    await h.wait_for(lambda: m.state is State.RUNNING)  # the shared start was not cancelled with them
    resp = await h.client.get("/s/api/health")
    assert resp.status == 200 and "X-Proxy-Cold-Start" not in resp.headers and m.start_count == 1


async def test_slow_request_outlives_sleep_after(make_proxy):
    h = await make_proxy(svc={"sleep_after": "1s"})
    assert (await h.client.get("/s/v2/health/ready")).status == 200
    m = h.manager("shared")
    slow = asyncio.create_task(h.client.get("/s/debug/sleep?seconds=3"))
    await asyncio.sleep(2.2)  # well past sleep_after, request still in flight
    assert m.state is State.RUNNING and m.in_flight == 1
    resp = await slow
    assert resp.status == 200
    ended = asyncio.get_running_loop().time()
    await h.wait_for(lambda: m.state is State.STOPPED, timeout=10)
    # Stopped only after the request ended plus sleep_after (activity is renewed when a request finishes).
    assert asyncio.get_running_loop().time() - ended >= 0.9
    assert await h.metric("proxy_container_stops_total", container_class="svc", reason="idle") == 1
    # And it comes back on the next request.
    assert (await h.client.get("/s/v2/health/ready")).status == 200
    assert m.start_count == 2


async def test_keepalive_keeps_instance_warm(make_proxy):
    h = await make_proxy(svc={"sleep_after": "1s", "keepalive": {"schedule": "300ms", "keys": ["shared"]}})
    m = h.proxy.registry.get("shared", "svc")
    await h.wait_for(lambda: m.state is State.RUNNING, timeout=60)  # the keepalive itself pre-warms it
    await asyncio.sleep(2.5)  # more than twice sleep_after with no request at all
    assert m.state is State.RUNNING and m.start_count == 1
    assert await h.metric("proxy_container_stops_total", container_class="svc", reason="idle") == 0


async def test_failing_start_gives_503_and_next_request_retries(make_proxy, backend_kind):
    broken = {"stub": {"image": "stub:no_such_module:create_app"}, "process": {"command": ["/no/such/program"]}}
    h = await make_proxy(svc=broken.get(backend_kind, {"image": "lazy-proxy/no-such-image:never"}))
    for _ in range(2):
        resp = await h.client.get("/s/v2/health/ready")
        body = await resp.json()
        assert resp.status == 503, body
        assert body["error"] == "start failed" and body["reason"]
        assert int(resp.headers["Retry-After"]) >= 1
    assert h.manager("shared").state is State.FAILED
    assert await h.metric("proxy_container_start_failures_total", container_class="svc") == 2  # retried, not cached
    assert (await h.client.get("/health")).status == 200  # the proxy is fine


async def test_start_timeout_gives_504(make_proxy):
    h = await make_proxy(svc={"readiness": {"path": "/never-ready", "interval": "50ms"}, "start_timeout": "1500ms"})
    resps = await asyncio.gather(*(h.client.get("/s/v2/health/ready") for _ in range(5)))
    for resp in resps:
        body = await resp.json()
        assert resp.status == 504 and body["error"] == "start timeout", body
        assert body["reason"] == "the app did not become ready within 1.5s"  # the detail is in the log
    m = h.manager("shared")
    assert m.in_flight == 0  # answered at the deadline; the half-started instance is stopped behind it
    await h.wait_for(lambda: m.state is State.FAILED, timeout=30)
    assert m.instance is None
    assert await h.metric("proxy_container_start_failures_total", container_class="svc") == 1  # one start for all five


async def test_request_during_stopping_waits_then_restarts(make_proxy):
    h = await make_proxy()
    assert (await h.client.get("/s/v2/health/ready")).status == 200
    m = h.manager("shared")
    stopping = asyncio.create_task(m.stop(StopReason.IDLE))
    await asyncio.sleep(0)
    assert m.state is State.STOPPING
    resp = await h.client.get("/s/api/health")
    await stopping
    assert resp.status == 200
    assert m.state is State.RUNNING and m.start_count == 2
    assert await h.metric("proxy_container_running_instances", container_class="svc") == 1


async def test_websocket_holds_instance_and_messages_count_as_activity(make_proxy):
    h = await make_proxy(svc={"sleep_after": "1s"})
    async with h.client.ws_connect("/s/debug/ws") as ws:
        for i in range(4):
            await ws.send_str(f"hello {i}")
            assert (await ws.receive(timeout=10)).data == f"hello {i}"
            await asyncio.sleep(0.5)
        await ws.send_bytes(b"\x00\x01binary")
        assert (await ws.receive(timeout=10)).data == b"\x00\x01binary"
        await asyncio.sleep(1.5)  # idle WebSocket, open past sleep_after: still never stopped
        m = h.manager("shared")
        assert m.state is State.RUNNING and m.in_flight == 1
    await h.wait_for(lambda: m.in_flight == 0)
    await h.wait_for(lambda: m.state is State.STOPPED, timeout=10)


async def test_streaming_response_passes_chunk_by_chunk(make_proxy):
    h = await make_proxy()
    resp = await h.client.get("/s/debug/stream?chunks=5&interval=0.3")
    assert resp.status == 200
    loop = asyncio.get_running_loop()
    arrivals = []
    async for line in resp.content:
        arrivals.append((loop.time(), line))
    assert [line for _, line in arrivals] == [f"chunk-{i}\n".encode() for i in range(5)]
    gaps = [b[0] - a[0] for a, b in zip(arrivals, arrivals[1:])]
    assert all(gap > 0.15 for gap in gaps), gaps  # each chunk came when it was written, not all at the end


async def test_shutdown_stops_everything_it_started(make_proxy):
    h = await make_proxy()
    keys = [f"key-{i}" for i in range(3)]
    resps = await asyncio.gather(*(h.client.get(f"/k/{k}/v2/health/ready") for k in keys))
    assert [r.status for r in resps] == [200] * 3
    instances = [h.manager(k).instance for k in keys]
    await h.proxy.registry.stop_all(StopReason.SHUTDOWN)
    assert all(h.manager(k).state is State.STOPPED for k in keys)
    for instance in instances:
        assert (await h.backend.inspect(instance)).value != "running"
    assert await h.metric("proxy_container_stops_total", container_class="svc", reason="shutdown") == 3


@pytest.mark.parametrize("n", [3])
async def test_lb_spreads_over_exactly_n_instances(make_proxy, n):
    h = await make_proxy()
    resps = await asyncio.gather(*(h.client.get("/lb/api/container-info") for _ in range(300)))
    bodies = [await r.json() for r in resps]
    assert [r.status for r in resps] == [200] * 300
    served_by = {b["instance_id"] for b in bodies}
    assert len(served_by) == n
    pool = [h.manager(f"lb#{i}") for i in range(n)]
    assert [m.start_count for m in pool] == [1] * n
    assert ("svc", "lb#3") not in h.proxy.registry.managers and h.proxy.capacity.active("svc") == n


async def test_max_instances_holds_under_concurrent_new_keys(make_proxy):
    h = await make_proxy(svc={"max_instances": 4})
    resps = await asyncio.gather(*(h.client.get(f"/k/new-{i}/v2/health/ready") for i in range(50)))
    codes = [r.status for r in resps]
    assert codes.count(200) == 4 and codes.count(503) == 46
    refused = next(r for r in resps if r.status == 503)
    assert (await refused.json())["error"] == "capacity exceeded" and refused.headers["Retry-After"]
    assert h.proxy.capacity.active("svc") == 4
    assert sum(m.start_count for m in h.proxy.registry) == 4


async def test_warm_route_never_starts(make_proxy):
    h = await make_proxy()
    resp = await h.client.get("/warm/api/health")
    assert resp.status == 503 and (await resp.json())["error"] == "not warm"
    assert h.proxy.registry.get("shared", "svc").start_count == 0
    assert (await h.client.get("/api/health")).status == 200
    resp = await h.client.get("/warm/api/health")
    assert resp.status == 200 and (await resp.json())["status"] == "healthy"
    assert h.manager("shared").start_count == 1


async def test_a_refused_connect_to_a_vanished_instance_restarts_it_for_that_request(make_proxy):
    h = await make_proxy()
    assert (await h.client.get("/s/v2/health/ready")).status == 200
    m = h.manager("shared")
    await h.backend.stop(m.instance)  # the instance vanishes behind the manager's back
    resp = await h.client.get("/s/api/health")  # refused, so never sent: the runtime says gone, so start again
    assert resp.status == 200 and (await resp.json())["status"] == "healthy"
    assert m.state is State.RUNNING and m.start_count == 2
    assert await h.metric("proxy_container_stops_total", container_class="svc", reason="error") == 1

