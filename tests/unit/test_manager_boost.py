"""The end of the startup CPU boost: the manager lowers the CPU limit once ready, without making the first
request wait, reports a failure, and leaves no half-started instance boosted (proxy/lifecycle/boost.py)."""

from __future__ import annotations

from backends.base import BackendError
from backends.control import Boostable
from proxy.lifecycle.events import State
from tests.unit.conftest import FakeBackend, FakeMethod, World, make_config


class BoostBackend(FakeBackend):
    def __init__(self) -> None:
        super().__init__()
        self.settle = FakeMethod("settle", auto=lambda instance, spec: None)

    def methods(self) -> list[FakeMethod]:
        return [*super().methods(), self.settle]


def boost_world() -> World:
    world = World(make_config({"svc": {}}), backend=BoostBackend())
    assert isinstance(world.backend, Boostable)
    return world


async def test_settled_after_ready_without_the_first_request_waiting(clock):
    world = boost_world()
    world.backend.settle.hold()
    m = world.manager("k")
    await m.ensure_running()  # returned while the settle is still pending
    assert m.state is State.RUNNING
    await clock.settle()
    (call,) = world.backend.settle.pending
    assert call.args == (m.instance, world.spec())
    call.resolve()
    await clock.settle()
    assert m.last_error == ""


async def test_a_failed_settle_is_retried_then_shown_in_the_status(clock):
    world = boost_world()
    world.backend.settle.raises(BackendError("update refused"))
    m = world.manager("k")
    await m.ensure_running()
    await clock.advance(10)
    assert world.backend.settle.count == 3
    assert "CPU limit not lowered" in m.status()["last_error"] and "update refused" in m.last_error


async def test_a_start_that_never_became_ready_and_would_not_stop_is_settled(clock):
    world = boost_world()
    world.prober.wait_ready.raises(BackendError("never ready"))
    world.backend.stop.raises(BackendError("daemon busy"))
    m = world.manager("k")
    try:
        await m.ensure_running()
    except Exception:  # noqa: BLE001 - the failed start is the point
        pass
    instance = world.prober.wait_ready.last.args[0]
    assert world.backend.settle.args() == [(instance, world.spec())]
    assert m.state is State.FAILED


async def test_a_stopped_start_needs_no_settle_and_an_adopted_instance_gets_one(clock):
    world = boost_world()
    world.prober.wait_ready.raises(BackendError("never ready"))
    m = world.manager("k")
    try:
        await m.ensure_running()
    except Exception:  # noqa: BLE001
        pass
    assert world.backend.settle.count == 0  # stopped: nothing left running boosted
    adopted = world.backend.new_instance("other")
    world.manager("other").adopt(adopted)
    await clock.settle()
    assert world.backend.settle.args() == [(adopted, world.spec())]
