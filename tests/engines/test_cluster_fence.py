"""Fencing a stale owner on a real etcd (marker `etcd`) and real docker replicas: a frozen owner and one cut off
etcd never stop or pause what a peer adopted, and requests through the peers are answered (bench/lib/fence.py runs
the rounds); the etcd store's confirm and leaving marks; what `/info`, `/metrics`, `/ready` and `ctl members`
show."""

from __future__ import annotations

import asyncio
import signal
import uuid
from typing import Iterator

import aiohttp
import pytest

from backends.docker import default_docker_socket
from backends.image.build import ensure_image
from bench.lib.cluster import Etcd, Replicas, etcd_binary, remove_containers, running_containers
from bench.lib.fence import broken, config, run_fault
from proxy.cluster.etcd import EtcdStore
from proxy.cluster.store import Member, StoreUnavailable, rendezvous
from proxy.admin.ctl import members_table
from tests.conftest import base_config

pytestmark = pytest.mark.etcd


@pytest.fixture
def etcd() -> Iterator[Etcd]:
    if etcd_binary() is None:
        pytest.skip("etcd not installed; run: bash .ci/tools.sh")
    with Etcd(1) as cluster:
        yield cluster


async def _store(name: str, endpoints: list[str], prefix: str) -> EtcdStore:
    store = EtcdStore(Member(name, f"http://{name}"), tuple(endpoints), 2.0, prefix=prefix)
    await store.start()
    return store


async def test_a_stop_is_confirmed_only_for_the_owner_under_its_current_lease(etcd):
    prefix = f"/t-{uuid.uuid4().hex[:6]}"
    a, b = await _store("a", etcd.endpoints, prefix), await _store("b", etcd.endpoints, prefix)
    try:
        assert await a.claim("svc/k") == "a"
        assert await a.confirm("svc/k") and not await b.confirm("svc/k")
        assert not await a.confirm("svc/other")  # nobody's: not ours to stop
        a.valid_until = 0.0  # the validity lapsed: not confirmed without asking anyone
        assert not await a.confirm("svc/k")
    finally:
        await a.close()
        await b.close()


async def test_replicas_leaving_together_the_last_to_mark_sees_no_taker(etcd):
    prefix = f"/t-{uuid.uuid4().hex[:6]}"
    a, b, c = [await _store(n, etcd.endpoints, prefix) for n in "abc"]
    try:
        assert [m.id for m in await a.leave()] == ["b", "c"]  # two peers stay: a hands over
        assert [m.id for m in await b.leave()] == ["c"]  # a is leaving: not a taker
        assert await c.leave() == []  # the last one out stops the instances
        assert await c.leavers() == {"a", "b"}
        await a.close()  # a lease revoked: its mark goes with it
        assert await c.leavers() == {"b"}
    finally:
        for store in (a, b, c):
            await store.close()


async def test_an_endpoint_that_fails_is_followed_by_the_next_within_the_budget(etcd):
    dead = "http://127.0.0.1:9"  # refuses at once
    store = await _store("a", [dead, *etcd.endpoints], f"/t-{uuid.uuid4().hex[:6]}")
    try:
        assert store.valid() and await store.claim("svc/k") == "a"
        assert store.endpoints[0] == etcd.endpoints[0]  # the one that answered stays first
        assert store.errors == 0
    finally:
        await store.close()


async def test_a_lapsed_validity_is_renewed_by_the_request_that_finds_it(etcd):
    """etcd back after an outage: the first request renews the lease itself (one renewal for all requests
    waiting), not the renewal loop at its next round, which a request in between met as a 503. The same lease,
    so the claims under it stand; with etcd away it fails at once, as the loop's renewal would."""
    store = await _store("a", etcd.endpoints, f"/t-{uuid.uuid4().hex[:6]}")
    try:
        assert await store.claim("svc/k") == "a"
        lease, epoch = store.lease_id, store.epoch
        store.valid_until = 0.0  # lapsed, as after etcd was away for longer than the validity
        await asyncio.gather(*(store.revive() for _ in range(5)))
        assert store.valid() and (store.lease_id, store.epoch) == (lease, epoch) and await store.confirm("svc/k")
        etcd.kill(0)
        store.valid_until = 0.0
        with pytest.raises(StoreUnavailable):
            await store.revive()
        assert not store.valid()
    finally:
        await store.close()


