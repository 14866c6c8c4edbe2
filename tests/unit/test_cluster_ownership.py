"""Key ownership rules (proxy/cluster/owner.py) on the in-memory store: two replicas share one claim table."""

from __future__ import annotations

import asyncio

import pytest

from backends.base import Instance
from proxy.cluster.owner import ClusterUnavailable, OwnerMoving, Ownership
from proxy.cluster.store import Member, MemoryStore, StoreUnavailable, rendezvous
from proxy.lifecycle.events import State
from tests.unit.test_manager_control import pausable

A, B, C = Member("a", "http://a"), Member("b", "http://b"), Member("c", "http://c")


def test_rendezvous_is_stable_and_moves_only_the_leavers_keys():
    keys = [f"svc/k{i}" for i in range(300)]
    before = {k: rendezvous(k, [A, B, C]) for k in keys}
    assert {m for m in before.values()} == {A, B, C}  # every member gets some keys
    assert before == {k: rendezvous(k, [C, A, B]) for k in keys}  # order does not matter
    after = {k: rendezvous(k, [A, C]) for k in keys}
    assert all(after[k] == before[k] for k in keys if before[k] != B)  # only B's keys move
    assert rendezvous("svc/x", []) is None


async def test_one_claim_per_key_between_two_stores():
    claims: dict[str, str] = {}
    peers: dict[str, Member] = {}
    a, b = MemoryStore(A, shared=claims, peers=peers), MemoryStore(B, shared=claims, peers=peers)
    await a.start()
    await b.start()
    assert await a.claim("svc/k") == "a"
    assert await b.claim("svc/k") == "a"  # already held: B learns the holder, it does not take it
    assert await b.owner("svc/k") == "a"
    await a.close()  # the lease ends: the claim goes with it
    assert await b.claim("svc/k") == "b"
    assert [m.id for m in await b.members()] == ["b"]


@pytest.fixture
def replicas(make_world):
    """Two replicas' ownership over one claim table, each with its own registry and fake backend."""
    claims: dict[str, str] = {}
    peers: dict[str, Member] = {}

    async def make() -> tuple[Ownership, Ownership]:
        made = []
        for me in (A, B):
            world = make_world(svc={})
            store = MemoryStore(me, shared=claims, peers=peers)
            await store.start()
            made.append(Ownership(store, world.registry(), world.backend, world.config))
        return made[0], made[1]

    return make


def preferred(member: Member, others: list[Member]) -> str:
    """A key whose rendezvous choice among `others` is `member`."""
    return next(k for i in range(1000) if rendezvous(f"svc/{(k := f'k{i}')}", others) == member)


async def test_a_free_key_is_claimed_by_its_rendezvous_choice_and_forwarded_there(replicas):
    a, b = await replicas()
    key = preferred(B, [A, B])
    assert await a.locate("svc", key) == B  # the hint: B claims it when the request arrives
    assert await a.store.owner(f"svc/{key}") is None
    assert await b.locate("svc", key, forwarded=True) is None  # served on B, now claimed there
    assert b.owns("svc", key) and not a.owns("svc", key)
    assert await a.locate("svc", key) == B  # held: forwarded to the holder


async def test_a_forwarded_request_is_never_forwarded_again(replicas):
    a, b = await replicas()
    key = preferred(A, [A, B])
    assert await a.locate("svc", key) is None  # A claims its own choice
    with pytest.raises(OwnerMoving):
        await b.locate("svc", key, forwarded=True)  # B holds no claim: refuse rather than loop


async def test_the_new_owner_adopts_the_running_container_only_for_the_key_it_claims(replicas):
    a, b = await replicas()
    key = preferred(B, [A, B])
    running = Instance(key, "svc", "127.0.0.1", 5001, "id-1")
    other = Instance("someone-else", "svc", "127.0.0.1", 5002, "id-2")
    b.backend.listed = [running, other]  # type: ignore[attr-defined]
    assert b.registry.adopt([running, other]) == 0  # nothing owned yet: the reconciler adopts nothing
    assert await b.locate("svc", key, forwarded=True) is None
    assert b.registry.get(key, "svc").state is State.RUNNING
    assert b.registry.peek("someone-else", "svc") is None
    assert b.backend.start.args() == []  # type: ignore[attr-defined]  # adopted, never started


async def test_schedules_run_on_the_owner_only(replicas):
    a, b = await replicas()
    key = preferred(A, [A, B])
    assert [await a.runs_here("svc", key), await b.runs_here("svc", key)] == [True, False]


