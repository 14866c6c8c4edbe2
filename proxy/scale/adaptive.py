"""Pre-warm learned from traffic (`prewarm: adaptive`): start a key's instance shortly before it is likely needed.

A fixed keepalive cron pays for idle time all day to avoid a cold start that may never come. Instead, per key
and time-of-day slot (`SLOT` seconds), `Learner` keeps how often the slot saw activity on past days, as an
exponentially weighted average updated lazily (O(1) per key and slot with activity: a day the slot passed
without activity decays it). `Planner` starts a key's instance a lead time (the class's observed start
duration) before a slot whose likelihood is at least `threshold`, charging each pre-warm `cost` seconds
(sleep_after: what an unused pre-warm runs for) against a per-key budget of running seconds per day.

Both are pure (times in, decisions out) so the week-long replay in bench/prewarm.py and the unit tests drive
them on a virtual clock; `AdaptivePrewarm` applies them to a proxy's managers on a timer. Activity is read from
each manager's `last_activity` at every tick, so the request path pays nothing for the learning.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

from proxy.config.schema import Config
from proxy.config.containers import PREWARM_BUDGET
from proxy.lifecycle.events import ACTIVE, Event, Happening, Transition
from proxy.scale.periodic import Periodic
from proxy.scale.prewarm import Gate
from proxy.lifecycle.registry import Registry

SLOT = 300.0  # seconds per time-of-day slot
DAY = 86400.0
ALPHA = 0.3  # weight of the latest day in a slot's likelihood
THRESHOLD = 0.3  # likelihood of activity in a slot that earns a pre-warm
FIRST = 0.5  # a slot's likelihood after its first day with activity
TICK = 30.0  # seconds between looks at activity and at the slots ahead
MAX_KEYS = 10_000  # keys learned at most (clients choose keys: the table must stay bounded)


@dataclass(slots=True)
class SlotStat:
    """A slot's likelihood as of the last day it saw activity."""

    p: float
    day: int


