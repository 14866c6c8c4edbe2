"""Starting: single flight, failures and retries, start_timeout, stop during start, start during stop."""

from __future__ import annotations

import asyncio

import pytest

from backends.base import BackendError, BackendUnavailable
from proxy.errors import StartFailed, StartTimeout
from proxy.lifecycle.events import Happening, State, StopReason
from tests.unit.conftest import gather_outcomes

N = 100


async def test_concurrent_ensure_running_makes_one_start(world, clock):
    world.backend.start.hold()
    world.prober.wait_ready.hold()
    m = world.manager("k")
    t0 = clock.now
    tasks = [asyncio.create_task(m.ensure_running()) for _ in range(N)]
    await clock.until(lambda: world.backend.start.count == 1)
    await clock.settle()
    assert world.backend.start.count == 1
    assert world.backend.start.last.args == ("k", world.spec())
    assert m.state is State.STARTING and world.capacity.active("svc") == 1
    assert not any(t.done() for t in tasks)

    await clock.advance(1.5)
    instance = world.backend.started()
    await clock.until(lambda: world.prober.wait_ready.count == 1)
    assert world.prober.wait_ready.last.args[:2] == (instance, world.readiness)
    assert m.state is State.STARTING and not any(t.done() for t in tasks)  # not before it is ready

    await clock.advance(1.0)
    world.prober.wait_ready.last.resolve()
    await clock.settle()

    waited = await gather_outcomes(tasks)
    assert waited == [pytest.approx(2.5)] * N  # each waited exactly from t0 to ready
    assert world.events.cold_waits() == [pytest.approx(2.5)] * N
    assert m.state is State.RUNNING and m.instance is instance and m.start_count == 1
    assert world.backend.start.count == 1 and world.prober.wait_ready.count == 1
    assert world.events.path("k") == [State.STARTING, State.RUNNING]
    started = world.events.transitions("k")[-1]
    assert started.happening is Happening.STARTED and started.instance is instance
    assert started.duration == pytest.approx(2.5) and world.events.at(Happening.STARTED) == [t0 + 2.5]
    assert world.capacity.active("svc") == 1 and world.pools.forgotten == []

    assert await m.ensure_running() is None  # already running: no wait, no start, no ColdWait
    assert world.backend.start.count == 1 and len(world.events.cold_waits()) == N


async def test_concurrent_leases_share_one_instance_and_count_in_flight(world, clock):
    world.backend.start.hold()
    m = world.manager("k")
    release = asyncio.Event()
    seen = []

    async def request():
        async with m.lease() as lease:
            seen.append(lease)
            await release.wait()

    tasks = [asyncio.create_task(request()) for _ in range(N)]
    await clock.until(lambda: world.backend.start.count == 1)
    await clock.settle()
    assert m.in_flight == N and world.backend.start.count == 1 and seen == []

    await clock.advance(0.25)
    instance = world.backend.started()
    await clock.until(lambda: len(seen) == N)
    assert {id(lease.instance) for lease in seen} == {id(instance)}
    assert [lease.cold_wait for lease in seen] == [pytest.approx(0.25)] * N
    assert m.in_flight == N and m.state is State.RUNNING

    release.set()
    await clock.settle()
    assert await gather_outcomes(tasks) == [None] * N
    assert m.in_flight == 0 and m.state is State.RUNNING
    assert world.backend.start.count == 1

    async with m.lease() as lease:  # warm: no wait
        assert lease.instance is instance and lease.cold_wait is None and m.in_flight == 1
    assert m.in_flight == 0


async def test_failed_start_fails_every_waiter_and_next_call_retries(world, clock):
    world.backend.start.hold()
    m = world.manager("k")
    tasks = [asyncio.create_task(m.ensure_running()) for _ in range(N)]
    await clock.until(lambda: world.backend.start.count == 1)
    world.backend.start.last.fail(BackendUnavailable("daemon down", retry_after=7))
    await clock.settle()

    errors = await gather_outcomes(tasks)
    assert all(isinstance(e, StartFailed) for e in errors)
    assert {(e.reason, e.retry_after, e.extra["key"]) for e in errors} == {("daemon down", 7, "k")}
    assert m.state is State.FAILED and m.instance is None and m.last_error == "daemon down"
    assert world.backend.start.count == 1
    assert world.prober.wait_ready.count == 0 and world.backend.stop.count == 0  # nothing to stop
    assert world.capacity.active("svc") == 0
    assert world.events.path("k") == [State.STARTING, State.FAILED]
    failed = world.events.transitions("k")[-1]
    assert failed.happening is Happening.START_FAILED and failed.reason == "daemon down"
    assert world.events.cold_waits() == []

    # The failure is not cached: the next call starts again, and this time it works.
    retry = asyncio.create_task(m.ensure_running())
    await clock.until(lambda: world.backend.start.count == 2)
    assert m.state is State.STARTING and world.capacity.active("svc") == 1
    instance = world.backend.started()
    await clock.settle()
    assert retry.done() and retry.result() == 0.0
    assert m.state is State.RUNNING and m.instance is instance and m.start_count == 1 and m.last_error == ""
    assert world.events.path("k") == [State.STARTING, State.FAILED, State.STARTING, State.RUNNING]


