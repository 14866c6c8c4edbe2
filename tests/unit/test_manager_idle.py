"""Idle sleep: the instance stops exactly `sleep_after` after the last activity, never while in use."""

from __future__ import annotations

import asyncio

import pytest

from proxy.errors import NotWarm
from proxy.lifecycle.events import Happening, State, StopReason


async def running(world, key="k"):
    m = world.manager(key)
    await m.ensure_running()
    assert m.state is State.RUNNING
    return m


async def test_stops_exactly_sleep_after_after_start(world, clock):
    t0 = clock.now
    m = await running(world)
    instance = m.instance
    await clock.advance(59.999)
    assert m.state is State.RUNNING and world.backend.stop.count == 0
    await clock.advance(0.001)
    assert m.state is State.STOPPED and m.instance is None
    assert world.backend.stop.args() == [(instance,)]
    assert world.events.happenings("k") == [(Happening.STARTED, None), (Happening.STOPPED, StopReason.IDLE)]
    assert world.events.at(Happening.STOPPED) == [t0 + 60]
    stopped = world.events.transitions("k")[-1]
    assert stopped.reason == "idle" and stopped.instance is instance
    assert world.pools.forgotten == [instance] and world.capacity.active("svc") == 0


async def test_release_before_the_deadline_rearms_the_timer(world, clock):
    t0 = clock.now
    m = await running(world)  # activity at t0: deadline t0+60

    async def request_at(t):
        await clock.advance_to(t)
        async with m.lease() as lease:
            assert lease.cold_wait is None
        assert m.last_activity == t

    await request_at(t0 + 20)  # deadline -> t0+80
    await request_at(t0 + 50)  # deadline -> t0+110
    expected = {
        t0 + 59.999: State.RUNNING,
        t0 + 60: State.RUNNING,  # the first timer fires and re-arms for t0+110
        t0 + 80: State.RUNNING,
        t0 + 109.99: State.RUNNING,
        t0 + 109.999: State.RUNNING,
        t0 + 110: State.STOPPED,
        t0 + 500: State.STOPPED,
    }
    for when, state in expected.items():
        await clock.advance_to(when)
        assert m.state is state, f"at t0+{when - t0:g}"
    assert world.events.at(Happening.STOPPED) == [t0 + 110]
    assert world.backend.stop.count == 1 and world.backend.start.count == 1


async def test_touch_renews_activity_like_a_finished_request(world, clock):
    t0 = clock.now
    m = await running(world)
    await clock.advance(30)
    m.touch()  # a WebSocket message, a keepalive tick
    await clock.advance(59.999)
    assert m.state is State.RUNNING
    await clock.advance(0.001)
    assert m.state is State.STOPPED and world.events.at(Happening.STOPPED) == [t0 + 90]


async def test_in_flight_lease_keeps_it_running_past_sleep_after(world, clock):
    t0 = clock.now
    m = await running(world)
    done = asyncio.Event()

    async def long_request():
        async with m.lease():
            await done.wait()

    task = asyncio.create_task(long_request())
    await clock.settle()
    assert m.in_flight == 1
    await clock.advance(200)  # more than three times sleep_after
    assert m.state is State.RUNNING and world.backend.stop.count == 0
    done.set()
    await clock.settle()
    assert task.done() and m.in_flight == 0 and m.last_activity == t0 + 200
    await clock.advance(59.999)
    assert m.state is State.RUNNING
    await clock.advance(0.001)
    assert m.state is State.STOPPED and world.events.at(Happening.STOPPED) == [t0 + 260]


async def test_two_overlapping_leases_the_last_release_counts(world, clock):
    t0 = clock.now
    m = await running(world)
    m.hold()
    m.hold()
    await clock.advance(10)
    m.release()
    await clock.advance(70)
    assert m.state is State.RUNNING  # one still in flight at t0+70
    m.release()
    await clock.advance(59.999)
    assert m.state is State.RUNNING
    await clock.advance(0.001)
    assert m.state is State.STOPPED and world.events.at(Happening.STOPPED) == [t0 + 140]


async def test_sleep_after_zero_never_stops(make_world, clock):
    world = make_world(svc={"sleep_after": 0})
    m = await running(world)
    async with m.lease():
        pass
    await clock.advance(30 * 24 * 3600)
    assert m.state is State.RUNNING and world.backend.stop.count == 0
    assert world.events.happenings("k") == [(Happening.STARTED, None)]


async def test_a_class_that_never_idles_is_not_asked_again_until_it_or_the_key_changes(make_world, clock):
    # No sleep_after and no pause tier: a request's end does not compute a deadline each time. A key's own
    # sleep_after, or a new class (a reload's policy change, a rollout), counts from the next activity as always.
    from dataclasses import replace
    world = make_world(svc={"sleep_after": 0})
    m = await running(world)
    async with m.lease():
        pass
    assert m.idle._handle is None
    m.set_sleep_after(30)  # armed at once, counted from the last activity
    t0 = m.last_activity
    async with m.lease():  # in flight when the timer fires: the release arms it again
        await clock.advance_to(t0 + 40)
    await clock.advance_to(t0 + 69.999)
    assert m.state is State.RUNNING
    await clock.advance_to(t0 + 70)
    assert m.state is State.STOPPED and world.events.at(Happening.STOPPED) == [t0 + 70]
    m.set_sleep_after(None)
    m = await running(world, "k2")
    async with m.lease():
        pass
    m.klass = replace(m.klass, sleep_after=20.0)  # as proxy/reload.py swaps a changed class in
    async with m.lease():
        pass
    t1 = m.last_activity
    await clock.advance_to(t1 + 19.999)
    assert m.state is State.RUNNING
    await clock.advance_to(t1 + 20)
    assert m.state is State.STOPPED


async def test_idle_stop_then_next_request_starts_again(world, clock):
    m = await running(world)
    first = m.instance
    await clock.advance(60)
    assert m.state is State.STOPPED
    async with m.lease() as lease:
        assert lease.instance is not first and lease.cold_wait == 0.0
    assert world.backend.start.count == 2 and m.start_count == 2


async def test_warm_lease_never_starts(world, clock):
    m = world.manager("k")
    with pytest.raises(NotWarm):
        async with m.lease(start=False):
            pass
    assert m.in_flight == 0 and world.backend.start.count == 0 and m.state is State.STOPPED
    await m.ensure_running()
    async with m.lease(start=False) as lease:
        assert lease.instance is m.instance and lease.cold_wait is None


async def test_slow_idle_stop_stays_stopping_until_the_backend_answers(world, clock):
    m = await running(world)
    world.backend.stop.hold()
    await clock.advance(60)
    assert m.state is State.STOPPING
    with pytest.raises(NotWarm):  # a warm-only route does not wait for it
        async with m.lease(start=False):
            pass
    await clock.advance(1000)
    assert m.state is State.STOPPING  # the manager imposes no stop deadline of its own
    world.backend.stop.last.resolve()
    await clock.settle()
    assert m.state is State.STOPPED
