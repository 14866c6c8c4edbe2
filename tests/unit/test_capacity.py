"""max_instances: claimed when a start begins (or on adoption), released when the instance is gone."""

from __future__ import annotations

import asyncio

import pytest

from backends.base import BackendError, InstanceState
from proxy.capacity import Capacity
from proxy.errors import CapacityExceeded, StartFailed
from proxy.events import Happening, State, StopReason


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
    assert await a.check_alive() is False
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