class Learner:
    """Per key, per time-of-day slot: the weighted share of past days the slot saw activity."""

    def __init__(self, alpha: float = ALPHA, slot: float = SLOT) -> None:
        self.alpha = alpha
        self.slot = slot
        self.keys: dict[str, dict[int, SlotStat]] = {}
        self.slots_per_day = int(DAY // slot)

    def _where(self, t: float) -> tuple[int, int]:
        day, into = divmod(t, DAY)
        return int(day), int(into // self.slot)

    def observe(self, key: str, t: float) -> None:
        """Activity of `key` at (epoch) time `t`."""
        day, slot = self._where(t)
        slots = self.keys.get(key)
        if slots is None:
            if len(self.keys) >= MAX_KEYS:
                return
            slots = self.keys[key] = {}
        stat = slots.get(slot)
        if stat is None:
            slots[slot] = SlotStat(FIRST, day)
        elif stat.day != day:
            stat.p = self._decayed(stat, day) * (1 - self.alpha) + self.alpha
            stat.day = day

    def _decayed(self, stat: SlotStat, day: int) -> float:
        """The likelihood after the days since `stat.day` (before `day`) that passed without activity."""
        return stat.p * (1 - self.alpha) ** max(0, day - stat.day - 1)

    def likely(self, key: str, t: float) -> float:
        """How likely activity of `key` is in the slot at time `t`; a neighbouring slot's counts half (a daily
        habit drifts by minutes across a slot boundary)."""
        day, slot = self._where(t)
        slots = self.keys.get(key)
        if not slots:
            return 0.0
        best = 0.0
        for at, weight in ((slot, 1.0), (slot - 1, 0.5), (slot + 1, 0.5)):
            stat = slots.get(at % self.slots_per_day)
            if stat is not None:
                best = max(best, weight * (stat.p if stat.day == day else self._decayed(stat, day)))
        return best


@dataclass
class Planner:
    """Which keys to pre-warm now, within each key's daily budget of running seconds."""

    learner: Learner = field(default_factory=Learner)
    threshold: float = THRESHOLD
    budget: float = PREWARM_BUDGET  # running seconds per key per day that pre-warms may cost
    spent: dict[str, tuple[int, float]] = field(default_factory=dict)  # key -> (day, seconds charged)
    planned: dict[str, float] = field(default_factory=dict)  # key -> the slot start it was pre-warmed for
    charged: dict[str, float] = field(default_factory=dict)  # key -> its last pre-warm's charge, until used

    def observe(self, key: str, t: float) -> None:
        """Activity of `key` at `t`: learned; a pre-warm it used is refunded all but its time before the use."""
        self.learner.observe(key, t)
        start = self.planned.get(key)
        if start is not None and start - self.learner.slot <= t < start + self.learner.slot:
            day, spent = self.spent.get(key, (0, 0.0))
            self.spent[key] = (day, max(0.0, spent - self.charged.pop(key, 0.0)))

    def due(self, now: float, lead: float, cost: float, keys: Iterable[str] | None = None) -> list[str]:
        """Keys to warm now (start, or keep running through the slot): the slot starting within `lead` + one
        tick is likely. Each is charged `cost` (sleep_after: an unused pre-warm's running time) until used."""
        slot = self.learner.slot
        start = math.ceil((now + lead) / slot) * slot  # the next slot boundary after the lead time
        if start - now - lead > TICK:
            return []  # not yet: the next tick still starts it in time
        day = int(now // DAY)
        out = []
        for key in self.learner.keys if keys is None else keys:
            if self.planned.get(key) == start or self.learner.likely(key, start) < self.threshold:
                continue
            spent_day, spent = self.spent.get(key, (day, 0.0))
            spent = spent if spent_day == day else 0.0
            if spent + cost > self.budget:
                continue
            self.spent[key] = (day, spent + cost)
            self.planned[key] = start
            self.charged[key] = cost
            out.append(key)
        return out


class AdaptivePrewarm(Periodic):
    """`prewarm: adaptive` classes of one proxy: learns from their managers' activity, starts what is due."""

    def __init__(self, config: Config, registry: Registry, clock: Callable[[], float],
                 gate: Gate | None = None) -> None:
        super().__init__()
        self.registry = registry
        self.clock = clock
        self.gate = gate  # clustered: a key is pre-warmed by its owner only (as schedules are)
        self.classes = {name for name, c in config.containers.items() if c.prewarm == "adaptive"}
        self.planners = {name: Planner(budget=config.containers[name].prewarm_budget) for name in self.classes}
        self.lead = {name: 0.0 for name in self.classes}  # observed start duration per class (weighted)
        self.seen: dict[tuple[str, str], float] = {}  # last_activity already learned (or our own start's)
        registry.services.bus.subscribe(self._on_event)

    def _on_event(self, event: Event) -> None:
        if isinstance(event, Transition) and event.happening is Happening.STARTED and event.class_name in self.lead:
            old = self.lead[event.class_name]
            self.lead[event.class_name] = event.duration if not old else 0.7 * old + 0.3 * event.duration

    def start(self) -> None:
        if self.classes:
            super().start()

    def tick(self) -> None:
        now = self.clock()
        loop = asyncio.get_running_loop()
        for manager in self.registry:
            name = manager.klass.name
            if name in self.classes and manager.last_activity and \
                    self.seen.get((name, manager.key)) != manager.last_activity:
                self.seen[(name, manager.key)] = manager.last_activity
                self.planners[name].observe(manager.key, now - (loop.time() - manager.last_activity))
        for name, planner in self.planners.items():
            klass = self.registry.config.containers[name]

            for key in planner.due(now, self.lead[name], klass.sleep_after):
                self.spawn(self._warm(name, key))
        self.again(TICK)

    async def _warm(self, name: str, key: str) -> None:
        """Start the key's instance, or keep a running one through the slot (its idle timer from now)."""
        if self.gate is not None and not await self.gate(name, key):
            return
        manager = self.registry.get(key, name)
        if manager.state in ACTIVE:
            manager.touch()
            self.seen[(name, key)] = manager.last_activity
            return
        try:
            await manager.ensure_running(reason="prewarm")
        except Exception:  # noqa: BLE001 - a failed start shows on the key (last_error, breaker)
            return
        self.seen[(name, key)] = manager.last_activity  # our own start is not activity to learn from
