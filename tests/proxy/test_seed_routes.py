"""The seed's routing surface, as shipped in config.yaml, on the stub backend."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from backends.stub import StubBackend
from proxy.app import PROXY, create_app
from proxy.config.schema import load_config
from proxy.lifecycle.events import State
from tests.conftest import proxy_server

ROOT = Path(__file__).resolve().parents[2]
PASSENGER = {"sex": "male", "age": 30, "pclass": 3}


@pytest.fixture
async def seed(aiohttp_client):
    app = create_app(load_config(ROOT / "config.yaml"), StubBackend())
    client = await aiohttp_client(proxy_server(app), connector=aiohttp.TCPConnector(limit=0))
    return client, app[PROXY]


async def test_shared_warm_and_docs_routes(seed):
    client, proxy = seed
    resp = await client.get("/warm/api/health")
    assert resp.status == 503 and (await resp.json())["error"] == "not warm"
    shared = ("worker", "worker-container")
    assert shared not in proxy.registry.managers or proxy.registry.managers[shared].start_count == 0
    resp = await client.post("/api/inference", json=PASSENGER)
    assert resp.status == 200 and (await resp.json())["prediction_status"] == "died"
    resp = await client.post("/warm/api/inference", json=PASSENGER)
    assert resp.status == 200 and "X-Proxy-Cold-Start" not in resp.headers
    spec = await (await client.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.") and "/api/inference" in spec["paths"]
    docs = await client.get("/docs")
    assert docs.status == 200 and "/api/inference" in await docs.text()
    meta = await (await client.get("/v2/models/titanic")).json()
    assert meta["name"] == "titanic"
    assert proxy.registry.managers[("worker", "worker-container")].start_count == 1  # all of it on one shared instance


async def test_per_key_singleton_and_lb_routes(seed):
    client, proxy = seed
    info_a = await (await client.get("/container/alice/api/container-info")).json()
    info_b = await (await client.get("/container/bob/api/container-info")).json()
    assert info_a["instance_id"] != info_b["instance_id"]
    assert {("worker", "alice"), ("worker", "bob")} <= set(proxy.registry.managers)
    single = await asyncio.gather(*(client.get("/singleton/api/container-info") for _ in range(20)))
    assert len({(await r.json())["instance_id"] for r in single}) == 1
    lb = await asyncio.gather(*(client.post("/lb/api/inference", json=PASSENGER) for _ in range(60)))
    assert all(r.status == 200 for r in lb)
    pool = [proxy.registry.managers[("worker", f"lb#{i}")] for i in range(3)]
    assert all(m.state is State.RUNNING for m in pool) and ("worker", "lb#3") not in proxy.registry.managers


async def test_info_and_container_status(seed):
    client, proxy = seed
    await client.get("/api/health")
    info = await (await client.get("/info")).json()
    assert info["backend"] == "stub" and info["containers"]["worker"]["max_instances"] == 10
    assert {r["mode"] for r in info["routes"]} == {"start", "warm", "lb"}
    status = await (await client.get("/container-status")).json()
    shared = next(e for e in status["keys"] if e["key"] == "worker-container")
    assert shared["state"] == "running" and shared["health"]["ok"] is True and shared["health"]["status"] == 200
    assert proxy.scheduler.jobs and {j.name for j in proxy.scheduler.jobs} == {"keepalive:worker", "cron:worker:0"}
