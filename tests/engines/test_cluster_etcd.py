"""Key ownership across replicas on a real etcd (marker `etcd`): the store on one and on three etcd members,
and real `python -m proxy` replicas (stub backend where a replica's own instances suffice, docker where a
container must outlive its replica)."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import signal
import time
import uuid
from typing import Any, AsyncIterator, Iterator

import aiodocker
import aiohttp
import pytest
from aiohttp import web

from bench.lib.cluster import Etcd, Replicas, etcd_binary, running_containers, running_keys, starts
from bench.lib.common import free_port
from bench.failover import run_round
from proxy.cluster.etcd import EtcdStore
from proxy.cluster.node import SWEEP_EVERY
from proxy.cluster.store import Member, StoreUnavailable
from tests.conftest import base_config
from tests.support.engines import ensure_image, make_backend, remove_all, socket_for

pytestmark = pytest.mark.etcd


def _need_etcd() -> None:
    if etcd_binary() is None:
        message = "etcd not installed; run: bash .ci/tools.sh"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def etcd() -> Iterator[Etcd]:
    _need_etcd()
    with Etcd(1) as cluster:
        yield cluster


@pytest.fixture
def etcd3() -> Iterator[Etcd]:
    _need_etcd()
    with Etcd(3) as cluster:
        yield cluster


# ---------------------------------------------------------------- the store


async def _store(name: str, endpoints: list[str], ttl: float = 2.0, prefix: str | None = None) -> EtcdStore:
    store = EtcdStore(Member(name, f"http://{name}"), tuple(endpoints), ttl,
                      prefix=prefix or f"/t-{uuid.uuid4().hex[:6]}")
    await store.start()
    return store


async def test_one_claim_per_key_and_a_dead_members_keys_free_after_its_lease(etcd):
    prefix = f"/t-{uuid.uuid4().hex[:6]}"
    a = await _store("a", etcd.endpoints, prefix=prefix)
    b = await _store("b", etcd.endpoints, prefix=prefix)
    try:
        claims = await asyncio.gather(*(s.claim("svc/k") for s in (a, b, a, b)))
        assert len(set(claims)) == 1  # exactly one holder, whoever won
        holder, other = (a, b) if claims[0] == "a" else (b, a)
        assert {m.id for m in await other.refresh()} == {"a", "b"}
        assert holder._task is not None
        holder._task.cancel()  # the holder dies: no renewal, no revoke
        began = time.monotonic()
        while await other.owner("svc/k") is not None:
            assert time.monotonic() - began < 5
            await asyncio.sleep(0.1)
        assert await other.claim("svc/k") == other.me.id
        assert {m.id for m in await other.refresh()} == {other.me.id}
        assert other.holds_lease() and not holder.holds_lease()
    finally:
        await a.close()
        await b.close()


async def test_a_three_member_etcd_survives_one_member_down(etcd3):
    store = await _store("a", etcd3.endpoints[:1] + etcd3.endpoints[1:], ttl=2.0)
    try:
        assert await store.claim("svc/one") == "a"
        etcd3.kill(0)  # the endpoint in use goes away; the others hold a quorum (after an election if it led)
        began = time.monotonic()
        while True:
            try:
                assert await store.claim("svc/two") == "a"
                break
            except StoreUnavailable:
                assert time.monotonic() - began < 10, "no etcd member answered"
                await asyncio.sleep(0.2)
        assert await store.owner("svc/one") == "a"
        await asyncio.sleep(2.5)  # renewals went to a live member
        assert store.holds_lease() and await store.owner("svc/one") == "a"
    finally:
        await store.close()


# ---------------------------------------------------------------- replicas


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any] | None, dict[str, str]]:
    async with session.get(url) as response:
        body = await response.read()
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        return response.status, parsed if isinstance(parsed, dict) else None, dict(response.headers)


@pytest.fixture
def stub_cluster(etcd, tmp_path) -> Iterator[Any]:
    made: list[Replicas] = []

    def make(count: int = 2, lease_ttl: float = 2.0, sleep_after: str = "60s") -> Replicas:
        base = base_config("stub", "stub")
        base["containers"]["svc"]["sleep_after"] = sleep_after
        made.append(Replicas(base, etcd.endpoints, count, lease_ttl, str(tmp_path)))
        return made[-1]

    yield make
    for replicas in made:
        replicas.stop()


@pytest.fixture
async def docker_cluster(etcd3, tmp_path) -> AsyncIterator[Any]:
    image = await ensure_image("docker")
    proxy_id = f"cluster-{uuid.uuid4().hex[:8]}"
    backend = make_backend("docker", proxy_id)
    made: list[Replicas] = []

    def make(count: int = 3, lease_ttl: float = 2.0, env_of: dict[int, dict[str, str]] | None = None) -> Replicas:
        """`env_of`: more env for some replicas' class, by index (replicas in the middle of a config change)."""
        base = base_config("docker", image)
        base["backend"] = {"type": "docker", "proxy_id": proxy_id, "docker": {"socket": socket_for("docker")}}
        base_of = {i: copy.deepcopy(base) for i in env_of or {}}
        for i, env in (env_of or {}).items():
            base_of[i]["containers"]["svc"]["env"].update(env)
        made.append(Replicas(base, etcd3.endpoints, count, lease_ttl, str(tmp_path), base_of=base_of))
        return made[-1]

    make.proxy_id = proxy_id  # type: ignore[attr-defined]
    try:
        yield make
    finally:
        for replicas in made:
            replicas.stop()
        await remove_all(backend)
        await backend.close()


