"""Key ownership across replicas on a real etcd (marker `etcd`): the store on one and on three etcd members,
and real `python -m proxy` replicas (stub backend where a replica's own instances suffice, docker where a
container must outlive its replica)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from typing import Any, AsyncIterator, Iterator

import aiodocker
import aiohttp
import pytest

from bench._cluster import Etcd, etcd_binary, replica
from bench._common import Server, free_port, http_text, metric_sum, metrics_samples
from backends.base import LABEL_PROXY_ID
from proxy.cluster.etcd import EtcdStore
from proxy.cluster.store import Member
from tests.conftest import base_config
from tests.engines import ensure_image, make_backend, remove_all, socket_for

pytestmark = pytest.mark.etcd


def _need_etcd() -> None:
    if etcd_binary() is None:
        message = "etcd not installed; run: bash .ci/etcd.sh"
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
        etcd3.kill(0)  # the endpoint in use goes away; the others hold a quorum
        assert await store.claim("svc/two") == "a"
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


def _running_keys(port: int) -> set[str]:
    status = json.loads(http_text(f"http://127.0.0.1:{port}/container-status"))
    return {entry["key"] for entry in status["keys"] if entry["state"] == "running"}


def _starts(ports: list[int], metric: str = "proxy_container_starts_total") -> float:
    """Summed over the replicas' /metrics (starts_total counts adoptions too; start_duration_seconds_count not)."""
    return sum(metric_sum(metrics_samples(http_text(f"http://127.0.0.1:{p}/metrics")), metric) for p in ports)


class Replicas:
    def __init__(self, base: dict[str, Any], endpoints: list[str], count: int, lease_ttl: float,
                 logdir: str) -> None:
        self.ports = [free_port() for _ in range(count)]
        self.servers: list[Server] = []
        for port in self.ports:
            self.servers.append(replica(base, endpoints, port, lease_ttl, log=os.path.join(logdir, f"r{port}.log")))

    def owner_of(self, key: str) -> int:
        """The index of the replica whose instance of `key` runs."""
        found = [i for i, port in enumerate(self.ports) if self.servers[i].proc.poll() is None
                 and key in _running_keys(port)]
        assert len(found) == 1, found
        return found[0]

    def kill(self, index: int) -> None:
        os.killpg(self.servers[index].pid, signal.SIGKILL)
        self.servers[index].proc.wait(timeout=10)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


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

    def make(count: int = 3, lease_ttl: float = 2.0) -> Replicas:
        base = base_config("docker", image)
        base["backend"] = {"type": "docker", "proxy_id": proxy_id, "docker": {"socket": socket_for("docker")}}
        made.append(Replicas(base, etcd3.endpoints, count, lease_ttl, str(tmp_path)))
        return made[-1]

    make.proxy_id = proxy_id  # type: ignore[attr-defined]
    try:
        yield make
    finally:
        for replicas in made:
            replicas.stop()
        await remove_all(backend)
        await backend.close()


async def _running_containers(proxy_id: str) -> list[str]:
    docker = aiodocker.Docker(url=socket_for("docker"))
    try:
        listed = await docker.containers.list(filters=json.dumps({"label": [f"{LABEL_PROXY_ID}={proxy_id}"]}))
        return [c.id for c in listed]
    finally:
        await docker.close()


@pytest.mark.docker
async def test_300_cold_requests_over_three_replicas_start_one_container(docker_cluster):
    replicas = docker_cluster()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=90)) as session:
        answers = await asyncio.gather(*(_get(session, f"http://127.0.0.1:{replicas.ports[i % 3]}/s/v2/health/ready")
                                         for i in range(300)))
    assert [status for status, _, _ in answers] == [200] * 300
    assert _starts(replicas.ports) == 1
    assert len(await _running_containers(docker_cluster.proxy_id)) == 1


@pytest.mark.docker
async def test_sigkill_of_the_owner_hands_the_running_container_to_a_survivor(docker_cluster):
    ttl = 2.0
    replicas = docker_cluster(lease_ttl=ttl)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        assert (await _get(session, f"http://127.0.0.1:{replicas.ports[0]}/s/v2/health/ready"))[0] == 200
        owner = replicas.owner_of("shared")
        before = await _running_containers(docker_cluster.proxy_id)
        entries = [port for i, port in enumerate(replicas.ports) if i != owner]
        log: list[tuple[float, int]] = []
        stop = asyncio.Event()

        async def traffic(port: int) -> None:
            while not stop.is_set():
                try:
                    status = (await _get(session, f"http://127.0.0.1:{port}/s/v2/health/ready"))[0]
                except aiohttp.ClientError:
                    status = 0
                log.append((time.monotonic(), status))
                await asyncio.sleep(0.02)

        workers = [asyncio.create_task(traffic(port)) for port in entries for _ in range(2)]
        await asyncio.sleep(1.0)
        killed_at = time.monotonic()
        replicas.kill(owner)
        await asyncio.sleep(2 * ttl + 4)
        stop.set()
        await asyncio.gather(*workers)
    failures = [(t - killed_at, s) for t, s in log if s != 200]
    assert all(abs(t) < 0.5 for t, _ in failures), failures  # only requests in flight at the kill fail
    served_after = [t for t, s in log if s == 200 and t > killed_at]
    assert served_after and served_after[0] - killed_at < ttl + 5  # lease_ttl + a start at most
    assert await _running_containers(docker_cluster.proxy_id) == before  # adopted: same container, no second
    survivors = [port for i, port in enumerate(replicas.ports) if i != owner]
    assert _starts(survivors, "proxy_container_start_duration_seconds_count") == 0  # no start
    assert _starts(survivors) == 1  # one adoption


async def test_an_idle_stop_on_the_owner_waits_for_a_request_that_came_through_a_peer(stub_cluster):
    replicas = stub_cluster(sleep_after="1s")
    async with aiohttp.ClientSession() as session:
        assert (await _get(session, f"http://127.0.0.1:{replicas.ports[0]}/k/idle/v2/health/ready"))[0] == 200
        owner = replicas.owner_of("idle")
        peer = replicas.ports[1 - owner]
        status, body, _ = await _get(session, f"http://127.0.0.1:{peer}/k/idle/debug/sleep?seconds=3")
        assert (status, body) == (200, {"slept": 3.0})  # sleep_after 1s passed three times meanwhile
        assert "idle" in _running_keys(replicas.ports[owner])
        await asyncio.sleep(2.0)
        assert "idle" not in _running_keys(replicas.ports[owner])  # then idle: stopped by its owner
        assert _starts(replicas.ports) == 1


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
        assert status == 200 and body is not None and "x-lazy-proxy-forwarded" in {k.lower() for k in body["headers"]}
    assert _starts(replicas.ports) == 1


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
