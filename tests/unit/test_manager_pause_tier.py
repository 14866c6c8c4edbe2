"""The pause tier (`pause_after`): an idle instance is frozen before it is stopped, on the virtual clock.

Idle time counts from the last activity for both: paused after `pause_after`, stopped after `sleep_after`.
"""

from __future__ import annotations

import asyncio

from proxy.lifecycle.events import Happening, State, StopReason
from tests.unit.test_manager_control import lease_task, pausable

TIER = {"pause_after": "10s", "sleep_after": "60s"}


async def test_an_idle_instance_is_paused_then_stopped(make_world, clock):
    world = pausable(make_world(svc=TIER))
    m = world.manager("k")
    await m.ensure_running()
    instance = m.instance
    await clock.advance(9.9)
    assert m.state is State.RUNNING and world.backend.pause.count == 0
    await clock.advance(0.2)
    assert m.state is State.PAUSED and world.backend.pause.args() == [(instance,)]
    assert world.capacity.active("svc") == 1
    await clock.advance(49.7)
    assert m.state is State.PAUSED
    await clock.advance(0.2)  # sleep_after counts from the last activity, not from the pause
    assert m.state is State.STOPPED and world.backend.stop.args() == [(instance,)]
    assert world.backend.resume.args() == [(instance,)]  # thawed, so that it can act on SIGTERM
    assert world.events.happenings("k")[-1] == (Happening.STOPPED, StopReason.IDLE)


async def test_a_request_in_flight_is_never_frozen(make_world, clock):
    world = pausable(make_world(svc=TIER))
    m = world.manager("k")
    await m.ensure_running()
    release = asyncio.Event()
    task = await lease_task(m, release)
    await clock.advance(30)
    assert m.state is State.RUNNING and world.backend.pause.count == 0
    release.set()
    await task
    await clock.advance(9.9)
    assert m.state is State.RUNNING
    await clock.advance(0.2)  # pause_after from the end of that request
    assert m.state is State.PAUSED


async def test_a_request_wakes_a_paused_key_and_it_pauses_again_when_idle(make_world, clock):
    world = pausable(make_world(svc=TIER))
    m = world.manager("k")
    await m.ensure_running()
    await clock.advance(11)
    assert m.state is State.PAUSED
    async with m.lease() as lease:
        assert lease.instance is m.instance and m.state is State.RUNNING
    assert world.backend.resume.count == 1 and world.backend.start.count == 1
    await clock.advance(9.9)
    assert m.state is State.RUNNING
    await clock.advance(0.2)
    assert m.state is State.PAUSED and world.backend.pause.count == 2


async def test_without_a_pausable_backend_pause_after_is_a_no_op(make_world, clock):
    world = make_world(svc=TIER)  # the plain fake backend cannot pause (like the stub)
    m = world.manager("k")
    await m.ensure_running()
    await clock.advance(59.9)
    assert m.state is State.RUNNING and m.pause_after == 0
    await clock.advance(0.2)
    assert m.state is State.STOPPED


async def test_a_key_sleep_after_shorter_than_pause_after_stops_without_pausing(make_world, clock):
    world = pausable(make_world(svc=TIER))
    m = world.manager("k")
    await m.ensure_running()
    m.set_sleep_after(5)
    await clock.advance(5.1)
    assert m.state is State.STOPPED and world.backend.pause.count == 0


async def test_a_failed_idle_pause_leaves_it_running_and_it_still_stops(make_world, clock):
    world = pausable(make_world(svc=TIER))
    world.backend.pause.raises(RuntimeError("cannot freeze"))
    m = world.manager("k")
    await m.ensure_running()
    await clock.advance(10.1)
    assert m.state is State.RUNNING and world.backend.pause.count == 1
    await clock.advance(50)
    assert m.state is State.STOPPED