async def test_readiness_failure_stops_the_half_started_instance(world, clock):
    world.prober.wait_ready.raises(BackendError("instance exited before it was ready (fake-1)"))
    m = world.manager("k")
    with pytest.raises(StartFailed, match="exited before it was ready"):
        await m.ensure_running()
    instance = world.prober.wait_ready.last.args[0]
    assert world.backend.stop.args() == [(instance,)]
    assert world.pools.forgotten == [instance]
    assert m.state is State.FAILED and m.instance is None and world.capacity.active("svc") == 0
    assert world.events.happenings("k") == [(Happening.START_FAILED, None)]


async def test_unexpected_exception_is_a_failed_start(world, clock):
    world.backend.start.raises(RuntimeError("boom"))
    m = world.manager("k")
    with pytest.raises(StartFailed) as info:
        await m.ensure_running()
    assert info.value.reason == "RuntimeError: boom" and info.value.retry_after == 1.0
    assert m.state is State.FAILED and world.capacity.active("svc") == 0


async def test_start_timeout_stops_half_started_instance_and_releases_capacity(make_world, clock):
    world = make_world(svc={"start_timeout": "5s"})
    world.prober.wait_ready.hold()  # started, never ready
    m = world.manager("k")
    t0 = clock.now
    tasks = [asyncio.create_task(m.ensure_running()) for _ in range(10)]
    await clock.until(lambda: world.prober.wait_ready.count == 1)
    instance = world.prober.wait_ready.last.args[0]

    await clock.advance(4.999)
    assert m.state is State.STARTING and not any(t.done() for t in tasks)
    assert world.backend.stop.count == 0 and world.capacity.active("svc") == 1

    await clock.advance(0.001)
    errors = await gather_outcomes(tasks)
    assert all(isinstance(e, StartTimeout) for e in errors)
    assert {e.reason for e in errors} == {"not ready within start_timeout=5s"}
    assert {e.status for e in errors} == {504}
    assert world.prober.wait_ready.last.cancelled  # the readiness wait was abandoned
    assert world.backend.stop.args() == [(instance,)]  # the half-started instance is stopped
    assert world.pools.forgotten == [instance]
    assert m.state is State.FAILED and m.instance is None and world.capacity.active("svc") == 0
    assert world.events.happenings("k") == [(Happening.START_FAILED, None)]
    assert world.events.at(Happening.START_FAILED) == [t0 + 5]
    assert world.backend.start.count == 1


async def test_start_timeout_says_what_the_probe_last_saw(make_world, clock):
    world = make_world(svc={"start_timeout": "5s"})
    world.prober.wait_ready.hold()
    m = world.manager("k")
    first = asyncio.create_task(m.ensure_running())
    await clock.until(lambda: world.prober.wait_ready.count == 1)
    seen = world.prober.wait_ready.last.args[2]  # this start's LastSeen, which the prober fills in
    seen.what = "GET /ready answered 404"
    await clock.advance(5)
    [error] = await gather_outcomes([first])
    assert isinstance(error, StartTimeout)
    assert error.reason == "not ready within start_timeout=5s: GET /ready answered 404"
    assert m.last_error == error.reason

    world.prober.wait_ready.reset_answer()  # the next start is ready at once: it starts with nothing seen
    await m.ensure_running()
    assert world.prober.wait_ready.last.args[2] is not seen and world.prober.wait_ready.last.args[2].what == ""


async def test_start_timeout_while_backend_still_starting(make_world, clock):
    world = make_world(svc={"start_timeout": "3s"})
    world.backend.start.hold()  # the runtime never answers
    m = world.manager("k")
    task = asyncio.create_task(m.ensure_running())
    await clock.until(lambda: world.backend.start.count == 1)
    await clock.advance(3)
    assert isinstance(task.exception(), StartTimeout)
    assert world.backend.start.last.cancelled  # the backend's start was cancelled
    assert world.backend.stop.count == 0  # it never returned an instance, so there is none to stop
    assert m.state is State.FAILED and world.capacity.active("svc") == 0


async def test_start_timeout_answers_waiters_at_the_deadline_even_if_the_stop_is_slow(make_world, clock):
    world = make_world(svc={"start_timeout": "5s"})
    world.prober.wait_ready.hold()
    world.backend.stop.hold()  # stopping the half-started instance takes a while (docker: up to 5 s grace)
    m = world.manager("k")
    task = asyncio.create_task(m.ensure_running())
    await clock.until(lambda: world.prober.wait_ready.count == 1)
    await clock.advance(5)
    assert world.backend.stop.count == 1
    # README: "Past start_timeout waiting requests get 504".
    assert task.done() and isinstance(task.exception(), StartTimeout)


async def test_timeout_error_from_the_backend_is_not_a_start_timeout(make_world, clock):
    world = make_world(svc={"start_timeout": "30s"})
    world.backend.start.raises(TimeoutError("pulling the image timed out"))
    m = world.manager("k")
    with pytest.raises(StartFailed) as info:  # today: StartTimeout, "not ready within start_timeout=30s"
        await m.ensure_running()
    assert info.value.reason == "TimeoutError: pulling the image timed out"


