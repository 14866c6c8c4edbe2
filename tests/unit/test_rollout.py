"""The rollout planner's steps and gates (proxy/scale/rollout.py) and one key's surge (proxy/lifecycle/rollout.py),
on the virtual clock with a fake backend: at most max_surge extra instances, each step gated GATE_SETTLE seconds
on its new instances, a failing new instance halts with the old ones untouched, pause/resume, the WebSockets'
grace period, a crash after the switch."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from backends.base import Instance
from proxy.config.schema import ContainerClass
from proxy.lifecycle.events import State
from proxy.lifecycle.rollout import SERVICE_RESTART
from proxy.scale.rollout import GATE_SETTLE, Rollouts, step_goal


@pytest.fixture
def world(make_world: Any) -> Any:
    """One class `svc` with room for ten keys and their surge."""
    return make_world(svc={"max_instances": 20})


class FakeDrain:
    """Connections in use per instance id (the test sets them), and the WebSocket closes asked for."""

    def __init__(self) -> None:
        self.busy: dict[str, int] = {}
        self.closed: list[tuple[str, int, float]] = []

    def in_use(self, instance: Instance) -> int:
        return self.busy.get(instance.id, 0)

    async def close_sockets(self, instance: Instance, code: int, message: bytes) -> int:
        import asyncio
        self.closed.append((instance.id, code, asyncio.get_running_loop().time()))
        self.busy[instance.id] = 0
        return 1


def new_class(klass: ContainerClass, **rollout: Any) -> ContainerClass:
    spec = replace(klass.spec, env={**klass.spec.env, "V": "2"}, generation=klass.spec.generation + 1)
    return replace(klass, spec=spec, rollout=klass.rollout.model_copy(update=rollout))


async def running(world: Any, n: int) -> Any:
    registry = world.registry()
    for i in range(n):
        await registry.get(f"k{i}", "svc").ensure_running()
    return registry


async def advance_until(clock: Any, predicate: Any, step: float = 0.01, limit: float = 30.0) -> None:
    """Let virtual time pass in small steps until `predicate()` holds."""
    end = clock.now + limit
    while not predicate():
        assert clock.now < end, "condition not met in virtual time"
        await clock.advance(step)


def planner(registry: Any, drain: FakeDrain | None = None) -> tuple[Rollouts, list[dict[str, Any]]]:
    told: list[dict[str, Any]] = []
    return Rollouts(registry, drain or FakeDrain(), 5.0, lambda klass: None, told.append), told


def test_step_goals_round_up():
    assert [step_goal(10, p) for p in (10, 50, 100)] == [1, 5, 10]
    assert [step_goal(3, p) for p in (10, 34, 100)] == [1, 2, 3]
    assert step_goal(0, 10) == 0


async def test_steps_are_gated_and_never_more_than_max_surge_extra(world, clock):
    registry = await running(world, 10)
    backend = world.backend
    starts_before, stops_before = backend.start.count, backend.stop.count
    rollouts, told = planner(registry)
    new = new_class(world.klass(), steps=(10, 50, 100), max_surge=2)
    rollout = rollouts.begin(world.klass(), new)
    peak = 0
    while rollout.state == "running":
        extra = (backend.start.count - starts_before) - (backend.stop.count - stops_before)
        peak = max(peak, extra)
        await clock.advance(0.01)
    assert rollout.state == "done" and sorted(rollout.done) == sorted(f"k{i}" for i in range(10))
    assert 1 <= peak <= 2
    assert all(spec.generation == 1 for _key, spec in backend.start.args()[-10:])
    assert all(m.klass is new and m.state is State.RUNNING for m in registry)
    assert backend.stop.count - stops_before == 10  # every old instance stopped, no new one
    assert [t["event"] for t in told].count("start") == 10 and all(t["generation"] in (0, 1) for t in told)
    assert rollout.status()["keys_done"] == 10


async def test_the_gate_waits_before_the_next_step(world, clock):
    registry = await running(world, 4)
    rollouts, _ = planner(registry)
    rollout = rollouts.begin(world.klass(), new_class(world.klass(), steps=(25, 100), max_surge=1))
    await advance_until(clock, lambda: len(rollout.done) == 1)
    done_at = clock.now
    starts = world.backend.start.count
    await clock.advance(GATE_SETTLE - 0.2)
    assert world.backend.start.count == starts  # the gate holds the next step
    await clock.advance(0.5)
    assert world.backend.start.count > starts
    assert clock.now - done_at >= GATE_SETTLE


async def test_a_never_ready_new_instance_halts_and_the_old_ones_keep_serving(world, clock):
    registry = await running(world, 5)
    olds = {m.key: m.instance for m in registry}
    world.prober.wait_ready.raises(RuntimeError("not ready: 503"))
    rollouts, told = planner(registry)
    rollout = rollouts.begin(world.klass(), new_class(world.klass(), steps=(20, 100)))
    await clock.advance(1)
    assert rollout.state == "halted" and rollout.done == [] and len(rollout.failed) == 1
    assert "not ready: 503" in next(iter(rollout.failed.values()))
    assert {m.key: m.instance for m in registry} == olds and all(m.state is State.RUNNING for m in registry)
    assert all(m.klass is world.klass() for m in registry)  # the remaining keys stay on the old spec
    stopped = [call.args[0] for call in world.backend.stop.calls]
    assert len(stopped) == 1 and stopped[0] not in olds.values()  # only the failed new instance was stopped
    assert [t["event"] for t in told] == ["rollout_halted"] and told[0]["generation"] == 1
    assert rollouts.halts == {"svc": 1}
    await clock.advance(30)
    assert world.backend.start.count == 5 + 1  # halted: nothing more is tried


async def test_resume_after_a_halt_tries_again(world, clock):
    registry = await running(world, 2)
    world.prober.wait_ready.raises(RuntimeError("not ready"))
    rollouts, _ = planner(registry)
    rollout = rollouts.begin(world.klass(), new_class(world.klass(), steps=(50, 100)))
    await clock.advance(1)
    assert rollout.state == "halted"
    world.prober.wait_ready.reset_answer()
    rollouts.resume("svc")
    await clock.advance(5)
    assert rollout.state == "done" and sorted(rollout.done) == ["k0", "k1"]


async def test_pause_holds_the_next_key_and_resume_goes_on(world, clock):
    registry = await running(world, 4)
    world.backend.start.hold()
    rollouts, _ = planner(registry)
    rollout = rollouts.begin(world.klass(), new_class(world.klass(), steps=(100,), max_surge=1))
    await clock.settle()
    rollouts.pause("svc")
    world.backend.started()  # the key under way finishes
    await clock.advance(3)
    assert rollout.state == "paused" and len(rollout.done) == 1 and not world.backend.start.pending
    rollouts.resume("svc")
    for _ in range(3):
        await clock.until(lambda: bool(world.backend.start.pending))
        world.backend.started()
        await clock.advance(0.5)
    await clock.advance(GATE_SETTLE + 0.5)
    assert rollout.state == "done" and len(rollout.done) == 4


async def test_websockets_get_the_grace_period_then_1012(world, clock):
    registry = await running(world, 1)
    old = registry.peek("k0", "svc").instance
    drain = FakeDrain()
    drain.busy[old.id] = 1  # an open WebSocket on the old instance
    rollouts, _ = planner(registry, drain)
    rollout = rollouts.begin(world.klass(), new_class(world.klass(), steps=(100,), active_grace_period=3.0))
    await advance_until(clock, lambda: registry.peek("k0", "svc").instance is not old, step=0.001)
    switched = clock.now
    await clock.advance(2.5)
    assert drain.closed == [] and not world.backend.stop.calls  # within the grace period: left open, not stopped
    await clock.advance(1.0)
    assert [(cid, code) for cid, code, _ in drain.closed] == [(old.id, SERVICE_RESTART)]
    assert drain.closed[0][2] - switched == pytest.approx(3.0, abs=0.06)
    await clock.advance(1)
    assert [c.args[0] for c in world.backend.stop.calls] == [old]
    await clock.advance(GATE_SETTLE)
    assert rollout.state == "done"


async def test_a_crash_right_after_the_switch_halts_at_the_gate(world, clock):
    registry = await running(world, 4)
    rollouts, _ = planner(registry)
    rollout = rollouts.begin(world.klass(), new_class(world.klass(), steps=(25, 100), max_surge=1))
    await advance_until(clock, lambda: len(rollout.done) == 1)
    crashed = registry.peek(rollout.done[0], "svc")
    world.backend.inspect.returns(__import__("backends.base", fromlist=["InstanceState"]).InstanceState.EXITED)
    crashed.health.suspect()
    await clock.advance(GATE_SETTLE + 0.1)
    assert crashed.state in (State.STOPPED, State.FAILED)
    assert rollout.state == "halted" and crashed.key in rollout.failed
    assert sum(m.klass is rollout.new for m in registry) == 1  # the other three stay on the old spec


async def test_stopped_keys_take_the_new_spec_at_once_and_on_idle_replaces_nothing(world, clock):
    registry = await running(world, 2)
    await registry.get("k0", "svc").stop(__import__("proxy.lifecycle.events", fromlist=["StopReason"]).StopReason.ADMIN)
    rollouts, _ = planner(registry)
    new = new_class(world.klass(), strategy="on_idle")
    rollout = rollouts.begin(world.klass(), new)
    assert rollout.state == "done" and all(m.klass is new for m in registry)
    starts = world.backend.start.count
    await clock.advance(5)
    assert world.backend.start.count == starts and registry.peek("k1", "svc").state is State.RUNNING


class NotMine:
    """A cluster fence that says the key is another replica's now."""

    def holds(self, manager: Any) -> bool:
        return False

    async def confirm(self, manager: Any) -> bool:
        return False


