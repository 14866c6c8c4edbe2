"""Rollouts: a reload changed a class's spec; its running keys move to the new one in gated steps.

Per class one rollout at a time (a newer reload supersedes it). Stopped keys take the new spec at once (their
next start uses it); running (and paused) keys are replaced by proxy/lifecycle/rollout.py's `surge` or
`replace`, at most `max_surge` at once, until each step's percentage of the keys that were running is reached.
A step is passed when its new instances are ready and, GATE_SETTLE seconds later, still running (not crash
looping); a key whose new instance fails halts the rollout: the keys not yet replaced keep their old
instances, and `rollout_halted` goes to the log, the hooks and the metrics. `pause`, `resume` and `undo` (a
rollout back to the spec before) are the operator's (`ctl rollout ...`).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from backends.control import ServicePerKey
from proxy.config.schema import ContainerClass
from proxy.lifecycle.events import State, StopReason
from proxy.lifecycle.manager import Manager
from proxy.lifecycle.registry import Registry
from proxy.lifecycle.rollout import Draining, RolloutFailed, Swapped, replace as replace_key, surge

log = structlog.get_logger("proxy.rollout")
GATE_SETTLE = 1.0  # seconds a step's new instances must stay running before the next step begins
ROLLED = (State.RUNNING, State.PAUSED)  # states whose instance a rollout replaces


@dataclass
class Rollout:
    """One class's rollout: its target, its books, its task."""

    name: str
    old: ContainerClass
    new: ContainerClass
    total: int  # keys running when it began
    strategy: str = "surge"  # what it does: the class's, but `surge` runs as `replace` where it cannot run
    state: str = "running"  # running, paused, halted, done, superseded
    step: int = 0  # index into new.rollout.steps
    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    draining: set[str] = field(default_factory=set)  # keys whose old instance is draining now
    skipped: set[str] = field(default_factory=set)  # left alone (clustered: another replica's key now)
    started: float = field(default_factory=time.time)
    finished: float | None = None
    resume: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def status(self) -> dict[str, Any]:
        policy = self.new.rollout
        return {"container_class": self.name, "state": self.state, "strategy": self.strategy,
                "generation": self.new.spec.generation, "from_generation": self.old.spec.generation,
                "steps": list(policy.steps), "step": self.step, "keys_total": self.total,
                "keys_done": len(self.done), "keys_failed": self.failed, "draining": sorted(self.draining),
                "started": self.started, "seconds": round((self.finished or time.time()) - self.started, 3)}


def step_goal(total: int, percent: int) -> int:
    """Keys replaced by the end of a step: `percent` of `total`, rounded up (a step of 10 % moves at least one)."""
    return min(total, math.ceil(total * percent / 100))


