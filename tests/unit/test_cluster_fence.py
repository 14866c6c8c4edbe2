"""The lease's local validity and the fence on every action on a key (proxy/cluster/store.py, owner.py, the
Manager's `Fence` seam), on the virtual clock: a freeze is the loop's time jumping ahead with nothing run."""

from __future__ import annotations

import asyncio

import pytest

from proxy.cluster.owner import Ownership
from proxy.cluster.store import Member, MemoryStore
from proxy.errors import Fenced
from proxy.lifecycle.events import State, StopReason
from tests.unit.test_manager_control import pausable

A, B = Member("a", "http://a"), Member("b", "http://b")
TTL = 2.0
RTT = 0.01  # the virtual round trip of a keepalive


def freeze(seconds: float) -> None:
    """The process stops (SIGSTOP) for `seconds`: the loop's clock jumps, no callback runs meanwhile."""
    loop = asyncio.get_running_loop()
    reciprocal = loop._LoopTimeEventLoop__resolution_reciprocal  # type: ignore[attr-defined]
    loop._LoopTimeEventLoop__now += round(seconds * reciprocal)  # type: ignore[attr-defined]


class LeasedStore(MemoryStore):
    """A MemoryStore whose lease lives like etcd's: renewed every ttl/3 by a keepalive that takes RTT, and
    lost (every claim under it gone) when no keepalive reached it for a ttl."""

    def __init__(self, me: Member, claims: dict[str, str]) -> None:
        super().__init__(me, TTL, shared=claims)
        self.expires = 0.0  # the server side's expiry
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.peers[self.me.id] = self.me
        now = asyncio.get_running_loop().time()
        self.expires = now + TTL
        self.renewed(now)
        self.task = asyncio.create_task(self._keep_alive())

    async def _keep_alive(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(TTL / 3)
            sent = loop.time()
            await asyncio.sleep(RTT)
            if loop.time() - RTT > self.expires:  # reached the server after the lease ran out
                for unit in [u for u, holder in self.claims.items() if holder == self.me.id]:
                    del self.claims[unit]
                self.void()
            self.expires = loop.time() + TTL
            self.renewed(sent)


@pytest.fixture
async def owned(make_world):
    """(ownership, manager of a running key it owns): sleep_after 5 s, a lease of 2 s renewed every 0.67 s."""
    made: list[LeasedStore] = []

    async def make(**klass: str) -> tuple[Ownership, object]:
        world = make_world(svc={"sleep_after": "5s", **klass})
        if "pause_after" in klass:
            pausable(world)
        store = LeasedStore(A, {})
        made.append(store)
        await store.start()
        own = Ownership(store, world.registry(), world.backend, world.config)
        assert await own.locate("svc", "k") is None
        manager = own.registry.get("k", "svc")
        await manager.ensure_running()
        return own, manager

    yield make
    for store in made:
        assert store.task is not None
        store.task.cancel()


async def test_validity_follows_the_send_time_of_the_last_renewal(clock):
    store = LeasedStore(A, {})
    await store.start()
    for _ in range(10):
        await clock.advance(1.0)
        assert store.valid()  # renewed every ttl/3
    store.task.cancel()  # type: ignore[union-attr]
    last = store.valid_until
    assert last <= clock.now + TTL - store.margin
    await clock.advance(last - clock.now - 0.001)
    assert store.valid()
    await clock.advance(0.002)
    assert not store.valid()  # no renewal: invalid at (last send + ttl - margin), nobody had to say so


async def test_a_freeze_longer_than_the_ttl_is_seen_before_the_idle_timer_acts(owned, clock):
    """The issue's frozen owner: resumed after 8 s, its idle timer (due during the freeze) fires before any
    keepalive could answer; it must see the lease invalid and leave the instance alone."""
    own, manager = await owned()
    backend = own.backend
    await clock.advance(1.0)
    seen: list[bool] = []
    original = own.holds

    def watched(m):  # what the fence answered when the idle timer asked
        seen.append(own.store.valid())
        return original(m)

    own.holds = watched  # type: ignore[method-assign]
    freeze(8.0)  # the idle timer (due at +5 s) and the keepalive timer are both due when the process runs again
    await clock.settle()
    assert seen and seen[0] is False  # the first ask, by the idle timer, already saw the lapse
    assert backend.stop.args() == []  # type: ignore[attr-defined]
    assert manager.state is State.RUNNING and not own.owns("svc", "k")  # passive: untouched, claim forgotten
    await clock.advance(2 * RTT)  # the keepalive's answer: the lease is gone
    assert own.registry.peek("k", "svc") is None  # let go of: the peer that adopted the container serves it
    await clock.advance(10)
    assert backend.stop.args() == []  # type: ignore[attr-defined]  # never, however long the wait
    assert own.store.valid()  # a new lease was taken meanwhile; a request claims the key again


async def test_a_manager_let_go_gives_back_its_slot_once_its_requests_end(owned, clock):
    """A handover (or a lost lease) leaves the instance running for its next owner; the manager let go of
    frees its class's capacity slot, but only once the request still in flight on it has ended."""
    own, manager = await owned(max_instances=1)
    capacity = own.registry.services.capacity
    instance = manager.instance
    manager.hold()  # a request in flight on the instance
    assert own.release() == 1 and own.registry.peek("k", "svc") is None
    await clock.settle()
    assert manager.state is State.RUNNING and capacity.active("svc") == 1 and not capacity.may_start("svc")
    manager.release()
    await clock.settle()
    assert manager.state is State.STOPPED and capacity.active("svc") == 0 and capacity.may_start("svc")
    await clock.advance(10)
    assert own.backend.stop.args() == []  # type: ignore[attr-defined]  # never stopped here
    again = own.registry.get("k", "svc")  # claimed again later: a new manager adopts the same instance
    again.adopt(instance)
    assert again.state is State.RUNNING and capacity.active("svc") == 1


async def test_a_lapse_under_a_lease_that_lived_on_resumes_the_same_manager(owned, clock):
    """etcd slow for longer than the validity but not the lease (its keepalives arrive, their answers do not):
    passive meanwhile, then the same manager carries on (nobody else can have owned the key)."""
    own, manager = await owned()
    store = own.store
    store.task.cancel()  # no answer comes back
    store.expires = float("inf")  # while etcd keeps the lease alive
    await clock.advance(6)  # the idle stop falls due after the validity ran out: nothing is stopped
    assert own.backend.stop.args() == [] and not own.owns("svc", "k")  # type: ignore[attr-defined]
    store.task = asyncio.create_task(store._keep_alive())  # answers again
    await clock.advance(1)
    assert await own.locate("svc", "k") is None  # a request claims it again, under the same lease
    assert own.registry.get("k", "svc") is manager and manager.state is State.RUNNING
    instance = manager.instance
    await clock.advance(6)
    assert own.backend.stop.args() == [(instance,)]  # type: ignore[attr-defined]  # idle again: its owner stops it


async def test_a_stop_the_store_does_not_confirm_leaves_the_instance_alone(owned, clock):
    own, manager = await owned()
    own.store.claims["svc/k"] = "b"  # another replica holds the claim now (our view is stale)
    await clock.advance(6)  # idle: the timer fires, the fence holds locally, the store says no
    assert own.backend.stop.args() == []  # type: ignore[attr-defined]
    assert manager.state is State.STOPPED and own.registry.peek("k", "svc") is None
    assert not own.owns("svc", "k")


async def test_a_confirmed_idle_stop_stops(owned, clock):
    own, manager = await owned()
    instance = manager.instance
    await clock.advance(6)
    assert own.backend.stop.args() == [(instance,)]  # type: ignore[attr-defined]


async def test_an_idle_pause_the_store_does_not_confirm_is_not_done(owned, clock):
    own, manager = await owned(pause_after="2s")
    own.store.claims["svc/k"] = "b"
    await clock.advance(3)
    assert own.backend.pause.args() == []  # type: ignore[attr-defined]
    assert own.registry.peek("k", "svc") is None


async def test_no_start_without_a_valid_lease(owned, clock):
    own, manager = await owned()
    await manager.stop(StopReason.ADMIN)
    own.store.task.cancel()  # type: ignore[attr-defined]
    await clock.advance(TTL)
    with pytest.raises(Fenced) as refused:
        await manager.ensure_running()
    assert refused.value.status == 503
    assert len(own.backend.start.args()) == 1  # type: ignore[attr-defined]  # only the first start
