"""Reliability: every kind of bad peer or bad input is answered clearly, and the proxy keeps serving.

After each scenario the proxy must still serve another key, and /metrics must stay consistent
(in-flight back to 0, request counts matching what was sent).
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from proxy.lifecycle.events import State
from tests.conftest import with_misbehaving_upstream


@pytest.fixture
def backend_kind() -> str:
    return "stub"


@pytest.fixture
async def h(make_proxy):
    return await make_proxy(config=with_misbehaving_upstream("2s", broken=True))


async def still_healthy(h) -> None:
    """Another key still works and nothing is left in flight."""
    resp = await h.client.post("/k/bystander/api/inference", json={"sex": "male", "age": 40, "pclass": 3})
    assert resp.status == 200 and (await resp.json())["prediction_status"] == "died"
    await h.wait_for(lambda: all(m.in_flight == 0 for m in h.proxy.registry))
    metrics = await h.metrics()
    in_flight = [v for (name, _), v in metrics.items() if name == "proxy_container_in_flight"]
    assert in_flight and all(v == 0 for v in in_flight)


async def test_client_aborts_mid_upload(h):
    assert (await h.client.get("/s/api/health")).status == 200
    host, port = h.client.server.host, h.client.server.port
    for _ in range(5):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"POST /s/debug/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 500000\r\n\r\n" + b"a" * 100_000)
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.close()  # 400 KB never arrive
    await still_healthy(h)


async def test_upstream_closes_mid_response(h):
    resp = await h.client.get("/bad/half")
    assert resp.status == 200  # headers were already relayed
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()  # the body is cut short: the client sees the truncation, never a fake success
    await still_healthy(h)
    assert h.manager("bad").state is State.RUNNING


async def test_upstream_answers_garbage(h):
    resp = await h.client.get("/bad/garbage")
    body = await resp.json()
    assert resp.status == 502 and body["error"] == "upstream error" and body["reason"]
    assert (await h.client.get("/bad/ok")).status == 200
    await still_healthy(h)


async def test_slowloris_headers_do_not_block_others(h):
    host, port = h.client.server.host, h.client.server.port
    writers = []
    for _ in range(50):
        _, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /s/api/health HTTP/1.1\r\nHo")
        writers.append(writer)
    for _ in range(3):
        for writer in writers:
            writer.write(b"s")  # one byte at a time, never finishing the headers
        await asyncio.sleep(0.1)
        assert (await h.client.get("/k/other/api/health")).status == 200
    for writer in writers:
        writer.close()
    await still_healthy(h)


async def test_1000_requests_on_a_cold_warm_only_route(h):
    resps = await asyncio.gather(*(h.client.get("/warm/api/health") for _ in range(1000)))
    assert [r.status for r in resps] == [503] * 1000
    assert h.proxy.registry.get("shared", "svc").start_count == 0
    metrics = await h.metrics()
    assert metrics[("proxy_requests_total", (("code", "503"), ("route", "/warm/{tail:.*}")))] == 1000
    await still_healthy(h)


async def test_1000_requests_on_a_key_that_cannot_start(h):
    resps = await asyncio.gather(*(h.client.get("/broken/api/health") for _ in range(1000)))
    assert [r.status for r in resps] == [503] * 1000
    assert all(r.headers["Retry-After"] for r in resps)
    failures = await h.metric("proxy_container_start_failures_total", container_class="broken")
    assert 1 <= failures < 1000  # concurrent requests share a start attempt
    await still_healthy(h)


@pytest.mark.parametrize(
    "body, field",
    [
        (b"{not json", "body"),
        (b"[1, 2]", "body"),
        (json.dumps({"sex": "female", "age": "old", "pclass": 1}).encode(), "age"),
        (json.dumps({"sex": "female", "age": 20, "pclass": 4}).encode(), "pclass"),
        (json.dumps({"sex": "robot", "age": 20, "pclass": 1}).encode(), "sex"),
        (json.dumps({"sex": "male", "age": True, "pclass": 1}).encode(), "age"),
        (json.dumps({"age": 20, "pclass": 1}).encode(), "sex"),
    ],
)
async def test_bad_model_input_is_400_naming_the_field(h, body, field):
    resp = await h.client.post("/api/inference", data=body, headers={"Content-Type": "application/json"})
    payload = await resp.json()
    assert resp.status == 400 and payload["field"] == field
    await still_healthy(h)


async def test_oversized_body_and_hostile_keys_leave_metrics_consistent(h):
    assert (await h.client.post("/api/inference", data=b"x" * (2 * 2**20))).status == 413
    for path in ("/k/..%2Fx/api/health", "/k/%00/api/health", "/k/" + "b" * 300 + "/api/health"):
        assert (await h.client.get(path)).status == 400
    await still_healthy(h)
    metrics = await h.metrics()
    assert metrics[("proxy_requests_total", (("code", "413"), ("route", "/api/{tail:.*}")))] == 1
    assert metrics[("proxy_requests_total", (("code", "400"), ("route", "/k/{id}/{tail:.*}")))] == 3
