"""What an operator does to a key, through the Manager: pause/resume, a stop that drains, destroy,
a per-key sleep_after. On the fake backend (given pause, resume and remove) and the virtual clock."""

from __future__ import annotations

import asyncio

import pytest

from backends.control import Pausable, Removable
from proxy.errors import ActionFailed, CapacityExceeded, Conflict, NotSupported
from proxy.lifecycle.events import Happening, State, StopReason
from tests.unit.conftest import FakeBackend, FakeMethod, World


class PausableBackend(FakeBackend):
    def __init__(self) -> None:
        super().__init__()
        self.pause = FakeMethod("pause", auto=lambda instance: None)
        self.resume = FakeMethod("resume", auto=lambda instance: None)
        self.remove = FakeMethod("remove", auto=lambda key, spec: True)

    def methods(self) -> list[FakeMethod]:
        return [*super().methods(), self.pause, self.resume, self.remove]


def pausable(world: World) -> World:
    """The world's managers on a PausableBackend."""
    world.backend = backend = PausableBackend()
    world.services = type(world.services)(backend, world.bus, world.capacity, world.prober, world.pools)
    assert isinstance(backend, Pausable) and isinstance(backend, Removable)
    return world


@pytest.fixture
def pworld(make_world) -> World:
    return pausable(make_world())


async def lease_task(m, hold: asyncio.Event):
    async def one():
        async with m.lease() as lease:
            await hold.wait()
            return lease.instance
    return asyncio.create_task(one())


async def test_a_request_for_a_paused_key_resumes_it_once_and_is_served(pworld, clock):
    m = pworld.manager("k")
    await m.ensure_running()
    instance = m.instance
    await m.pauser.pause()
    assert m.state is State.PAUSED and pworld.backend.pause.args() == [(instance,)]
    assert pworld.capacity.active("svc") == 1  # a paused instance still counts against max_instances
    pworld.backend.resume.hold()
    go = asyncio.Event()
    go.set()
    tasks = [await lease_task(m, go) for _ in range(20)]
    await clock.until(lambda: pworld.backend.resume.count == 1)
    assert m.state is State.PAUSED
    pworld.backend.resume.last.resolve()
    served = await asyncio.gather(*tasks)
    assert served == [instance] * 20 and pworld.backend.resume.count == 1
    assert m.state is State.RUNNING and pworld.backend.start.count == 1 and m.in_flight == 0


async def test_pause_needs_a_backend_that_can_and_a_running_instance(world, pworld):
    m = world.manager("k")
    await m.ensure_running()
    with pytest.raises(NotSupported, match="not supported by backend fake"):
        await m.pauser.pause()
    p = pworld.manager("k")
    with pytest.raises(Conflict, match="stopped, not running"):
        await p.pauser.pause()
    with pytest.raises(Conflict, match="not paused"):
        await p.pauser.resume()


async def test_a_pause_the_runtime_refuses_leaves_it_running(pworld):
    m = pworld.manager("k")
    await m.ensure_running()
    pworld.backend.pause.raises(RuntimeError("cannot freeze"))
    with pytest.raises(ActionFailed, match="cannot freeze"):
        await m.pauser.pause()
    assert m.state is State.RUNNING


async def test_a_paused_instance_that_cannot_be_thawed_is_replaced(pworld, clock):
    m = pworld.manager("k")
    await m.ensure_running()
    first = m.instance
    await m.pauser.pause()
    pworld.backend.resume.raises(RuntimeError("gone"))
    async with m.lease() as lease:
        assert lease.instance != first
    assert pworld.backend.start.count == 2 and pworld.backend.stop.args() == [(first,)]


async def test_idle_stop_of_a_paused_instance_thaws_it_first(pworld, clock):
    m = pworld.manager("k")
    await m.ensure_running()
    instance = m.instance
    await m.pauser.pause()
    await clock.advance(60)
    assert m.state is State.STOPPED
    assert pworld.backend.resume.args() == [(instance,)] and pworld.backend.stop.args() == [(instance,)]
    assert pworld.events.happenings("k")[-1] == (Happening.STOPPED, StopReason.IDLE)
    assert pworld.capacity.active("svc") == 0


async def test_capacity_keeps_counting_a_paused_instance(make_world, clock):
    world = pausable(make_world(svc={"max_instances": 1}))
    a, b = world.manager("a"), world.manager("b")
    await a.ensure_running()
    await a.pauser.pause()
    with pytest.raises(CapacityExceeded):
        await b.ensure_running()


async def test_an_admin_stop_waits_for_the_request_in_flight(pworld, clock):
    m = pworld.manager("k")
    await m.ensure_running()
    first = m.instance
    release = asyncio.Event()
    in_flight = await lease_task(m, release)
    await clock.settle()
    stopping = asyncio.create_task(m.stop(StopReason.ADMIN, drain=30))
    await clock.settle()
    assert m.state is State.STOPPING and pworld.backend.stop.count == 0
    go = asyncio.Event()
    go.set()
    later = await lease_task(m, go)  # arrives during the drain: waits, then gets a fresh instance
    await clock.advance(5)
    assert pworld.backend.stop.count == 0 and not later.done()
    release.set()
    assert await in_flight == first
    await stopping
    assert pworld.backend.stop.args() == [(first,)]
    fresh = await later
    assert fresh != first and pworld.backend.start.count == 2


async def test_the_drain_has_a_bound(pworld, clock):
    m = pworld.manager("k")
    await m.ensure_running()
    stuck = await lease_task(m, asyncio.Event())  # never ends by itself (a WebSocket, say)
    await clock.settle()
    stopping = asyncio.create_task(m.stop(StopReason.ADMIN, drain=5))
    await clock.advance(4.9)
    assert pworld.backend.stop.count == 0
    await clock.advance(0.2)
    await stopping
    assert pworld.backend.stop.count == 1 and m.state is State.STOPPED
    stuck.cancel()
    await asyncio.gather(stuck, return_exceptions=True)


async def test_destroy_removes_the_container_even_when_stopped(pworld, clock):
    m = pworld.manager("k")
    await m.ensure_running()
    m.set_sleep_after(10)
    await m.stop(StopReason.ADMIN, remove=True)
    assert m.state is State.STOPPED and pworld.backend.remove.count == 1 and m.sleep_after == 60
    await m.stop(StopReason.ADMIN, remove=True)  # a stopped key: its stopped container is removed
    assert pworld.backend.remove.count == 2 and pworld.backend.stop.count == 1
    assert [h for h in pworld.events.happenings("k") if h[0] is Happening.STOPPED] == [
        (Happening.STOPPED, StopReason.ADMIN)]  # the second removed a container, it stopped no instance
    assert pworld.capacity.active("svc") == 0


async def test_a_per_key_sleep_after_overrides_the_class(world, clock):
    m = world.manager("k")
    await m.ensure_running()
    m.set_sleep_after(10)
    await clock.advance(10)
    assert m.state is State.STOPPED
    await m.ensure_running()
    m.set_sleep_after(3600)
    await clock.advance(600)
    assert m.state is State.RUNNING and m.status()["sleep_after"] == 3600
    m.set_sleep_after(None)  # the class's 60 s again, counted from the last activity: past already
    await clock.settle()
    assert m.state is State.STOPPED
