"""max_instances: claimed when a start begins (or on adoption), released when the instance is gone; last,
capacity_wait through the real proxy (stub backend): at max_instances, starts wait in arrival order for a free
slot instead of a 503."""

from __future__ import annotations

import asyncio

import pytest

from backends.base import BackendError, InstanceState
from proxy.lifecycle.capacity import Capacity
from proxy.errors import CapacityExceeded, StartFailed
from proxy.lifecycle.events import ACTIVE, Happening, State, StopReason
from tests.unit.conftest import REAL_CLOCK


@pytest.fixture
def world(make_world):
    return make_world(svc={"max_instances": 2}, other={"max_instances": 1})


async def test_full_class_refuses_without_calling_the_backend(world, clock):
    a, b, c = (world.manager(k) for k in "abc")
    await a.ensure_running()
    await b.ensure_running()
    assert world.capacity.active("svc") == 2 and not world.capacity.may_start("svc")

    with pytest.raises(CapacityExceeded) as info:
        await c.ensure_running()
    assert info.value.status == 503 and info.value.retry_after == 5.0
    assert "max_instances=2" in info.value.reason
    assert world.backend.start.count == 2  # no backend call for c
    assert c.state is State.STOPPED and world.events.transitions("c") == []

    with pytest.raises(CapacityExceeded):  # a lease too, and it leaks no in-flight count
        async with c.lease():
            pass
    assert c.in_flight == 0 and world.backend.start.count == 2

    # Another class has its own limit.
    await world.manager("x", "other").ensure_running()
    assert world.capacity.active("other") == 1 and world.capacity.active("svc") == 2


async def test_a_start_in_progress_counts(world, clock):
    world.backend.start.hold()
    tasks = [asyncio.create_task(world.manager(k).ensure_running()) for k in "ab"]
    await clock.until(lambda: world.backend.start.count == 2)
    assert world.capacity.active("svc") == 2
    with pytest.raises(CapacityExceeded):
        await world.manager("c").ensure_running()
    for call in world.backend.start.pending:
        world.backend.started(call)
    await asyncio.gather(*tasks)
    assert world.capacity.active("svc") == 2


async def test_released_on_stop(world, clock):
    a, b, c = (world.manager(k) for k in "abc")
    await a.ensure_running()
    await b.ensure_running()
    world.backend.stop.hold()
    stopping = asyncio.create_task(a.stop(StopReason.ADMIN))
    await clock.until(lambda: world.backend.stop.count == 1)
    assert a.state is State.STOPPING and world.capacity.active("svc") == 2  # still there while stopping
    with pytest.raises(CapacityExceeded):
        await c.ensure_running()
    world.backend.stop.last.resolve()
    await stopping
    assert world.capacity.active("svc") == 1
    await c.ensure_running()
    assert c.state is State.RUNNING and world.capacity.active("svc") == 2


async def test_released_on_idle_stop(world, clock):
    a = world.manager("a")
    await a.ensure_running()
    await clock.advance(60)
    assert a.state is State.STOPPED and world.capacity.active("svc") == 0


async def test_released_on_failure_and_crash(world, clock):
    a, b = world.manager("a"), world.manager("b")
    world.backend.start.raises(BackendError("no"))
    with pytest.raises(StartFailed):
        await a.ensure_running()
    assert world.capacity.active("svc") == 0
    world.backend.start.reset_answer()
    await a.ensure_running()
    await b.ensure_running()
    world.backend.inspect.returns(InstanceState.EXITED)
    assert await a.health.check_alive() is False
    assert world.capacity.active("svc") == 1
    await world.manager("c").ensure_running()  # the crashed one's slot is free again
    assert world.capacity.active("svc") == 2