@pytest.mark.docker
async def test_300_cold_requests_over_three_replicas_start_one_container(docker_cluster):
    replicas = docker_cluster()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=90)) as session:
        answers = await asyncio.gather(*(_get(session, f"http://127.0.0.1:{replicas.ports[i % 3]}/s/v2/health/ready")
                                         for i in range(300)))
    assert [status for status, _, _ in answers] == [200] * 300
    assert starts(replicas.ports) == 1
    assert len(await running_containers(socket_for("docker"), docker_cluster.proxy_id)) == 1


@pytest.mark.docker
async def test_sigkill_of_the_owner_hands_the_running_container_to_a_survivor(tmp_path):
    """bench/failover.py's round: traffic through the two other replicas while the owner is SIGKILLed."""
    _need_etcd()
    ttl = 2.0
    report = await run_round(ttl, after=2 * ttl + 3, logdir=str(tmp_path))
    assert report["failed_sent_after"] == 0, report
    assert report["failed_in_flight"] <= 8, report  # at most one per client; GETs unanswered are replayed (0 seen)
    assert report["gap_s"] is not None and report["gap_s"] < ttl + 5, report  # lease_ttl + a start at most
    assert report["same_container_after"] and report["containers_before"] == 1, report  # adopted, no second
    assert (report["survivor_starts"], report["survivor_adoptions"]) == (0, 1), report


@pytest.mark.docker
async def test_sigterm_of_the_owner_hands_the_running_container_over_and_nothing_fails(tmp_path):
    """A rolling restart's step: the owner drains, lets go of its running container and revokes its lease; a
    survivor adopts the same container on the next request. No request fails and nothing starts cold."""
    _need_etcd()
    report = await run_round(2.0, after=3.0, logdir=str(tmp_path), sig=signal.SIGTERM)
    assert report["owner_exit_code"] == 0, report
    assert (report["failed_in_flight"], report["failed_sent_after"]) == (0, 0), report
    assert report["same_container_after"] and report["containers_before"] == 1, report
    assert (report["survivor_starts"], report["survivor_adoptions"]) == (0, 1), report


@pytest.mark.docker
async def test_the_last_replica_stops_its_own_containers_on_sigterm(docker_cluster):
    """No peer to hand over to: the containers are stopped, not left running without an owner."""
    replicas = docker_cluster(count=1)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        assert (await _get(session, f"http://127.0.0.1:{replicas.ports[0]}/s/v2/health/ready"))[0] == 200
    assert len(await running_containers(socket_for("docker"), docker_cluster.proxy_id)) == 1
    replicas.kill(0, signal.SIGTERM)
    assert await replicas.exited(0) == 0
    assert await running_containers(socket_for("docker"), docker_cluster.proxy_id) == []


async def test_an_idle_stop_on_the_owner_waits_for_a_request_that_came_through_a_peer(stub_cluster):
    replicas = stub_cluster(sleep_after="1s")
    async with aiohttp.ClientSession() as session:
        assert (await _get(session, f"http://127.0.0.1:{replicas.ports[0]}/k/idle/v2/health/ready"))[0] == 200
        owner = replicas.owner_of("idle")
        peer = replicas.ports[1 - owner]
        status, body, _ = await _get(session, f"http://127.0.0.1:{peer}/k/idle/debug/sleep?seconds=3")
        assert (status, body) == (200, {"slept": 3.0})  # sleep_after 1s passed three times meanwhile
        assert "idle" in running_keys(replicas.ports[owner])
        await asyncio.sleep(2.0)
        assert "idle" not in running_keys(replicas.ports[owner])  # then idle: stopped by its owner
        assert starts(replicas.ports) == 1