async def test_a_key_another_replica_holds_is_skipped_not_started(world, clock):
    registry = await running(world, 2)
    registry.services = replace(world.services, fence=NotMine())
    for manager in registry:
        manager.services = registry.services
    starts = world.backend.start.count
    rollouts, _ = planner(registry)
    rollout = rollouts.begin(world.klass(), new_class(world.klass(), steps=(100,)))
    await clock.advance(GATE_SETTLE + 1)
    assert rollout.state == "done" and rollout.done == [] and rollout.skipped == {"k0", "k1"}
    assert world.backend.start.count == starts and all(m.klass is world.klass() for m in registry)


async def test_a_surge_runs_as_replace_where_a_key_is_one_service_whatever_its_spec(world, clock):
    """On a swarm (`ServicePerKey`) the new spec's start would replace the serving instance undrained: the
    planner replaces instead (each key stopped, drained, started again), never two at once for a key."""
    from backends.control import ServicePerKey

    registry = await running(world, 3)
    backend = world.backend
    backend.service_for = lambda key, spec: f"svc-{key}"  # what makes a backend ServicePerKey
    assert isinstance(backend, ServicePerKey)
    starts_before, stops_before = backend.start.count, backend.stop.count
    rollouts, _ = planner(registry)
    new = new_class(world.klass(), steps=(100,), max_surge=3)
    assert new.rollout.strategy == "surge"
    rollout = rollouts.begin(world.klass(), new)
    assert rollout.strategy == "replace" and rollout.status()["strategy"] == "replace"
    peak = 0
    while rollout.state == "running":
        peak = max(peak, (backend.start.count - starts_before) - (backend.stop.count - stops_before))
        await clock.advance(0.01)
    assert rollout.state == "done" and peak <= 0  # no key ever had its new instance beside the old one
    assert all(m.klass is new and m.state is State.RUNNING for m in registry)