async def test_store_away_refuses_unknown_keys_but_keeps_owned_ones(replicas):
    a, _ = await replicas()
    key = preferred(A, [A, B])
    assert await a.locate("svc", key) is None

    async def away(unit: str) -> str | None:
        raise StoreUnavailable("etcd down")

    a.store.owner = away  # type: ignore[method-assign]
    assert await a.locate("svc", key) is None  # owned and the lease still counts
    with pytest.raises(ClusterUnavailable) as refused:
        await a.locate("svc", "never-seen")
    assert refused.value.status == 503 and refused.value.retry_after == 1.0
    a.store.valid_until = 0.0  # the lease could have expired meanwhile
    assert not a.owns("svc", key)
    with pytest.raises(ClusterUnavailable):
        await a.locate("svc", key)


async def test_a_void_lease_lets_go_of_the_keys_without_stopping_their_instances(replicas):
    a, _ = await replicas()
    key = preferred(A, [A, B])
    assert await a.locate("svc", key) is None
    manager = a.registry.get(key, "svc")
    await manager.ensure_running()
    a.store.void()
    assert not a.owns("svc", key) and a.registry.peek(key, "svc") is None
    assert manager.state is State.RUNNING and manager.sleep_after == 0  # never idle-stopped from here
    assert a.backend.stop.args() == []  # type: ignore[attr-defined]


async def test_the_sweep_claims_orphans_it_is_the_choice_for(replicas):
    a, _ = await replicas()
    mine, theirs = preferred(A, [A, B]), preferred(B, [A, B])
    a.backend.listed = [Instance(mine, "svc", "127.0.0.1", 5001, "id-1"),  # type: ignore[attr-defined]
                        Instance(theirs, "svc", "127.0.0.1", 5002, "id-2")]
    assert await a.sweep() == 1
    assert a.owns("svc", mine) and a.registry.get(mine, "svc").state is State.RUNNING  # adopted: its idle timer runs
    assert not a.owns("svc", theirs) and a.registry.peek(theirs, "svc") is None  # B's sweep takes that one
    assert await a.sweep() == 0


async def test_the_sweep_adopts_a_container_started_after_the_last_claims_listing(replicas):
    """A claim's listing serves the claims of the next second; the sweep lists anew and adopts what that found.
    (It once claimed from its own listing but adopted from the cached one: a container a leaving peer had
    started since was claimed, never adopted, and ran on with no idle timer and nobody to stop it.)"""
    a, _ = await replicas()
    first, later = [k for k in (f"k{i}" for i in range(200)) if rendezvous(f"svc/{k}", [A, B]) == A][:2]
    assert await a.locate("svc", first) is None  # a request's claim: the runtime listed (nothing running)
    a.backend.listed = [Instance(later, "svc", "127.0.0.1", 5001, "id-1")]  # type: ignore[attr-defined]
    assert await a.sweep() == 1
    assert a.owns("svc", later) and a.registry.get(later, "svc").state is State.RUNNING


async def test_a_handover_lets_go_of_running_keys_and_keeps_a_paused_one_to_stop(make_world, clock):
    """SIGTERM with live peers: running keys are let go of, not stopped (the next owner adopts them); a paused
    instance is not listed for adoption, so its manager stays and the shutdown stops it."""
    world = pausable(make_world(svc={"pause_after": "10s", "sleep_after": "60s"}))
    store = MemoryStore(A)
    await store.start()
    own = Ownership(store, world.registry(), world.backend, world.config)
    for key in ("k-run", "k-nap"):
        assert await own.locate("svc", key) is None
    nap = own.registry.get("k-nap", "svc")
    await nap.ensure_running()
    await clock.advance(11)
    run = own.registry.get("k-run", "svc")
    await run.ensure_running()
    assert (nap.state, run.state) == (State.PAUSED, State.RUNNING)
    assert own.release() == 2
    assert own.registry.peek("k-run", "svc") is None and run.state is State.RUNNING and run.sleep_after == 0
    assert own.registry.peek("k-nap", "svc") is nap
    assert not own.owns("svc", "k-run") and world.backend.stop.args() == []


async def test_a_burst_of_claims_lists_the_runtime_once(replicas):
    a, _ = await replicas()
    keys = [k for k in (f"k{i}" for i in range(200)) if rendezvous(f"svc/{k}", [A, B]) == A][:20]
    calls = 0
    listed = a.backend.list_instances

    async def counted():
        nonlocal calls
        calls += 1
        return await listed()

    a.backend.list_instances = counted  # type: ignore[method-assign]
    a.backend.listed = [Instance(keys[-1], "svc", "127.0.0.1", 5001, "id-1")]  # type: ignore[attr-defined]
    assert await asyncio.gather(*(a.locate("svc", k) for k in keys)) == [None] * len(keys)
    assert calls == 1
    assert a.registry.get(keys[-1], "svc").state is State.RUNNING  # what that one listing showed was adopted