async def test_websockets_and_streams_are_forwarded_to_the_owner(stub_cluster):
    replicas = stub_cluster()
    async with aiohttp.ClientSession() as session:
        assert (await _get(session, f"http://127.0.0.1:{replicas.ports[0]}/k/ws/v2/health/ready"))[0] == 200
        peer = replicas.ports[1 - replicas.owner_of("ws")]
        async with session.ws_connect(f"http://127.0.0.1:{peer}/k/ws/debug/ws") as ws:
            await ws.send_str("hello")
            assert (await ws.receive(timeout=5)).data == "hello"
        async with session.post(f"http://127.0.0.1:{peer}/k/ws/debug/echo", data=b"x" * 300_000) as response:
            assert response.status == 200 and (await response.json())["bytes"] == 300_000  # the body streamed over
        status, body, _ = await _get(session, f"http://127.0.0.1:{peer}/k/ws/debug/headers")
        assert status == 200 and body is not None
        seen = {name.lower(): value for name, value in body["headers"].items()}
        assert "x-lazy-proxy-forwarded" not in seen  # between replicas only: the instance sees what nginx sends
        assert seen["x-forwarded-host"] == f"127.0.0.1:{peer}"  # the Host the client sent, to the peer
        assert re.fullmatch("[0-9a-f]{32}", seen["x-request-id"])  # made by the peer, kept by the owner: one id
        async with session.get(f"http://127.0.0.1:{peer}/k/ws/debug/headers",
                               headers={"X-Request-Id": "cluster-rid-1"}) as response:
            seen = {name.lower(): value for name, value in (await response.json())["headers"].items()}
        assert seen["x-request-id"] == "cluster-rid-1"  # the client's own, through both replicas
    assert starts(replicas.ports) == 1


async def test_etcd_away_owned_keys_served_until_the_lease_would_expire_others_503(etcd, stub_cluster):
    ttl = 3.0
    replicas = stub_cluster(lease_ttl=ttl)
    async with aiohttp.ClientSession() as session:
        assert (await _get(session, f"http://127.0.0.1:{replicas.ports[0]}/k/kept/v2/health/ready"))[0] == 200
        owner = replicas.ports[replicas.owner_of("kept")]
        etcd.kill(0)
        assert (await _get(session, f"http://127.0.0.1:{owner}/k/kept/v2/health/ready"))[0] == 200
        status, body, headers = await _get(session, f"http://127.0.0.1:{owner}/k/new-one/v2/health/ready")
        assert status == 503 and headers.get("Retry-After") == "1", body
        await asyncio.sleep(ttl + 0.5)
        assert (await _get(session, f"http://127.0.0.1:{owner}/k/kept/v2/health/ready"))[0] == 503
        for port in replicas.ports:
            assert (await _get(session, f"http://127.0.0.1:{port}/health"))[0] == 200  # nothing crashed
        await asyncio.to_thread(etcd.restart, 0)
        began = time.monotonic()
        while (await _get(session, f"http://127.0.0.1:{owner}/k/kept/v2/health/ready"))[0] != 200:
            assert time.monotonic() - began < 2 * ttl + 3, "not served again after etcd came back"
            await asyncio.sleep(0.2)
        for port in replicas.ports:  # new keys resolve again, from every replica
            assert (await _get(session, f"http://127.0.0.1:{port}/k/after-{port}/v2/health/ready"))[0] == 200
    # `kept` started once (kept or adopted after etcd came back, never started again), each after-* once
    assert starts(replicas.ports, "proxy_container_start_duration_seconds_count") == 1 + len(replicas.ports)


