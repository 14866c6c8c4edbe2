"""Rollouts on real docker and podman: ten keys under steady traffic move to a new image (built locally, with
different content) after a reload, with no failed request, never more than `max_surge` extra containers (counted
through the runtime's own API while it runs), and a WebSocket on an old instance closed with 1012 after the
grace period; an image that never becomes ready halts the rollout with the old containers serving."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import aiodocker
import aiohttp
import pytest

from backends.base import LABEL_PROXY_ID
from tests.support import engines
from tests.conftest import ENGINE_PARAMS
from bench.rollout import derived_image
from tests.support.rollout import Deployed, Traffic, deploy, file_config

KEYS = [f"r{i}" for i in range(10)]
ROLL_BOUND = 240.0  # seconds for ten keys to move, one new container at a time, on a busy 2-core machine
GRACE = 2.0


@pytest.fixture(params=ENGINE_PARAMS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def engine(kind: str, aiohttp_client: Any, tmp_path: Any) -> Any:
    base = await engines.ensure_image(kind)
    socket = engines.socket_for(kind)
    images = {tag: await derived_image(socket, base, tag, tag, never_ready=tag == "never")
              for tag in ("one", "two", "never")}
    backend = engines.make_backend(kind, proxy_id=f"lprollout-{uuid.uuid4().hex[:8]}")
    made: list[Deployed] = []

    async def make(**rollout: Any) -> Deployed:
        raw = file_config(images["one"], title=None, rollout=rollout, extra={
            "pull": "never", "instance_type": {"memory": "512MiB", "cpus": 1.0}})
        d = await deploy(aiohttp_client, tmp_path, raw, backend)
        made.append(d)
        return d

    make.images = images  # type: ignore[attr-defined]
    make.backend = backend  # type: ignore[attr-defined]
    yield make
    await engines.remove_all(backend)


async def running_containers(backend: Any) -> list[str]:
    """This proxy id's running containers, from the runtime itself."""
    docker = aiodocker.Docker(url=backend.socket)
    try:
        filters = json.dumps({"label": [f"{LABEL_PROXY_ID}={backend.proxy_id}"], "status": ["running"]})
        return [str((c["Names"] or ["?"])[0]).lstrip("/") for c in await docker.containers.list(filters=filters)]
    finally:
        await docker.close()


async def warm(d: Deployed) -> None:
    async def one(key: str) -> None:
        response = await d.client.get(f"/k/{key}/api/container-info")
        assert response.status == 200, await response.text()
    for start in range(0, len(KEYS), 3):  # three cold starts at a time on two cores
        await asyncio.gather(*(one(key) for key in KEYS[start:start + 3]))


async def test_surge_moves_every_key_with_no_failed_request(engine):
    d = await engine(strategy="surge", steps=[10, 100], max_surge=1, active_grace_period=f"{GRACE:g}s")
    await warm(d)
    assert len(await running_containers(engine.backend)) == len(KEYS)
    ws = await d.client.ws_connect("/k/r0/debug/ws")
    await ws.send_str("hello")
    assert (await ws.receive()).data == "hello"
    traffic = Traffic(d.client, KEYS)
    traffic.start()
    await asyncio.sleep(1)
    d.write(lambda raw: raw["containers"]["web"].update(image=engine.images["two"]))
    reloaded_at = time.monotonic()
    status, body = await d.reload()
    assert status == 200 and body["rollouts"] == ["web"], body

    closed: dict[str, Any] = {}

    async def watch_socket() -> None:
        message = await ws.receive()
        closed.update(type=message.type, code=ws.close_code, after=time.monotonic() - reloaded_at)
    watcher = asyncio.create_task(watch_socket())
    peak, rollout = 0, d.proxy.rollouts.current["web"]
    deadline = time.monotonic() + ROLL_BOUND
    while time.monotonic() < deadline:
        peak = max(peak, len(await running_containers(engine.backend)))
        if rollout.state != "running" or set(traffic.latest().values()) == {"two"} and rollout.state == "done":
            break
        await asyncio.sleep(0.1)
    await traffic.stop()
    assert rollout.state == "done", rollout.status()
    assert set(traffic.latest().values()) == {"two"}, traffic.latest()
    assert traffic.failures == [], traffic.failures[:5]
    assert traffic.count > 100
    assert len(KEYS) < peak <= len(KEYS) + 1, peak  # max_surge: one extra container at most
    names = await running_containers(engine.backend)
    assert len(names) == len(KEYS) and all(name.endswith("-r1") for name in names), names
    await asyncio.wait_for(watcher, 30)
    assert closed["type"] is aiohttp.WSMsgType.CLOSE and closed["code"] == 1012, closed
    assert closed["after"] >= GRACE  # never before the grace period after the switch (which follows the reload)
    assert (await (await d.client.get("/container-status")).json())["generations"] == {"web": {"1": len(KEYS)}}


async def test_an_image_that_never_becomes_ready_halts_with_the_old_containers_serving(engine):
    d = await engine(strategy="surge", steps=[20, 100], max_surge=1)
    await warm(d)
    before = sorted(await running_containers(engine.backend))
    traffic = Traffic(d.client, KEYS)
    traffic.start()
    d.write(lambda raw: raw["containers"]["web"].update(image=engine.images["never"], start_timeout="5s"))
    status, body = await d.reload()
    assert status == 200 and body["rollouts"] == ["web"], body
    rollout = d.proxy.rollouts.current["web"]
    deadline = time.monotonic() + 120
    while rollout.state == "running" and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    await asyncio.sleep(1)
    await traffic.stop()
    assert rollout.state == "halted" and rollout.done == [], rollout.status()
    assert traffic.failures == [], traffic.failures[:5]
    assert set(traffic.latest().values()) == {"one"}
    assert sorted(await running_containers(engine.backend)) == before  # the never-ready one stopped, removed