async def test_adoption_counts_and_emits_adopted(world, clock):
    t0 = clock.now
    a = world.manager("a")
    instance = world.backend.new_instance("a", "svc")
    a.adopt(instance)
    assert a.state is State.RUNNING and a.instance is instance and a.start_count == 0
    assert world.backend.start.count == 0 and world.capacity.active("svc") == 1
    adopted = world.events.transitions("a")[-1]
    assert (adopted.old, adopted.new, adopted.happening, adopted.reason, adopted.instance) == (
        State.STOPPED, State.RUNNING, Happening.ADOPTED, "adopted", instance)
    assert world.events.at(Happening.ADOPTED) == [t0]

    b = world.manager("b")
    other = world.backend.new_instance("b", "svc")
    b.adopt(other)
    assert world.capacity.active("svc") == 2
    with pytest.raises(CapacityExceeded):
        await world.manager("c").ensure_running()

    # An adopted instance is used as is, and idles out like a started one.
    async with a.lease() as lease:
        assert lease.instance is instance and lease.cold_wait is None
    await clock.advance(60)
    assert a.state is State.STOPPED and b.state is State.STOPPED
    assert sorted(world.backend.stop.args(), key=lambda a: a[0].id) == [(instance,), (other,)]
    assert world.events.happenings("a") == [(Happening.ADOPTED, None), (Happening.STOPPED, StopReason.IDLE)]
    assert world.capacity.active("svc") == 0


def test_capacity_counts():
    cap = Capacity({"svc": 2})
    assert cap.limit("svc") == 2 and cap.active("svc") == 0 and cap.may_start("svc")
    cap.claim("svc")
    cap.claim("svc")
    assert not cap.may_start("svc")
    cap.release("svc")
    assert cap.may_start("svc") and cap.active("svc") == 1


# ------------------------------------------------------------------ capacity_wait: a FIFO queue for a slot


@pytest.fixture
def queued(make_world):
    """svc: 2 slots, a start waits up to 5 s for one, at most 3 wait; `world.manager(key)` is one per key."""
    world = make_world(svc={"max_instances": 2, "capacity_wait": "5s", "capacity_queue": 3})
    managers = {}
    make = world.manager
    world.manager = lambda key="k", container="svc": managers.setdefault((key, container), make(key, container))
    return world


async def fill(world, *keys):
    for key in keys:
        await world.manager(key).ensure_running()


async def test_a_waiter_gets_the_slot_when_an_instance_stops(queued, clock):
    world = queued
    await fill(world, "a", "b")
    c = world.manager("c")
    waiting = asyncio.create_task(c.ensure_running())
    await clock.advance(2)
    assert not waiting.done() and c.state is State.STOPPED and world.capacity.waiting("svc") == 1
    assert world.backend.start.count == 2 and world.events.transitions("c") == []

    await world.manager("a").stop(StopReason.ADMIN)
    await clock.settle()
    assert waiting.done() and waiting.result() == pytest.approx(2.0)  # the wait counts as cold wait
    assert c.state is State.RUNNING and world.backend.start.count == 3
    assert world.capacity.active("svc") == 2 and world.capacity.waiting("svc") == 0
    assert world.events.path("c") == [State.STARTING, State.RUNNING]


async def test_waiters_are_served_in_arrival_order_across_keys(queued, clock):
    world = queued
    await fill(world, "a", "b")
    order = []

    async def want(key):
        await world.manager(key).ensure_running()
        order.append(key)

    waiters = []
    for key in "cde":
        waiters.append(asyncio.create_task(want(key)))
        await clock.advance(0.1)
    assert world.capacity.waiting("svc") == 3

    world.backend.start.hold()
    await world.manager("a").stop(StopReason.ADMIN)
    # A newcomer arriving as the slot frees cannot overtake: the slot went to c, f queues behind e.
    late = asyncio.create_task(want("f"))
    await clock.settle()
    assert [call.args[0] for call in world.backend.start.pending] == ["c"]
    assert world.capacity.waiting("svc") == 3 and not world.capacity.may_start("svc")
    world.backend.started()
    await clock.settle()
    assert order == ["c"]

    await world.manager("b").stop(StopReason.ADMIN)
    await clock.settle()
    world.backend.started()
    await clock.settle()
    await world.manager("c").stop(StopReason.ADMIN)
    await clock.settle()
    world.backend.started()
    await clock.settle()
    assert order == ["c", "d", "e"] and all(w.done() for w in waiters)
    await world.manager("d").stop(StopReason.ADMIN)
    await clock.settle()
    world.backend.started()
    await clock.settle()
    assert order == ["c", "d", "e", "f"] and late.done()
    assert world.capacity.active("svc") == 2 and world.capacity.waiting("svc") == 0


