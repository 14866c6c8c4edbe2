"""Stops that fail are retried (a forgotten one leaves a container running forever), then reported."""

from __future__ import annotations

import asyncio

from backends.base import BackendError
from proxy.lifecycle.events import State, StopReason
from proxy.lifecycle.manager import STOP_RETRY_DELAYS


async def test_a_failed_stop_is_retried_until_it_succeeds(world, clock):
    m = world.manager("k")
    await m.ensure_running()
    instance = m.instance
    world.backend.stop.raises(BackendError("daemon unreachable"))
    stopping = asyncio.create_task(m.stop(StopReason.ADMIN))
    await clock.until(lambda: world.backend.stop.count == 1)
    assert m.state is State.STOPPING and "daemon unreachable" in m.last_error
    await clock.advance(STOP_RETRY_DELAYS[0])
    assert world.backend.stop.count == 2 and m.state is State.STOPPING
    world.backend.stop.reset_answer()  # the daemon is back
    await clock.advance(STOP_RETRY_DELAYS[1])
    await stopping
    assert world.backend.stop.count == 3 and world.backend.stop.args()[-1] == (instance,)
    assert m.state is State.STOPPED and world.capacity.active("svc") == 0


async def test_a_stop_that_keeps_failing_is_given_up_after_the_retries(world, clock):
    m = world.manager("k")
    await m.ensure_running()
    world.backend.stop.raises(BackendError("daemon unreachable"))
    stopping = asyncio.create_task(m.stop(StopReason.ADMIN))
    await clock.until(lambda: world.backend.stop.count == 1)
    await clock.advance(sum(STOP_RETRY_DELAYS))
    await stopping
    assert world.backend.stop.count == len(STOP_RETRY_DELAYS) + 1
    assert m.state is State.STOPPED and m.last_error.startswith("stop failed")
