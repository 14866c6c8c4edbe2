"""Concurrency autoscaling for `mode: lb` routes with `target_concurrency` (Knative's KPA, in small).

`Autoscaler` is the decision alone, fed samples of (in-flight, ready) on a timer: the desired count is
the average in-flight over the stable window divided by the target, rounded up; a burst that makes the
short panic window's figure at least twice the ready count enters panic mode, in which the count never
goes down, until the stable window has passed without such a burst. Always within [min, max].

`RouteScaler` applies it to one route's pool: samples the members every tick, starts cold members up to
the desired count in the background (before the ready ones saturate, as the target is below what an
instance can take), and stops surplus members once idle; requests go to the least-loaded ready member
(`pick`), so a request waits for a start only when no member is ready.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from dataclasses import dataclass
from typing import Awaitable, Callable, Iterable

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from proxy.keys import member_key
from proxy.config.schema import Route
from proxy.lifecycle.events import ACTIVE, State, StopReason
from proxy.lifecycle.manager import Manager
from proxy.scale.periodic import Periodic
from proxy.lifecycle.registry import Registry

PANIC_THRESHOLD = 2.0  # the panic window's desired count over the ready count that starts panic mode
PANIC_SHARE = 0.1  # the panic window, as a share of the stable window (Knative's default: 10%)
SAMPLES_PER_PANIC_WINDOW = 6  # ticks per panic window (Knative: 6 s panic window, 1 s ticks)
SERVING = frozenset({State.STARTING, State.RUNNING})  # members that take (or are about to take) requests


@dataclass(frozen=True)
class ScalePolicy:
    target: float  # in-flight requests per ready instance
    min_instances: int
    max_instances: int
    stable_window: float

    @property
    def panic_window(self) -> float:
        return self.stable_window * PANIC_SHARE

    @property
    def tick(self) -> float:
        return self.panic_window / SAMPLES_PER_PANIC_WINDOW


class Autoscaler:
    """The desired instance count from in-flight samples (no I/O: tested on a virtual clock)."""

    def __init__(self, policy: ScalePolicy) -> None:
        self.policy = policy
        self.samples: deque[tuple[float, int]] = deque()  # (time, in-flight), within the stable window
        self.desired = policy.min_instances
        self.panic_until = -math.inf  # panic mode lasts until then

    def panicking(self, now: float) -> bool:
        return now < self.panic_until

    def observe(self, now: float, in_flight: int, ready: int) -> int:
        """Add a sample; the desired count."""
        policy = self.policy
        samples = self.samples
        samples.append((now, in_flight))
        while samples[0][0] <= now - policy.stable_window:
            samples.popleft()
        stable = self._want(v for _, v in samples)
        panic = self._want(v for t, v in samples if t > now - policy.panic_window)
        if panic >= PANIC_THRESHOLD * max(ready, 1) and panic > ready:
            self.panic_until = now + policy.stable_window
        desired = max(self.desired, panic, stable) if self.panicking(now) else stable
        self.desired = min(max(desired, policy.min_instances), policy.max_instances)
        return self.desired

    def _want(self, values: Iterable[int]) -> int:
        window = list(values)
        return math.ceil(sum(window) / len(window) / self.policy.target) if window else 0


class RouteScaler(Periodic):
    """One autoscaled lb route: its pool members, the timer that samples them, and the picking rule."""

    def __init__(self, route: Route, registry: Registry) -> None:
        super().__init__()
        self.route = route
        self.registry = registry
        limit = registry.config.containers[route.container].max_instances
        size = min(route.pool_size, limit)
        self.members = [registry.get(member_key(route.key, i), route.container) for i in range(size)]
        self.autoscaler = Autoscaler(ScalePolicy(route.target_concurrency, min(route.min_instances, size), size,
                                                 route.scale_window))
        # Clustered: whether this replica owns (class, member key) (the pool is owned as one unit); a replica
        # that does not own it leaves the pool alone (its requests are forwarded to the owner).
        self.owns: Callable[[str, str], bool] | None = None

    @property
    def ready(self) -> int:
        return sum(m.state is State.RUNNING for m in self.members)

    @property
    def desired(self) -> int:
        return self.autoscaler.desired

    def pick(self) -> Manager:
        """The least-loaded ready member; with none ready, a starting (or paused) one, else the first cold one."""
        best: Manager | None = None
        for m in self.members:
            if m.state is State.RUNNING and (best is None or m.in_flight < best.in_flight):
                best = m
                if not m.in_flight:
                    break
        if best is not None:
            return best
        return next((m for m in self.members if m.state in ACTIVE), self.members[0])

    def tick(self) -> None:
        loop = asyncio.get_running_loop()
        in_flight = sum(m.in_flight for m in self.members)
        if self.owns is None or self.owns(self.route.container, self.members[0].key):
            self.apply(self.autoscaler.observe(loop.time(), in_flight, self.ready), loaded=in_flight > 0)
        self.again(self.autoscaler.policy.tick)

    def apply(self, desired: int, loaded: bool = True) -> None:
        """Up to `desired` warm members: under load (`loaded`) paused ones are woken to serve, then cold ones
        started while the class has room (a paused member is warm: with no load it stays paused); idle ones
        beyond it are stopped."""
        serving = [m for m in self.members if m.state in SERVING]
        warm = [m for m in self.members if m.state in SERVING or m.state is State.PAUSED]
        for m in self.members:
            if not loaded or len(serving) >= desired:
                break
            if m.state is State.PAUSED:
                serving.append(m)
                self._spawn(m.ensure_running(reason="autoscale"))
        capacity = self.registry.services.capacity
        for m in self.members:
            if len(warm) >= desired:
                break
            if m.state not in ACTIVE and not m.breaker.is_open and capacity.may_start(m.klass.name):
                warm.append(m)
                self._spawn(m.ensure_running(reason="autoscale"))
        surplus = len(warm) - desired
        for m in reversed(warm):  # the highest members go first: the low ones stay warm
            if surplus <= 0:
                break
            if m.state in (State.RUNNING, State.PAUSED) and not m.in_flight:
                surplus -= 1
                self._spawn(m.stop(StopReason.IDLE, drain=self.registry.config.upstream_timeout))

    def _spawn(self, work: Awaitable[object]) -> None:
        async def run() -> None:
            try:
                await work
            except Exception:  # noqa: BLE001 - a failed start shows on the key (last_error, breaker)
                pass

        self.spawn(run())


def scaler_for(route: Route, registry: Registry) -> RouteScaler | None:
    """The route's scaler if it autoscales (an lb route with a target_concurrency)."""
    return RouteScaler(route, registry) if route.mode == "lb" and route.target_concurrency else None


class ScaleCollector(Collector):
    """Desired vs ready instances per autoscaled route, read at scrape time."""

    def __init__(self, scalers: Iterable[RouteScaler]) -> None:
        self.scalers = list(scalers)

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (GaugeMetricFamily("proxy_route_desired_instances", "Instances the autoscaler wants for an lb "
                                  "route.", labels=["route"]),
                GaugeMetricFamily("proxy_route_ready_instances", "Ready instances of an lb route's pool.",
                                  labels=["route"]))

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return self._families()

    def collect(self) -> Iterable[GaugeMetricFamily]:
        desired, ready = self._families()
        for scaler in self.scalers:
            desired.add_metric([scaler.route.name], scaler.desired)
            ready.add_metric([scaler.route.name], scaler.ready)
        return (desired, ready)