async def test_stop_during_start_waits_for_the_start_then_stops(world, clock):
    world.backend.start.hold()
    world.backend.stop.hold()
    m = world.manager("k")
    request = asyncio.create_task(m.ensure_running())
    await clock.until(lambda: world.backend.start.count == 1)
    stopping = asyncio.create_task(m.stop(StopReason.SHUTDOWN))
    await clock.settle()
    assert m.state is State.STARTING and world.backend.stop.count == 0 and not stopping.done()

    await clock.advance(2)
    instance = world.backend.started()
    await clock.until(lambda: world.backend.stop.count == 1)
    assert request.done() and request.result() == pytest.approx(2)  # the request got its instance
    assert world.backend.stop.last.args == (instance,)
    assert m.state is State.STOPPING and not stopping.done() and world.capacity.active("svc") == 1

    world.backend.stop.last.resolve()
    await clock.settle()
    assert stopping.done() and stopping.result() is None
    assert m.state is State.STOPPED and m.instance is None and world.capacity.active("svc") == 0
    assert world.events.path("k") == [State.STARTING, State.RUNNING, State.STOPPING, State.STOPPED]
    assert world.events.happenings("k") == [(Happening.STARTED, None), (Happening.STOPPED, StopReason.SHUTDOWN)]
    assert world.pools.forgotten == [instance]


async def test_stop_during_a_start_that_fails_stops_nothing(world, clock):
    world.backend.start.hold()
    m = world.manager("k")
    request = asyncio.create_task(m.ensure_running())
    await clock.until(lambda: world.backend.start.count == 1)
    stopping = asyncio.create_task(m.stop(StopReason.SHUTDOWN))
    await clock.settle()
    world.backend.start.last.fail(BackendError("no such image"))
    await clock.settle()
    assert isinstance(request.exception(), StartFailed)
    assert stopping.done() and stopping.result() is None
    assert world.backend.stop.count == 0 and m.state is State.FAILED
    assert world.events.happenings("k") == [(Happening.START_FAILED, None)]


async def test_request_during_stopping_waits_for_the_stop_then_starts_again(world, clock):
    m = world.manager("k")
    await m.ensure_running()
    first = m.instance
    world.backend.stop.hold()
    stopping = asyncio.create_task(m.stop(StopReason.ADMIN))
    await clock.until(lambda: world.backend.stop.count == 1)
    assert m.state is State.STOPPING

    requests = [asyncio.create_task(m.ensure_running()) for _ in range(10)]
    await clock.settle()
    assert world.backend.start.count == 1 and not any(r.done() for r in requests)
    assert world.capacity.active("svc") == 1  # still claimed while stopping

    await clock.advance(0.75)
    world.backend.stop.last.resolve()
    await clock.settle()
    assert stopping.done()
    assert await gather_outcomes(requests) == [pytest.approx(0.75)] * 10
    assert world.backend.start.count == 2  # one restart for all ten
    assert m.state is State.RUNNING and m.instance is not first and m.start_count == 2
    assert world.events.path("k") == [State.STARTING, State.RUNNING, State.STOPPING, State.STOPPED,
                                      State.STARTING, State.RUNNING]
    assert world.events.happenings("k") == [(Happening.STARTED, None), (Happening.STOPPED, StopReason.ADMIN),
                                            (Happening.STARTED, None)]
    assert world.capacity.active("svc") == 1 and world.pools.forgotten == [first]


async def test_failed_stop_still_ends_the_claim(world, clock):
    m = world.manager("k")
    await m.ensure_running()
    instance = m.instance
    world.backend.stop.raises(BackendError("daemon said no"))
    await m.stop(StopReason.ADMIN)
    assert m.state is State.STOPPED and m.last_error == "stop failed: BackendError: daemon said no"
    assert world.capacity.active("svc") == 0 and world.pools.forgotten == [instance]


async def test_cancelled_waiter_does_not_cancel_the_start(world, clock):
    world.backend.start.hold()
    m = world.manager("k")
    leaving = asyncio.create_task(m.ensure_running())
    staying = asyncio.create_task(m.ensure_running())
    await clock.until(lambda: world.backend.start.count == 1)
    leaving.cancel()
    await clock.settle()
    assert leaving.cancelled() and world.backend.start.last.pending and m.state is State.STARTING
    world.backend.started()
    await clock.settle()
    assert staying.done() and staying.result() == 0.0 and m.state is State.RUNNING


async def test_lease_released_when_the_waiting_client_goes_away(world, clock):
    world.backend.start.hold()
    m = world.manager("k")

    async def request():
        async with m.lease():
            pass

    task = asyncio.create_task(request())
    await clock.until(lambda: world.backend.start.count == 1)
    assert m.in_flight == 1
    task.cancel()
    await clock.settle()
    assert task.cancelled() and m.in_flight == 0
    world.backend.started()
    await clock.settle()
    assert m.state is State.RUNNING and m.in_flight == 0
