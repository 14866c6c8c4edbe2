"""The crash-loop breaker: its rules alone, then through a Manager on the fake backend and virtual clock."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from backends.base import BackendError, BackendUnavailable, InstanceState
from proxy.config.containers import CrashLoopPolicy
from proxy.lifecycle.breaker import Breaker, BreakerState
from proxy.errors import BreakerOpen, StartFailed
from proxy.lifecycle.events import BreakerOpened, State
from proxy.observe.hooks import hook_event
from tests.unit.conftest import Clock

POLICY = CrashLoopPolicy(failures=3, window=60.0, backoff=5.0, max_backoff=30.0)
CLASS = {"crash_loop": {"failures": 3, "window": "60s", "backoff": "5s", "max_backoff": "30s"}}


def test_opens_after_failures_within_the_window_only() -> None:
    b = Breaker(POLICY)
    assert not b.failed(0.0) and not b.failed(30.0)
    assert not b.failed(61.0)  # the first one is out of the window: two within it
    assert b.failed(62.0) and b.state is BreakerState.OPEN
    assert b.wait(63.0) == pytest.approx(4.0)


def test_half_open_lets_one_trial_through_and_its_failure_doubles_the_backoff_up_to_the_cap() -> None:
    b = Breaker(POLICY)
    for t in (0.0, 1.0, 2.0):
        b.failed(t)
    backoffs = []
    now = 2.0
    for _ in range(5):
        now += b.wait(now)
        assert b.wait(now) == 0.0 and b.state is BreakerState.HALF_OPEN
        assert b.failed(now)  # the trial failed: open again
        backoffs.append(b.backoff)
    assert backoffs == [10.0, 20.0, 30.0, 30.0, 30.0]


def test_a_successful_trial_closes_it_and_the_next_loop_starts_from_the_first_backoff_later() -> None:
    b = Breaker(POLICY)
    for t in (0.0, 1.0, 2.0):
        b.failed(t)
    assert b.wait(7.0) == 0.0
    b.succeeded(7.0)
    assert b.state is BreakerState.CLOSED and not b.is_open and b.wait(8.0) == 0.0
    for t in (10.0, 11.0, 12.0):  # soon after: it reopens with twice the backoff
        b.failed(t)
    assert b.backoff == 10.0
    b.wait(22.0)
    b.succeeded(22.0)
    for t in (100.0, 101.0, 102.0):  # a window later: from the first backoff again
        b.failed(t)
    assert b.backoff == 5.0


def test_failures_zero_never_opens() -> None:
    b = Breaker(CrashLoopPolicy(failures=0, window=60.0, backoff=5.0, max_backoff=30.0))
    assert not any(b.failed(float(t)) for t in range(100))
    assert b.wait(100.0) == 0.0


async def test_a_start_that_keeps_failing_gets_failures_backend_starts_then_refusals_without_backend_calls(
        make_world: Any, clock: Clock) -> None:
    world = make_world(svc=CLASS)
    world.backend.start.raises(BackendError("container exited right after start (exit code 1)"))
    manager = world.manager()
    outcomes = []
    for _ in range(100):  # one after another: each would be a start of its own without the breaker
        try:
            await manager.ensure_running()
        except (StartFailed, BreakerOpen) as exc:
            outcomes.append(exc)
    assert world.backend.start.count == 3
    assert [type(e) for e in outcomes] == [StartFailed] * 3 + [BreakerOpen] * 97
    assert all(e.status == 503 and e.retry_after == pytest.approx(5.0) for e in outcomes[3:])
    assert manager.status()["breaker"] == {"state": "open", "failures": 0, "retry_in": 5.0, "backoff": 5.0}
    opened = [s.event for s in world.events.seen if isinstance(s.event, BreakerOpened)]
    assert len(opened) == 1 and opened[0].backoff == 5.0 and "exit code 1" in opened[0].reason
    assert hook_event(opened[0])["event"] == "error"  # type: ignore[index]

    # Retry-After counts down, then one trial goes to the backend; it fails: 10 s now, growing.
    await clock.advance(2.0)
    with pytest.raises(BreakerOpen) as later:
        await manager.ensure_running()
    assert later.value.retry_after == pytest.approx(3.0)
    await clock.advance(3.0)
    with pytest.raises(StartFailed):
        await manager.ensure_running()
    assert world.backend.start.count == 4
    with pytest.raises(BreakerOpen) as grown:
        await manager.ensure_running()
    assert grown.value.retry_after == pytest.approx(10.0)

    # Fixed: the next trial succeeds and the breaker closes.
    world.backend.start.reset_answer()
    await clock.advance(10.0)
    assert await manager.ensure_running() is not None
    assert manager.state is State.RUNNING and not manager.breaker.is_open
    assert world.backend.start.count == 5


async def test_concurrent_requests_share_the_half_open_trial(make_world: Any, clock: Clock) -> None:
    world = make_world(svc=CLASS)
    world.backend.start.raises(BackendError("boom"))
    manager = world.manager()
    for _ in range(3):
        with pytest.raises(StartFailed):
            await manager.ensure_running()
    await clock.advance(5.0)
    world.backend.start.hold()
    waiters = [asyncio.create_task(manager.ensure_running()) for _ in range(50)]
    await clock.settle()
    assert world.backend.start.count == 4  # one trial for all fifty
    world.backend.started()
    await clock.settle()
    assert all(t.done() and not t.exception() for t in waiters)
    assert manager.breaker.state is BreakerState.CLOSED


async def test_crashes_of_a_running_instance_count(make_world: Any, clock: Clock) -> None:
    world = make_world(svc=CLASS)
    manager = world.manager()
    for _ in range(3):
        await manager.ensure_running()
        world.backend.inspect.returns(InstanceState.EXITED)
        assert await manager.health.liveness() is False  # found dead: a crash
        world.backend.inspect.reset_answer()
        await clock.advance(1.0)
    assert manager.breaker.is_open
    with pytest.raises(BreakerOpen):
        await manager.ensure_running()
    assert world.backend.start.count == 3


async def test_a_cancelled_start_is_not_a_failure(make_world: Any, clock: Clock) -> None:
    world = make_world(svc={"crash_loop": {"failures": 1}})
    world.backend.start.hold()
    manager = world.manager()
    waiter = asyncio.create_task(manager.ensure_running())
    await clock.settle()
    world.backend.start.last.future.cancel()  # the start is cancelled (shutdown), it did not fail
    await clock.settle()
    assert (await asyncio.gather(waiter, return_exceptions=True))[0] is not None
    assert manager.state is State.FAILED and not manager.breaker.is_open


async def test_starts_that_fail_because_the_runtime_is_unreachable_do_not_open_it(
        make_world: Any, clock: Clock) -> None:
    """A daemon outage fails every start; once it is back the key starts at once, not after a backoff."""
    world = make_world(svc=CLASS)
    world.backend.start.raises(BackendUnavailable("cannot reach the container runtime"))
    manager = world.manager()
    for _ in range(10):
        with pytest.raises(StartFailed):
            await manager.ensure_running()
        await clock.advance(1.0)
    assert world.backend.start.count == 10 and manager.breaker.state is BreakerState.CLOSED
    world.backend.start.reset_answer()  # the runtime is back
    await manager.ensure_running()
    assert manager.state is State.RUNNING and world.backend.start.count == 11
