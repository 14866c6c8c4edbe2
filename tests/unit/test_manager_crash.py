"""Crashes: after an upstream error the manager asks the backend whether the instance is still there."""

from __future__ import annotations

import asyncio

import pytest

from backends.base import BackendError, BackendUnavailable, InstanceState
from proxy.lifecycle.events import Happening, State, StopReason


async def running(world, key="k"):
    m = world.manager(key)
    await m.ensure_running()
    return m


@pytest.mark.parametrize("status", [InstanceState.MISSING, InstanceState.EXITED])
async def test_dead_instance_is_forgotten_as_crashed(world, clock, status):
    m = await running(world)
    instance = m.instance
    world.backend.inspect.returns(status)
    assert await m.health.check_alive() is False
    assert world.backend.inspect.args() == [(instance,)]
    assert m.state is State.STOPPED and m.instance is None and m.last_error == f"instance {status.value}"
    assert world.events.happenings("k") == [(Happening.STARTED, None), (Happening.CRASHED, StopReason.ERROR)]
    crashed = world.events.transitions("k")[-1]
    assert (crashed.old, crashed.new, crashed.reason, crashed.instance) == (State.RUNNING, State.STOPPED,
                                                                          "error", instance)
    assert world.pools.forgotten == [instance]
    assert world.capacity.active("svc") == 0
    assert world.backend.stop.count == 0  # nothing to stop: it is gone

    # Its idle timer is gone with it: no idle stop later.
    await clock.advance(600)
    assert world.backend.stop.count == 0 and len(world.events.transitions("k")) == 3

    # The next request starts a fresh instance.
    async with m.lease() as lease:
        assert lease.instance is not instance
    assert world.backend.start.count == 2 and m.state is State.RUNNING and world.capacity.active("svc") == 1


async def test_running_instance_stays(world, clock):
    m = await running(world)
    assert await m.health.check_alive() is True
    assert m.state is State.RUNNING and world.pools.forgotten == []
    assert world.events.happenings("k") == [(Happening.STARTED, None)]


@pytest.mark.parametrize("error", [BackendError("inspect failed"), BackendUnavailable("daemon down")])
async def test_backend_error_keeps_it_running(world, clock, error):
    m = await running(world)
    instance = m.instance
    world.backend.inspect.raises(error)
    assert await m.health.check_alive() is True
    assert m.state is State.RUNNING and m.instance is instance
    assert world.pools.forgotten == [] and world.capacity.active("svc") == 1
    assert world.events.happenings("k") == [(Happening.STARTED, None)]


async def test_check_alive_when_not_running_asks_nothing(world, clock):
    m = world.manager("k")
    assert await m.health.check_alive() is False
    assert world.backend.inspect.count == 0 and m.state is State.STOPPED


async def test_instance_replaced_during_inspect_is_left_alone(world, clock):
    m = await running(world)
    old = m.instance
    world.backend.inspect.hold()
    check = asyncio.create_task(m.health.check_alive())
    await clock.until(lambda: world.backend.inspect.count == 1)
    await m.stop(StopReason.ADMIN)
    await m.ensure_running()  # a new instance while the inspect of the old one was in flight
    new = m.instance
    world.backend.inspect.last.resolve(InstanceState.MISSING)
    await clock.settle()
    assert check.result() is False
    assert m.state is State.RUNNING and m.instance is new  # the new one is not declared dead
    assert (Happening.CRASHED, StopReason.ERROR) not in world.events.happenings("k")
    assert world.pools.forgotten == [old]


async def test_suspect_looks_again_after_0_0p2_0p5_1s(world, clock):
    m = await running(world)
    t0 = clock.now
    world.backend.inspect.returns(InstanceState.RUNNING, InstanceState.RUNNING, InstanceState.EXITED)
    m.health.suspect()
    m.health.suspect()  # one check at a time
    await clock.settle()
    assert world.backend.inspect.count == 1 and m.state is State.RUNNING
    await clock.advance(0.199)
    assert world.backend.inspect.count == 1
    await clock.advance(0.001)
    assert world.backend.inspect.count == 2 and m.state is State.RUNNING
    await clock.advance(0.5)
    assert world.backend.inspect.count == 3 and m.state is State.STOPPED
    assert world.events.at(Happening.CRASHED) == [t0 + 0.7]
    assert world.events.happenings("k")[-1] == (Happening.CRASHED, StopReason.ERROR)
    await clock.advance(10)
    assert world.backend.inspect.count == 3  # no look after it was found dead


async def test_suspect_of_a_live_instance_looks_four_times_then_gives_up(world, clock):
    m = await running(world)
    m.health.suspect()
    await clock.advance(1.699)
    assert world.backend.inspect.count == 3
    await clock.advance(0.001)
    assert world.backend.inspect.count == 4
    await clock.advance(10)
    assert world.backend.inspect.count == 4
    m.health.suspect()  # a finished check allows a new one
    await clock.settle()
    assert world.backend.inspect.count == 5 and m.state is State.RUNNING


async def test_a_gone_instance_whose_exit_the_runtime_cannot_explain_is_still_gone(world, clock):
    # podman answers "no such container" (a 500) while it cleans up after a stop from outside: the instance was
    # seen gone, so it is forgotten (the next request restarts it), not taken for a runtime that cannot be asked.
    m = await running(world)
    world.backend.inspect.returns(InstanceState.EXITED)

    async def unexplained(instance):
        raise BackendError("container x does not exist in database: no such container")

    world.backend.exit_reason = unexplained
    assert await m.health.liveness() is False
    assert m.state is State.STOPPED and m.last_error == "instance exited: exited"