class Rollouts:
    """Every class's rollout; `begin` after a reload applied a class whose spec changed."""

    def __init__(self, registry: Registry, draining: Draining, drain_timeout: float,
                 adopt_class: Callable[[ContainerClass], None], notify: Callable[[dict[str, Any]], None]) -> None:
        self.registry = registry
        self.draining = draining
        self.drain_timeout = drain_timeout
        self.adopt_class = adopt_class  # makes a class the configured one (new keys use it): undo needs it
        self.notify = notify  # hook events: a key's new instance started, its old one stopped, a halt
        self.current: dict[str, Rollout] = {}
        self.halts: dict[str, int] = {}

    def managers(self, name: str) -> list[Manager]:
        return [m for m in self.registry if m.klass.name == name]

    def begin(self, old: ContainerClass, new: ContainerClass) -> Rollout:
        """Roll `name`'s keys from `old` to `new` (which the config already holds: new keys start with it)."""
        if (running := self.current.get(new.name)) is not None and running.task is not None:
            running.state = "superseded"
            running.task.cancel()
        managers = self.managers(new.name)
        for manager in managers:  # not running: the next start takes the new spec, nothing to replace
            if manager.state not in ROLLED and manager.state is not State.STARTING:
                manager.klass = new
        live = [m for m in managers if m.state in ROLLED or m.state is State.STARTING]
        rollout = self.current[new.name] = Rollout(new.name, old, new, len(live), self._strategy(new))
        rollout.resume.set()
        if new.rollout.strategy == "on_idle":  # the running keep their instance; their next start is new
            for manager in live:
                manager.klass = new
            self._finish(rollout, "done")
            return rollout
        rollout.task = asyncio.create_task(self._run(rollout), name=f"rollout:{new.name}")
        log.info("rollout_begin", container_class=new.name, generation=new.spec.generation, keys=len(live),
                 strategy=rollout.strategy)
        return rollout

    def _strategy(self, klass: ContainerClass) -> str:
        """`surge` needs a key's two instances side by side: on a swarm, whose service is one per key whatever
        its spec, the new spec's start would replace the serving instance undrained."""
        one_per_key = isinstance(self.registry.services.backend, ServicePerKey)
        return "replace" if klass.rollout.strategy == "surge" and one_per_key else klass.rollout.strategy

    def pause(self, name: str) -> Rollout:
        rollout = self._get(name)
        if rollout.state == "running":
            rollout.state = "paused"
            rollout.resume.clear()
        return rollout

    def resume(self, name: str) -> Rollout:
        rollout = self._get(name)
        if rollout.state == "paused":
            rollout.state = "running"
            rollout.resume.set()
        elif rollout.state == "halted":  # try again from where it halted
            rollout.state, rollout.failed = "running", {}
            rollout.resume.set()
            rollout.task = asyncio.create_task(self._run(rollout), name=f"rollout:{name}")
        return rollout

    def undo(self, name: str) -> Rollout:
        """Roll back to the spec before, as a rollout of its own (a generation of its own too)."""
        rollout = self._get(name)
        back = replace(rollout.old, spec=replace(rollout.old.spec, generation=rollout.new.spec.generation + 1))
        self.adopt_class(back)
        return self.begin(rollout.new, back)

    def _get(self, name: str) -> Rollout:
        if (rollout := self.current.get(name)) is None:
            raise KeyError(name)
        return rollout

    def status(self) -> list[dict[str, Any]]:
        return [rollout.status() for rollout in self.current.values()]

    async def close(self) -> None:
        tasks = [r.task for r in self.current.values() if r.task is not None and not r.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ---------------------------------------------------------------- the steps

    def pending(self, rollout: Rollout) -> list[Manager]:
        """The class's keys still on an older spec whose instance must be replaced (running or paused)."""
        out = []
        for manager in self.managers(rollout.name):
            if manager.klass is rollout.new or manager.key in rollout.draining or manager.key in rollout.skipped:
                continue
            if manager.state in (State.STOPPED, State.FAILED):
                manager.klass = rollout.new  # stopped meanwhile: its next start is new
            elif manager.state in ROLLED:
                out.append(manager)
        return out

    async def _run(self, rollout: Rollout) -> None:
        policy = rollout.new.rollout
        try:
            for index in range(rollout.step, len(policy.steps)):
                rollout.step = index
                goal = step_goal(rollout.total, policy.steps[index])
                last = index == len(policy.steps) - 1
                moved = await self._step(rollout, goal, everything=last)
                if not await self._gate(rollout, moved):
                    return
            self._finish(rollout, "done")
        except asyncio.CancelledError:
            if rollout.state != "superseded":
                rollout.state = "cancelled"
            raise

    async def _step(self, rollout: Rollout, goal: int, everything: bool) -> list[Manager]:
        """Replace keys (max_surge at once) until `goal` are done (the last step: until none is pending)."""
        policy = rollout.new.rollout
        moved: list[Manager] = []
        running: set[asyncio.Task[Swapped | None]] = set()
        while True:
            await rollout.resume.wait()
            pending = [m for m in self.pending(rollout) if m.key not in rollout.failed]
            want = len(pending) if everything else max(0, goal - len(rollout.done) - len(running))
            for manager in pending[:max(0, min(want, policy.max_surge - len(running)))]:
                rollout.draining.add(manager.key)
                moved.append(manager)
                running.add(asyncio.create_task(self._one(rollout, manager)))
            if not running:
                if everything and any(m.state is State.STARTING and m.klass is not rollout.new
                                      for m in self.managers(rollout.name)):
                    await asyncio.sleep(0.1)  # began with the old spec before the reload: replaced once ready
                    continue
                return moved
            finished, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            if rollout.failed:  # halt: let the ones under way finish, start no more
                await asyncio.gather(*running, return_exceptions=True)
                return moved

    async def _one(self, rollout: Rollout, manager: Manager) -> Swapped | None:
        try:
            if manager.state is State.PAUSED:  # idle and frozen: stopped; its next request starts the new spec
                manager.klass = rollout.new
                await manager.stop(StopReason.ROLLOUT)
                swapped = Swapped(manager.key, None, None)
            elif rollout.strategy == "replace":
                swapped = await replace_key(manager, rollout.new, self.drain_timeout)
            else:
                swapped = await surge(manager, rollout.new, self.draining, self.drain_timeout)
        except RolloutFailed as exc:
            rollout.failed[manager.key] = str(exc)
            return None
        finally:
            rollout.draining.discard(manager.key)
        if manager.klass is not rollout.new and manager.state in ROLLED:  # left alone: not this replica's now
            rollout.skipped.add(manager.key)
            log.info("rollout_skipped", container_class=rollout.name, key=manager.key, why="; ".join(swapped.notes))
            return swapped
        rollout.done.append(manager.key)
        self._told(rollout, swapped)
        log.info("rollout_key", container_class=rollout.name, key=manager.key, generation=rollout.new.spec.generation,
                 seconds=round(swapped.seconds, 3), websockets_closed=swapped.closed_sockets)
        return swapped

    def _told(self, rollout: Rollout, swapped: Swapped) -> None:
        """The hooks hear a replaced key's new instance start and its old one stop, each with its generation."""
        now = time.time()
        for event, instance, klass in (("start", swapped.new, rollout.new), ("stop", swapped.old, rollout.old)):
            if instance is not None:
                self.notify({"event": event, "key": swapped.key, "container": rollout.name, "reason": "rollout",
                             "timestamp": now, "address": instance.url, "generation": klass.spec.generation})

    async def _gate(self, rollout: Rollout, moved: Iterable[Manager]) -> bool:
        """After a step: its new instances still running GATE_SETTLE seconds on (not crash looping)."""
        if not rollout.failed:
            await asyncio.sleep(GATE_SETTLE)
            for manager in moved:
                if manager.klass is rollout.new and manager.state in (State.STOPPED, State.FAILED) \
                        and manager.last_error:
                    rollout.failed[manager.key] = f"crashed after the switch: {manager.last_error}"
        if not rollout.failed:
            return True
        self._finish(rollout, "halted")
        self.halts[rollout.name] = self.halts.get(rollout.name, 0) + 1
        reason = "; ".join(f"{key}: {why}" for key, why in rollout.failed.items())
        log.warning("rollout_halted", container_class=rollout.name, generation=rollout.new.spec.generation,
                    keys_done=len(rollout.done), reason=reason)
        self.notify({"event": "rollout_halted", "container": rollout.name, "key": "",
                      "generation": rollout.new.spec.generation, "reason": reason, "timestamp": time.time(),
                      "keys_done": len(rollout.done), "keys_failed": sorted(rollout.failed)})
        return False

    def _finish(self, rollout: Rollout, state: str) -> None:
        rollout.state, rollout.finished = state, time.time()
        if state == "done":
            log.info("rollout_done", container_class=rollout.name, generation=rollout.new.spec.generation,
                     keys=len(rollout.done), seconds=round(rollout.finished - rollout.started, 3))


class RolloutCollector(Collector):
    """`proxy_rollout_instances{container_class,generation,state}` and the rollouts' durations and halts."""

    def __init__(self, rollouts: Rollouts) -> None:
        self.rollouts = rollouts

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, CounterMetricFamily]:
        return (GaugeMetricFamily("proxy_rollout_instances", "Instances per class, spec generation and state "
                                  "(`draining`: the old instance of a key a surge is replacing).",
                                  labels=["container_class", "generation", "state"]),
                GaugeMetricFamily("proxy_rollout_duration_seconds", "How long the class's last rollout took "
                                  "(so far, while it runs).", labels=["container_class"]),
                CounterMetricFamily("proxy_rollout_halted", "Rollouts halted by a new instance that failed.",
                                    labels=["container_class"]))

    def describe(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        return self._families()

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        instances, duration, halted = self._families()
        counts: dict[tuple[str, str, str], int] = {}
        for manager in self.rollouts.registry:
            if manager.state in (State.STOPPED, State.FAILED):
                continue
            labels = (manager.klass.name, str(manager.klass.spec.generation), manager.state.value)
            counts[labels] = counts.get(labels, 0) + 1
        for rollout in self.rollouts.current.values():
            if rollout.draining and rollout.strategy == "surge":  # replace: no second instance
                labels = (rollout.name, str(rollout.old.spec.generation), "draining")
                counts[labels] = counts.get(labels, 0) + len(rollout.draining)
        for labels, count in sorted(counts.items()):
            instances.add_metric(list(labels), count)
        for name, rollout in self.rollouts.current.items():
            duration.add_metric([name], (rollout.finished or time.time()) - rollout.started)
            halted.add_metric([name], self.rollouts.halts.get(name, 0))
        return (instances, duration, halted)
