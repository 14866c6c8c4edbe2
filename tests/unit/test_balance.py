"""The lb policy (`least_loaded`): an idle ready member, else a cold one while capacity allows, else the least busy."""

from __future__ import annotations

import asyncio

import pytest

from backends.base import BackendError
from proxy.keys import member_key
from proxy.lifecycle.balance import least_loaded
from proxy.errors import StartFailed
from proxy.lifecycle.events import State, StopReason

YES = lambda: True  # noqa: E731 - capacity allows a start
NO = lambda: False  # noqa: E731 - the class is full


@pytest.fixture
def world(make_world):
    return make_world(svc={"max_instances": 100})


async def member(world, clock, key, state, in_flight=0):
    """A manager brought to `state` through real transitions, with `in_flight` requests held."""
    m = world.manager(key)
    if state in (State.RUNNING, State.STOPPING):
        await m.ensure_running()
        if state is State.STOPPING:
            world.backend.stop.hold()
            asyncio.create_task(m.stop(StopReason.ADMIN))
    elif state is State.STARTING:
        world.backend.start.hold()
        # Its outcome is not this test's: retrieved, so a start failed at teardown is not logged at some later
        # garbage collection (which, inside a compile, trips CPython 3.11's AST recursion check: SystemError).
        asyncio.create_task(m.ensure_running()).add_done_callback(lambda t: t.cancelled() or t.exception())
    elif state is State.FAILED:
        world.backend.start.raises(BackendError("no"))
        with pytest.raises(StartFailed):
            await m.ensure_running()
    await clock.settle()
    world.backend.start.reset_answer()
    world.backend.stop.reset_answer()
    for _ in range(in_flight):
        m.hold()
    assert m.state is state and m.in_flight == in_flight
    return m


async def test_member_keys():
    assert [member_key("lb", i) for i in range(3)] == ["lb#0", "lb#1", "lb#2"]


async def test_idle_ready_member_first(world, clock):
    busy = await member(world, clock, "a", State.RUNNING, in_flight=2)
    idle = await member(world, clock, "b", State.RUNNING)
    cold = await member(world, clock, "c", State.STOPPED)
    assert least_loaded([busy, idle, cold], YES) is idle
    assert least_loaded([cold, busy, idle], NO) is idle


async def test_first_idle_ready_member_wins_a_tie(world, clock):
    pool = [await member(world, clock, k, State.RUNNING) for k in "abc"]
    assert least_loaded(pool, YES) is pool[0]


async def test_cold_member_while_capacity_allows(world, clock):
    busy = await member(world, clock, "a", State.RUNNING, in_flight=1)
    stopped = await member(world, clock, "b", State.STOPPED)
    failed = await member(world, clock, "c", State.FAILED)
    assert least_loaded([busy, stopped, failed], YES) is stopped
    assert least_loaded([busy, failed, stopped], YES) is failed  # FAILED is cold too: the first cold one


async def test_all_cold_starts_the_first(world, clock):
    pool = [await member(world, clock, k, State.STOPPED) for k in "abc"]
    assert least_loaded(pool, YES) is pool[0]
    assert least_loaded(pool, NO) is pool[0]  # nothing live: least busy of all (then it gets a 503)


async def test_no_capacity_least_busy_live_member(world, clock):
    a = await member(world, clock, "a", State.RUNNING, in_flight=3)
    b = await member(world, clock, "b", State.RUNNING, in_flight=1)
    c = await member(world, clock, "c", State.STOPPED)
    assert least_loaded([a, b, c], NO) is b


async def test_no_cold_member_least_busy_prefers_running_on_a_tie(world, clock):
    running = await member(world, clock, "a", State.RUNNING, in_flight=1)
    starting = await member(world, clock, "b", State.STARTING, in_flight=1)
    assert least_loaded([starting, running], YES) is running
    starting.hold()
    running.hold()
    running.hold()
    assert least_loaded([starting, running], YES) is starting  # 2 waiting for the start vs 3 in flight


async def test_stopping_member_counts_as_live(world, clock):
    """Documents today's choice: a STOPPING member with nothing in flight beats a busy running one, so
    the request waits for the stop and a new start rather than sharing the running instance."""
    running = await member(world, clock, "a", State.RUNNING, in_flight=1)
    stopping = await member(world, clock, "b", State.STOPPING)
    assert least_loaded([running, stopping], NO) is stopping


async def test_registry_pick_lb_through_real_capacity(make_world, clock):
    world = make_world(svc={"max_instances": 2})
    registry = world.registry()
    first = registry.pick_lb("lb", "svc", 3)
    assert first.key == "lb#0" and first.state is State.STOPPED
    first.hold()
    await first.ensure_running()
    second = registry.pick_lb("lb", "svc", 3)  # lb#0 busy, capacity left: the next cold one
    assert second.key == "lb#1"
    second.hold()
    await second.ensure_running()
    second.hold()
    # Both busy, the class is full (2): the least busy running member, no third start.
    assert registry.pick_lb("lb", "svc", 3) is first
    assert world.backend.start.count == 2
    first.release()
    assert registry.pick_lb("lb", "svc", 3) is first
    assert [k for (_, k) in registry.managers] == ["lb#0", "lb#1", "lb#2"]
