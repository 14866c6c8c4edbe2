"""What a Manager needs from outside, declared where it is consumed: the runtime, the event bus, the capacity
count, readiness, the connection pools and (clustered) the fence; and the lease a request holds.

Kept apart from proxy/lifecycle/manager.py so the Manager's module holds its lifecycle and nothing else.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from backends.base import Backend, Instance
from proxy.config.schema import ContainerClass, Readiness
from proxy.lifecycle.capacity import Capacity
from proxy.lifecycle.events import EventBus, State, StopReason
from proxy.lifecycle.readiness import LastSeen


class Idle(Protocol):
    """A key's idle timer (proxy/lifecycle/idle.py), as its other components use it."""

    def cancel(self) -> None: ...
    def rearm(self) -> None: ...


class FencedKey(Protocol):
    """What the fence reads of a manager: which key of which class it is."""

    @property
    def key(self) -> str: ...
    @property
    def klass(self) -> ContainerClass: ...


class Prober(Protocol):
    """Waits until a started instance is ready; proxy/lifecycle/readiness.py's `ReadinessProber` is the one."""

    async def wait_ready(self, instance: Instance, readiness: Readiness, seen: LastSeen) -> None: ...


class InstancePools(Protocol):
    def forget(self, instance: Instance) -> None: ...


class Fence(Protocol):
    """Clustered only (proxy/cluster/owner.py): may this replica act on the manager's key now. `holds` is
    asked, without awaiting, before every start, resume, pause and idle stop; `confirm` asks the store right
    before a running instance is stopped or paused. Unclustered there is no fence and nothing is asked."""

    def holds(self, manager: FencedKey) -> bool: ...

    async def confirm(self, manager: FencedKey) -> bool: ...


class ManagedKey(Protocol):
    """What every component of a key's manager (proxy/lifecycle/manager.py) uses of it: the `HealthWatch`'s
    `WatchedKey`, the `Pauser`'s `PausedKey` and the `IdleTimer`'s `IdleKey` each add what only it needs.
    The underscored members are the manager's own steps, shared with its components and called from nowhere
    else."""

    @property
    def key(self) -> str: ...
    @property
    def state(self) -> State: ...
    @property
    def instance(self) -> Instance | None: ...
    @property
    def services(self) -> Services: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def idle(self) -> Idle: ...
    def _transition(self, new: State, reason: str) -> None: ...
    def _begin_stop(self, reason: StopReason) -> asyncio.Task[None] | None: ...


@dataclass(frozen=True)
class Services:
    """What every manager shares: the runtime, the event bus, the capacity count, readiness, pools."""

    backend: Backend
    bus: EventBus
    capacity: Capacity
    prober: Prober
    pools: InstancePools
    fence: Fence | None = None


@dataclass(slots=True)
class Lease:
    """A request's hold on a running instance; `cold_wait` is set when it waited for a start."""

    instance: Instance
    cold_wait: float | None
