"""An honest Retry-After: how long a refused client should wait, from what the proxy knows, one rule per case.

- **start failed**: the next request starts again at once, so about one start: the p90 of the class's last
  RECENT start durations (NO_HISTORY before the class's first start), or the backend's own hint when longer
  (a daemon that cannot be reached says 2 s). If the failure opened the crash-loop breaker: its backoff.
- **crash loop** (breaker open): the breaker's remaining backoff (the manager sets it when it refuses).
- **capacity exceeded**: until a slot can free and a start completes: the soonest an instance of the class
  stops (at once for one already stopping; for an idle running one its last activity + sleep_after; with
  every one busy, sleep_after from now), plus the p90 start. Starts queued ahead (`capacity_wait`) may
  take that slot first: it is the earliest, not a promise.
- **not warm** (a warm-only route never starts): while the key is starting, the p90 start less what it has
  taken so far; when a keepalive or cron job warms the key, until its next tick plus the p90 start; else
  nothing the proxy knows of will warm it, and the 503 carries no Retry-After.
Anything else keeps its class's constant (proxy/errors.py). The capacity scan over the class's keys is
cached for CAPACITY_CACHE seconds, so a herd at the limit costs one scan, not one per refusal.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from typing import Callable, Mapping, Sequence

from proxy.errors import BreakerOpen, CapacityExceeded, NotWarm, Refusal, StartFailed
from proxy.lifecycle.events import Event, EventBus, Happening, State, Transition
from proxy.lifecycle.manager import Manager
from proxy.lifecycle.registry import Registry
from proxy.scale.schedule import Job

RECENT = 20  # start durations remembered per class
NO_HISTORY = 1.0  # seconds: the expected start of a class that has not started yet
CAPACITY_CACHE = 0.5  # seconds a class's soonest-free-slot estimate is reused


class StartTimes:
    """The last RECENT start durations (start requested -> ready) per class, from the event bus."""

    def __init__(self, bus: EventBus) -> None:
        self._recent: dict[str, deque[float]] = {}
        bus.subscribe(self._on_event)

    def _on_event(self, event: Event) -> None:
        if isinstance(event, Transition) and event.happening is Happening.STARTED:
            self._recent.setdefault(event.class_name, deque(maxlen=RECENT)).append(event.duration)

    def p90(self, class_name: str) -> float:
        recent = sorted(self._recent.get(class_name, ()))
        if not recent:
            return NO_HISTORY
        return recent[min(len(recent) - 1, math.ceil(0.9 * len(recent)) - 1)]


class RetryAdvisor:
    def __init__(self, registry: Registry, bus: EventBus, warms: Mapping[tuple[str, str], Sequence[Job]],
                 wall_clock: Callable[[], float]) -> None:
        self.registry = registry
        self.starts = StartTimes(bus)
        self.warms = warms  # (class, key) -> the keepalive and cron jobs that start it
        self.wall_clock = wall_clock  # the scheduler's clock (jobs' next_at)
        self._starting: dict[tuple[str, str], float] = {}  # (class, key) -> loop time its start began
        self._soonest: dict[str, tuple[float, float | None]] = {}  # class -> (computed at, seconds from then)
        bus.subscribe(self._on_event)

    def _on_event(self, event: Event) -> None:
        if isinstance(event, Transition) and State.STARTING in (event.old, event.new):
            at = (event.class_name, event.key)
            if event.new is State.STARTING:
                self._starting[at] = asyncio.get_running_loop().time()
            else:
                self._starting.pop(at, None)

    def advise(self, refusal: Refusal, manager: Manager) -> None:
        """Set `refusal.retry_after` by the rules above (breaker refusals already carry theirs)."""
        if isinstance(refusal, BreakerOpen):
            return
        now = asyncio.get_running_loop().time()
        name = manager.klass.name
        start = self.starts.p90(name)
        if isinstance(refusal, StartFailed):
            backoff = manager.breaker.wait(now)
            _retry_after(refusal, backoff if backoff > 0 else max(refusal.retry_after or 0.0, start))
        elif isinstance(refusal, CapacityExceeded):
            soonest = self._soonest_free(name, now)
            _retry_after(refusal, None if soonest is None else soonest + start)
        elif isinstance(refusal, NotWarm):
            _retry_after(refusal, self._until_warm(manager, now, start))

    def _until_warm(self, manager: Manager, now: float, start: float) -> float | None:
        began = self._starting.get((manager.klass.name, manager.key))
        if manager.state is State.STARTING and began is not None:
            return max(0.0, start - (now - began))
        jobs = self.warms.get((manager.klass.name, manager.key), ())
        if not jobs:
            return None
        return max(0.0, min(job.next_at for job in jobs) - self.wall_clock()) + start

    def _soonest_free(self, name: str, now: float) -> float | None:
        """Seconds until an instance of the class stops by itself; None when none ever does (sleep_after 0)."""
        cached = self._soonest.get(name)
        if cached is not None and now - cached[0] < CAPACITY_CACHE:
            return None if cached[1] is None else max(0.0, cached[1] - (now - cached[0]))
        sleep_after = self.registry.config.containers[name].sleep_after
        soonest = sleep_after if sleep_after > 0 else None  # one that goes idle now (or is still starting)
        for manager in self.registry:
            if manager.klass.name != name:
                continue
            if manager.state is State.STOPPING:
                soonest = 0.0
                break
            if manager.state is State.RUNNING and manager.in_flight == 0 and soonest is not None:
                soonest = min(soonest, max(0.0, manager.last_activity + sleep_after - now))
        self._soonest[name] = (now, soonest)
        return soonest


def _retry_after(refusal: Refusal, seconds: float | None) -> None:
    """Over the class's constant; None: no Retry-After header at all."""
    refusal.retry_after = seconds