async def test_a_waiter_that_times_out_gets_503_and_leaks_no_slot(queued, clock):
    world = queued
    await fill(world, "a", "b")
    c = world.manager("c")
    t0 = clock.now
    waiting = asyncio.create_task(c.ensure_running())
    await clock.advance(4.9)
    assert not waiting.done()
    await clock.advance(0.2)
    assert waiting.done()
    with pytest.raises(CapacityExceeded) as info:
        waiting.result()
    assert info.value.status == 503 and info.value.retry_after == 5.0
    assert "capacity_wait=5s" in info.value.reason and clock.now - t0 < 5.2
    assert c.state is State.STOPPED and world.events.transitions("c") == []
    assert world.capacity.waiting("svc") == 0 and world.capacity.active("svc") == 2

    # The slot freed later is not held for the one that gave up.
    await world.manager("a").stop(StopReason.ADMIN)
    assert world.capacity.may_start("svc") and world.capacity.active("svc") == 1
    await world.manager("d").ensure_running()
    assert world.capacity.active("svc") == 2 and world.backend.start.count == 3


async def test_a_cancelled_waiter_is_skipped(queued, clock):
    world = queued
    await fill(world, "a", "b")
    c_wait = asyncio.create_task(world.manager("c").ensure_running())
    await clock.advance(0.1)
    d_wait = asyncio.create_task(world.manager("d").ensure_running())
    await clock.advance(0.1)
    # c's request goes away; its shared wait is then its own task: cancel that (no one else wants it).
    c_task = world.manager("c")._start_task
    c_task.cancel()
    c_wait.cancel()
    await clock.settle()
    assert world.capacity.waiting("svc") == 1
    await world.manager("a").stop(StopReason.ADMIN)
    await clock.settle()
    assert d_wait.done() and world.manager("d").state is State.RUNNING
    assert world.capacity.active("svc") == 2 and world.capacity.waiting("svc") == 0


async def test_the_queue_is_capped(queued, clock):
    world = queued
    await fill(world, "a", "b")
    waiters = [asyncio.create_task(world.manager(k).ensure_running()) for k in "cde"]
    await clock.settle()
    assert world.capacity.waiting("svc") == 3
    with pytest.raises(CapacityExceeded) as info:  # the fourth gets 503 at once
        await world.manager("f").ensure_running()
    assert "capacity_queue=3" in info.value.reason and world.manager("f").state is State.STOPPED
    for key in "ab":
        await world.manager(key).stop(StopReason.ADMIN)
    await clock.settle()
    assert [w.done() for w in waiters] == [True, True, False]
    await clock.advance(5)
    with pytest.raises(CapacityExceeded):
        waiters[2].result()
    assert world.capacity.active("svc") == 2 and world.capacity.waiting("svc") == 0


async def test_same_key_requests_share_one_wait_and_one_start(queued, clock):
    world = queued
    await fill(world, "a", "b")
    c = world.manager("c")
    requests = [asyncio.create_task(c.ensure_running()) for _ in range(5)]
    await clock.advance(1)
    assert world.capacity.waiting("svc") == 1  # one place in the queue for the key, not five
    world.backend.start.hold()
    await world.manager("a").stop(StopReason.ADMIN)
    await clock.settle()
    assert c.state is State.STARTING and world.backend.start.count == 3
    late = asyncio.create_task(c.ensure_running())  # arrives while it starts: joins the start
    await clock.settle()
    world.backend.started()
    await clock.settle()
    assert all(t.done() and t.exception() is None for t in [*requests, late])
    assert world.backend.start.count == 3 and c.start_count == 1 and world.capacity.active("svc") == 2


async def test_same_key_requests_share_the_timeout(queued, clock):
    world = queued
    await fill(world, "a", "b")
    c = world.manager("c")
    requests = [asyncio.create_task(c.ensure_running()) for _ in range(3)]
    await clock.advance(5.1)
    for task in requests:
        with pytest.raises(CapacityExceeded):
            task.result()
    assert world.capacity.waiting("svc") == 0 and world.backend.start.count == 2


async def test_start_timeout_counts_from_the_start_not_the_wait(queued, clock):
    world = queued
    await fill(world, "a", "b")
    c = world.manager("c")
    waiting = asyncio.create_task(c.ensure_running())
    await clock.advance(4)  # most of capacity_wait
    world.backend.start.hold()
    await world.manager("a").stop(StopReason.ADMIN)
    await clock.advance(9)  # start_timeout is 10 s: not yet
    assert not waiting.done() and c.state is State.STARTING
    world.backend.started()
    await clock.settle()
    assert waiting.result() == pytest.approx(13.0) and c.state is State.RUNNING