def test_ctl_members_table():
    cluster = {"replica": "r1", "members": [{"id": "r1", "url": "http://a:1"}, {"id": "r2", "url": "http://b:2"}],
               "lease_valid": False, "lease_valid_for": 0, "lease_ttl": 2.0, "epoch": 3, "owned_keys": ["svc/k"],
               "forwarded_requests": 7, "store_errors": 2}
    lines = members_table(cluster).splitlines()
    assert lines[1].startswith("* r1") and lines[2].startswith("  r2") and "http://b:2" in lines[2]
    assert "lease NOT VALID" in lines[-1] and "1 keys owned" in lines[-1] and "2 etcd errors" in lines[-1]


# ---------------------------------------------------------------- faults on real replicas (docker)


@pytest.mark.docker
@pytest.mark.parametrize("fault", ["freeze", "partition"])
async def test_a_stale_owner_never_touches_what_a_peer_adopted(fault, tmp_path):
    """The issue's two faults, three lease ttls long, sleep_after shorter than that, traffic over three keys
    through the two other replicas: one container per key throughout, none stopped or paused by anyone, none
    started again, every request sent after the fault answered 200, a WebSocket through a peer echoes."""
    if etcd_binary() is None:
        pytest.skip("etcd not installed")
    report = await run_fault(fault, lease_ttl=2.0, logdir=str(tmp_path))
    assert not (why := broken(report)), f"{why}: {report}"


@pytest.mark.docker
async def test_etcds_leader_killed_costs_no_request(tmp_path):
    if etcd_binary() is None:
        pytest.skip("etcd not installed")
    report = await run_fault("leader", lease_ttl=2.0, after=3.0, logdir=str(tmp_path))
    assert not (why := broken(report)), f"{why}: {report}"
    assert report["by_status"] == {200: report["requests"]}, report


async def test_info_metrics_and_ready_show_the_cluster(etcd, tmp_path):
    replicas = await asyncio.to_thread(Replicas, base_config("stub", "stub"), etcd.endpoints, 2, 2.0, str(tmp_path))
    try:
        async with aiohttp.ClientSession() as session:
            port = replicas.ports[0]
            async with session.get(f"http://127.0.0.1:{replicas.ports[1]}/k/x/v2/health/ready") as response:
                assert response.status == 200
            async with session.get(f"http://127.0.0.1:{port}/info") as response:
                cluster = (await response.json())["cluster"]
            assert cluster["lease_valid"] and {m["id"] for m in cluster["members"]} == {f"r{p}" for p in replicas.ports}
            async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                text = await response.text()
            assert "proxy_cluster_members 2.0" in text and "proxy_cluster_lease_valid 1.0" in text
            assert "proxy_cluster_forwarded_requests_total" in text and "proxy_cluster_store_errors_total" in text
            async with session.get(f"http://127.0.0.1:{port}/ready") as response:
                assert response.status == 200
            etcd.kill(0)
            await asyncio.sleep(2.5)  # the validity runs out: not ready, lease shown invalid
            async with session.get(f"http://127.0.0.1:{port}/ready") as response:
                body = await response.json()
                assert response.status == 503 and "lease" in body["reason"], body
            async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                assert "proxy_cluster_lease_valid 0.0" in await response.text()
    finally:
        await asyncio.to_thread(replicas.stop)


@pytest.mark.docker
async def test_all_replicas_leaving_at_once_leave_no_container_running(tmp_path):
    """SIGTERM to every replica at the same moment: each marks itself leaving in etcd before it looks for a
    taker, so the last to mark hands nothing to a leaver; it claims what the others let go of and stops it."""
    if etcd_binary() is None:
        pytest.skip("etcd not installed")
    await ensure_image("docker")
    socket, proxy_id = default_docker_socket(), f"fa{uuid.uuid4().hex[:8]}"
    with Etcd(3) as etcd:
        replicas = await asyncio.to_thread(Replicas, config(socket, proxy_id, 60.0), etcd.endpoints, 3, 2.0,
                                           str(tmp_path))
        try:
            members = [Member(f"r{port}", "") for port in replicas.ports]
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
                for i, port in enumerate(replicas.ports):  # one key owned by each replica
                    key = next(k for k in (f"a{n}" for n in range(500))
                               if rendezvous(f"svc/{k}", members) == members[i])
                    async with session.get(f"http://127.0.0.1:{port}/k/{key}/v2/health/ready") as response:
                        assert response.status == 200
            assert len(await running_containers(socket, proxy_id)) == 3
            for i in range(3):
                replicas.kill(i, signal.SIGTERM)
            assert [await replicas.exited(i) for i in range(3)] == [0, 0, 0]
            assert await running_containers(socket, proxy_id) == []
        finally:
            await asyncio.to_thread(replicas.stop)
            await remove_containers(socket, proxy_id)
