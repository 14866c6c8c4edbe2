"""Faults injected from outside the proxy, under concurrent traffic, on real dockerd and podman.

A container stopped or removed behind the proxy's back costs only the requests in flight on it; an idle
one leaves `running` at once (the runtime's event stream); a daemon outage gives quick 503s, never 502s
for requests that were not in flight, and leaves nothing `running` at a dead address; an instance that
runs out of memory says so.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from proxy.events import State
from tests.conftest import ENGINE_PARAMS

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.faults
CLIENTS = 8


@pytest.fixture(params=ENGINE_PARAMS)
def backend_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def traffic(h, path: str, seconds: float, fault) -> tuple[list[tuple[float, float, int]], float, float]:
    """CLIENTS loops of GET `path` for `seconds`; `fault()` runs after a third of it. Returns (sent at, done at,
    status) per request and the loop times at which the fault began and had been applied."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    results: list[tuple[float, int]] = []

    async def client() -> None:
        while loop.time() < end:
            sent = loop.time()
            resp = await h.client.get(path)
            await resp.read()
            results.append((sent, loop.time(), resp.status))

    clients = [asyncio.create_task(client()) for _ in range(CLIENTS)]
    await asyncio.sleep(seconds / 3)
    began = loop.time()
    await fault()
    applied = loop.time()
    await asyncio.gather(*clients)
    return results, began, applied


@pytest.mark.parametrize("how", ["stop", "remove"])
async def test_a_container_stopped_or_removed_from_outside_costs_only_requests_in_flight(make_proxy, raw, how):
    h = await make_proxy()
    assert (await h.client.get("/k/victim/api/health")).status == 200
    m = h.manager("victim")
    victim = m.instance.id

    async def fault() -> None:
        container = raw.containers.container(victim)
        await (container.stop(t=1) if how == "stop" else container.delete(force=True))

    results, began, applied = await traffic(h, "/k/victim/api/health", 6.0, fault)
    before = [status for sent, done, status in results if done < began]
    after = [status for sent, done, status in results if sent > applied]
    failed = [(sent, status) for sent, done, status in results if status != 200]
    assert before and all(status == 200 for status in before)
    assert after and all(status == 200 for status in after), sorted(set(after))  # after it was gone: all served
    # Only requests that met the instance while it was going (in flight, or sent during the stop) may fail.
    assert all(done >= began and sent <= applied for sent, done, status in results if status != 200), failed
    assert m.start_count == 2 and m.state is State.RUNNING and m.instance.id != victim or how == "stop"
    await h.wait_for(lambda: m.in_flight == 0)


async def test_an_idle_instance_stopped_from_outside_leaves_running_at_once(make_proxy, raw):
    h = await make_proxy()
    assert (await h.client.get("/k/quiet/api/health")).status == 200
    m = h.manager("quiet")
    await raw.containers.container(m.instance.id).stop(t=1)
    await h.wait_for(lambda: m.state is State.STOPPED, timeout=5)  # no request needed: the event stream
    assert m.last_error.startswith("instance exited")


async def test_out_of_memory_is_named_in_the_refusal(make_proxy, raw):
    hog = ["/usr/bin/python3.11", "-c", "x = bytearray(256 * 2**20); import time; time.sleep(60)"]
    h = await make_proxy(svc={"command": hog, "instance_type": {"memory": "32MiB", "cpus": 1.0},
                              "start_timeout": "30s"})
    resp = await h.client.get("/k/hog/api/health")
    body = await resp.json()
    assert resp.status == 503 and "memory" in body["reason"] and "32 MiB" in body["reason"], body


async def test_daemon_outage_gives_quick_503s_and_nothing_stays_running_at_a_dead_address(
        make_proxy, raw, backend_kind):
    h = await make_proxy()
    assert (await h.client.get("/k/warm/api/health")).status == 200
    m = h.manager("warm")
    subprocess.run(["bash", str(ROOT / ".ci/daemons.sh"), "down", backend_kind], check=True, timeout=60)
    try:
        loop = asyncio.get_running_loop()
        for path in ["/k/warm/api/health"] * 5 + ["/k/cold/api/health"] * 3:
            began = loop.time()
            resp = await h.client.get(path)
            if backend_kind == "podman" and path.startswith("/k/warm"):
                # podman has no daemon holding the containers: a running one outlives its API service
                assert resp.status == 200, await resp.text()
            else:  # dockerd takes its containers with it; and nobody can start one now
                assert resp.status == 503 and int(resp.headers["Retry-After"]) >= 1, await resp.text()
            assert loop.time() - began < 1.0
    finally:
        subprocess.run(["bash", str(ROOT / ".ci/daemons.sh"), "up"], check=True, timeout=300)
    await h.proxy.reconciler.reconcile_once()  # what the periodic reconcile does within 10 s
    assert m.state is not State.RUNNING or (await h.client.get("/k/warm/api/health")).status == 200
    resp = await h.client.get("/k/warm/api/health")
    assert resp.status == 200, await resp.text()
    assert m.state is State.RUNNING


DOCKER = [p for p in ENGINE_PARAMS if p.id == "docker"]


@pytest.mark.parametrize("backend_kind", DOCKER)  # podman frees the name even when it cannot remove the files
async def test_a_name_stuck_in_removal_moves_the_key_to_a_fresh_name(make_proxy, raw, backend_kind):
    """dockerd can leave a container `dead` holding its name (Removal In Progress). Injected from outside:
    a file the daemon cannot unlink in the container's directory, then `docker rm -f`."""
    h = await make_proxy()
    assert (await h.client.get("/k/stuck/api/health")).status == 200
    m = h.manager("stuck")
    old = m.instance.id
    pin = Path(f"/var/lib/docker/containers/{old}/pin")
    pin.touch()
    subprocess.run(["chattr", "+i", str(pin)], check=True)
    try:
        with pytest.raises(Exception, match="unable to remove filesystem"):
            await raw.containers.container(old).delete(force=True)
        assert (await raw.containers.container(old).show())["State"]["Status"] == "dead"
        await h.wait_for(lambda: m.state is State.STOPPED, timeout=5)
        resp = await h.client.get("/k/stuck/api/health")
        assert resp.status == 200, await resp.text()
        fresh = await raw.containers.container(m.instance.id).show()
        assert fresh["Name"].endswith("-g1") and m.instance.id != old
        assert h.backend.names.stuck == {old: fresh["Name"].lstrip("/")[:-len("-g1")]}
        assert await h.backend.cleanup_stuck() == []  # still pinned: stays remembered
    finally:
        subprocess.run(["chattr", "-i", str(pin)], check=True)
    await h.proxy.reconciler.reconcile_once()  # the periodic reconcile removes it once it can
    assert h.backend.names.stuck == {}
    with pytest.raises(Exception, match="No such container"):
        await raw.containers.container(old).show()
    assert (await h.client.get("/k/stuck/api/health")).status == 200