async def test_a_failed_start_after_the_wait_is_reported_to_every_waiter(queued, clock):
    world = queued
    await fill(world, "a", "b")
    c = world.manager("c")
    requests = [asyncio.create_task(c.ensure_running()) for _ in range(3)]
    await clock.advance(1)
    world.backend.start.raises(BackendError("no"))
    await world.manager("a").stop(StopReason.ADMIN)
    await clock.settle()
    for task in requests:
        with pytest.raises(StartFailed):
            task.result()
    assert world.backend.start.count == 3 and c.state is State.FAILED and world.capacity.active("svc") == 1


async def test_capacity_wait_0_answers_503_at_once(world, clock):
    assert world.klass().capacity_wait == 0
    await fill(world, "a", "b")
    t0 = clock.now
    with pytest.raises(CapacityExceeded) as info:
        await world.manager("c").ensure_running()
    assert clock.now == t0 and world.capacity.waiting("svc") == 0
    assert info.value.reason == "container class svc is at max_instances=2"


async def test_capacity_wait_for_slot_directly(clock):
    cap = Capacity({"svc": 1})
    assert await cap.wait_for_slot("svc", 0)  # free: at once
    cap.claim("svc")
    assert not await cap.wait_for_slot("svc", 0)  # full, no wait
    assert not await cap.wait_for_slot("svc", 5, max_queue=0)  # full, no room in the queue
    first = asyncio.create_task(cap.wait_for_slot("svc", 5))
    second = asyncio.create_task(cap.wait_for_slot("svc", 5))
    await clock.settle()
    assert cap.waiting("svc") == 2
    cap.release("svc")
    assert not cap.may_start("svc")  # reserved for `first`
    await clock.settle()
    assert first.result() is True and not second.done()
    cap.unused("svc")  # first did not claim after all: passed on to second
    await clock.settle()
    assert second.result() is True and cap.may_start("svc")
    cap.claim("svc")
    assert cap.active("svc") == 1 and not cap.may_start("svc")


# ---------------------------------------- capacity_wait through the proxy (stub backend, real sockets, real clock)


@pytest.fixture
def backend_kind() -> str:
    return "stub"


@REAL_CLOCK
async def test_six_keys_share_two_slots(make_proxy):
    h = await make_proxy(svc={"max_instances": 2, "capacity_wait": "5s", "sleep_after": "200ms"})
    keys = [f"q{i}" for i in range(6)]
    most_active = 0
    sampling = True

    async def sample() -> None:
        nonlocal most_active
        while sampling:
            live = sum(m.state in ACTIVE for m in h.proxy.registry)
            most_active = max(most_active, live, h.proxy.capacity.active("svc"))
            await asyncio.sleep(0.005)

    async def one(key: str) -> tuple[int, str | None]:
        resp = await h.client.get(f"/k/{key}/debug/sleep?seconds=0.1")
        await resp.read()
        return resp.status, resp.headers.get("Retry-After")

    sampler = asyncio.create_task(sample())
    try:
        results = await asyncio.gather(*(one(k) for k in keys))
    finally:
        sampling = False
        await sampler

    assert results == [(200, None)] * 6
    assert 1 <= most_active <= 2
    assert sum(h.manager(k).start_count for k in keys) == 6
    assert await h.metric("proxy_container_class_starts_total", container_class="svc") == 6
    assert h.proxy.capacity.waiting("svc") == 0 and h.proxy.capacity.active("svc") <= 2


@REAL_CLOCK
async def test_capacity_wait_0_still_refuses_at_once(make_proxy):
    h = await make_proxy(svc={"max_instances": 1})
    first = await h.client.get("/k/a/debug/status?code=200")
    assert first.status == 200
    resp = await h.client.get("/k/b/debug/status?code=200")
    body = await resp.json()
    assert resp.status == 503 and body["error"] == "capacity exceeded"
    assert 59 <= int(resp.headers["Retry-After"]) <= 62  # a stops after sleep_after (60 s) idle, then b starts
