"""The registry: (class, key) -> Manager, adoption after a restart, stop_all."""

from __future__ import annotations

import asyncio

import pytest

from backends.base import Instance
from proxy.lifecycle.events import Happening, State, StopReason


@pytest.fixture
def world(make_world):
    return make_world(a={"image": "img/a:1"}, b={"image": "img/b:1", "max_instances": 1})


async def test_same_key_on_two_classes_is_two_managers(world, clock):
    registry = world.registry()
    ma, mb = registry.get("abc", "a"), registry.get("abc", "b")
    assert ma is not mb
    assert (ma.key, ma.klass.name, mb.key, mb.klass.name) == ("abc", "a", "abc", "b")
    assert registry.get("abc", "a") is ma and registry.get("abc", "b") is mb  # created once
    assert set(registry.managers) == {("a", "abc"), ("b", "abc")}

    await ma.ensure_running()
    assert mb.state is State.STOPPED  # separate lifecycles
    await mb.ensure_running()
    assert [(key, spec.name, spec.image) for key, spec in world.backend.start.args()] == [
        ("abc", "a", "img/a:1"), ("abc", "b", "img/b:1")]
    assert ma.instance != mb.instance
    assert (world.capacity.active("a"), world.capacity.active("b")) == (1, 1)
    assert sorted(m.klass.name for m in registry) == ["a", "b"]


async def test_adopt_running_adopts_listed_instances_of_known_classes_only(world, clock):
    registry = world.registry()
    known_a = Instance("x", "a", "127.0.0.1", 5001, "id-x")
    known_b = Instance("y", "b", "127.0.0.1", 5002, "id-y")
    unknown = Instance("z", "gone", "127.0.0.1", 5003, "id-z")
    world.backend.listed = [known_a, unknown, known_b]

    assert await registry.adopt_running() == 2
    assert set(registry.managers) == {("a", "x"), ("b", "y")}  # no manager for the unknown class
    mx, my = registry.get("x", "a"), registry.get("y", "b")
    assert (mx.state, mx.instance, my.state, my.instance) == (State.RUNNING, known_a, State.RUNNING, known_b)
    assert world.events.happenings() == [(Happening.ADOPTED, None), (Happening.ADOPTED, None)]
    assert (world.capacity.active("a"), world.capacity.active("b")) == (1, 1)
    assert world.backend.start.count == 0
    assert world.backend.cleanups == 0  # reuse_stopped (default): stopped ones stay as a warm cache

    # Adopting again changes nothing: those keys are already running.
    assert await registry.adopt_running() == 0
    assert len(world.events.happenings()) == 2 and world.capacity.active("a") == 1


async def test_adopt_running_skips_keys_already_started(world, clock):
    registry = world.registry()
    started = registry.get("x", "a")
    await started.ensure_running()
    mine = started.instance
    world.backend.listed = [Instance("x", "a", "127.0.0.1", 5001, "id-x")]
    assert await registry.adopt_running() == 0
    assert started.instance is mine and world.capacity.active("a") == 1


async def test_adopt_running_removes_stopped_orphans_without_reuse(make_world, clock):
    world = make_world({"a": {}}, backend={"reuse_stopped": False})
    assert await world.registry().adopt_running() == 0
    assert world.backend.cleanups == 1


async def test_stop_all_stops_every_running_instance(world, clock):
    registry = world.registry()
    for key in ("k1", "k2"):
        await registry.get(key, "a").ensure_running()
    idle = registry.get("never", "a")
    await registry.stop_all()
    assert {m.state for m in registry} == {State.STOPPED}
    assert idle.state is State.STOPPED and world.backend.stop.count == 2
    assert [h for h in world.events.happenings() if h[0] is Happening.STOPPED] == [
        (Happening.STOPPED, StopReason.SHUTDOWN)] * 2
    assert world.capacity.active("a") == 0


async def test_a_list_asked_before_a_stop_does_not_bring_the_stopped_instance_back(world, clock, monkeypatch):
    """The runtime's list is a snapshot: one asked while a key was running may come back after its stop. The
    reconcile must not adopt that instance again (a manager RUNNING on a dead instance: requests refused)."""
    from proxy.lifecycle.reconcile import Reconciler

    registry = world.registry()
    manager = registry.get("x", "a")
    await manager.ensure_running()
    running = manager.instance
    assert running is not None
    snapshot = [running]  # what the runtime says while the instance still runs
    listing = asyncio.Event()

    async def slow_list() -> list[Instance]:
        listing.set()
        await asyncio.sleep(1)  # the key stops while the answer is on its way
        return list(snapshot)

    monkeypatch.setattr(world.backend, "list_instances", slow_list)
    round_ = asyncio.create_task(Reconciler(registry, world.backend).reconcile_once())
    await listing.wait()
    await asyncio.sleep(0.1)
    await manager.stop(StopReason.IDLE)
    assert manager.state is State.STOPPED
    assert await round_ == 0
    assert manager.state is State.STOPPED and manager.instance is None  # not adopted from the stale list

    world.backend.listed = [running]  # a list asked after the stop that still shows it: a real orphan, adopted
    assert await Reconciler(registry, world.backend).reconcile_once() == 1
    assert manager.state is State.RUNNING