async def test_three_replicas_send_one_start_hook_and_meter_one_instance(etcd, tmp_path):
    """Hooks and usage follow the owner's Manager: one start event and one metered instance cluster-wide."""
    events: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        events.append(await request.json())
        return web.Response()

    receiver = web.Application()
    receiver.router.add_post("/hook", hook)
    runner = web.AppRunner(receiver)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    base = base_config("stub", "stub")
    base["hooks"] = {"webhooks": [{"url": f"http://127.0.0.1:{port}/hook", "events": ["start"]}]}
    replicas = await asyncio.to_thread(Replicas, base, etcd.endpoints, 3, 2.0, str(tmp_path))
    try:
        async with aiohttp.ClientSession() as session:
            urls = [f"http://127.0.0.1:{replicas.ports[i % 3]}/k/hooked/api/health" for i in range(60)]
            answers = await asyncio.gather(*(_get(session, url) for url in urls))
            assert [status for status, _, _ in answers] == [200] * 60
            began = time.monotonic()
            while not events and time.monotonic() - began < 10:  # hooks are sent in the background
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)  # time for a second one, were there any
            assert [(e["event"], e["key"]) for e in events] == [("start", "hooked")]
            usage = [entry["usage"] for p in replicas.ports
                     for entry in (await _get(session, f"http://127.0.0.1:{p}/container-status"))[1]["keys"]  # type: ignore[index]
                     if entry["key"] == "hooked"]
            assert len(usage) == 1  # only the owner has the key (and meters it)
    finally:
        await asyncio.to_thread(replicas.stop)
        await runner.cleanup()


async def test_an_lb_pool_is_owned_as_one_unit(stub_cluster):
    replicas = stub_cluster()
    async with aiohttp.ClientSession() as session:
        urls = [f"http://127.0.0.1:{replicas.ports[i % 2]}/lb/v2/health/ready" for i in range(30)]
        assert [status for status, _, _ in await asyncio.gather(*(_get(session, url) for url in urls))] == [200] * 30
    pools = [{key for key in running_keys(port) if key.startswith("lb")} for port in replicas.ports]
    assert sorted(map(bool, pools)) == [False, True]  # every member on one replica, balanced there


@pytest.mark.docker
async def test_a_dead_owners_container_is_adopted_without_a_request(docker_cluster):
    """No orphan: with no traffic after the kill, the sweep of the key's next owner adopts the container."""
    ttl = 2.0
    replicas = docker_cluster(count=2, lease_ttl=ttl)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        assert (await _get(session, f"http://127.0.0.1:{replicas.ports[0]}/s/v2/health/ready"))[0] == 200
    owner = replicas.owner_of("shared")
    before = await running_containers(socket_for("docker"), docker_cluster.proxy_id)
    replicas.kill(owner)
    survivor = replicas.ports[1 - owner]
    began = time.monotonic()
    while "shared" not in running_keys(survivor):
        assert time.monotonic() - began < ttl + SWEEP_EVERY + 5, "the dead owner's container was not adopted"
        await asyncio.sleep(0.5)
    assert await running_containers(socket_for("docker"), docker_cluster.proxy_id) == before


@pytest.mark.docker
async def test_a_new_owner_on_another_config_stops_the_old_specs_container(docker_cluster):
    """Replicas in the middle of a config change (one has an env var more): the key's owner dies, and the survivor's
    sweep claims the key. The container runs the dead owner's spec, not the survivor's, so it is not adopted; it is
    stopped at the claim, not left running until the key's next request. That request starts the survivor's spec."""
    ttl = 2.0
    replicas = docker_cluster(count=2, lease_ttl=ttl, env_of={1: {"RELEASE": "2"}})
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        assert (await _get(session, f"http://127.0.0.1:{replicas.ports[0]}/s/v2/health/ready"))[0] == 200
        owner = replicas.owner_of("shared")
        [old] = await running_containers(socket_for("docker"), docker_cluster.proxy_id)
        replicas.kill(owner)
        survivor = replicas.ports[1 - owner]
        began = time.monotonic()
        while old in await running_containers(socket_for("docker"), docker_cluster.proxy_id):
            assert time.monotonic() - began < ttl + SWEEP_EVERY + 15, "the old spec's container was left running"
            await asyncio.sleep(0.5)
        assert "shared" not in running_keys(survivor)  # not adopted
        status, _, headers = await _get(session, f"http://127.0.0.1:{survivor}/s/v2/health/ready")
        assert status == 200 and headers.get("X-Proxy-Cold-Start") == "1"
    [new] = await running_containers(socket_for("docker"), docker_cluster.proxy_id)
    docker = aiodocker.Docker(url=socket_for("docker"))
    try:
        env = (await docker.containers.container(new).show())["Config"]["Env"]
    finally:
        await docker.close()
    assert new != old and ("RELEASE=2" in env) == (owner == 0)  # the survivor's spec
