"""The Registry: (container class, key) -> Manager, created on first use.

A key belongs to its class: `/container/abc` on one class's route and `abc` on another class are two
managers and two instances. Managers cost a few hundred bytes until started, so 100k keys are cheap.
Capacity, readiness probing and the lb policy live in their own modules; this is lookup only.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Callable, Iterator

import structlog

from backends.base import Instance
from backends.control import Generational
from proxy.keys import member_key
from proxy.lifecycle.balance import least_loaded
from proxy.config.schema import Config
from proxy.lifecycle.events import State, StopReason
from proxy.lifecycle.manager import Manager, Services

log = structlog.get_logger("proxy.manager")


class Registry:
    def __init__(self, config: Config, services: Services) -> None:
        self.config = config
        self.services = services
        self.managers: dict[tuple[str, str], Manager] = {}
        # When each manager was made, in the same (insertion) order: ascending numbers a listing's cursor can
        # resume from by bisection (proxy/observe/listing.py). A key that is dropped and made again goes last.
        self.order: dict[tuple[str, str], int] = {}
        self._made = itertools.count(1)
        # In a cluster, only keys owned here may be adopted (proxy/cluster/owner.py); None: every key.
        self.admits: Callable[[str, str], bool] | None = None

    def get(self, key: str, class_name: str) -> Manager:
        """The manager for `key` of class `class_name` (created on first use)."""
        manager = self.managers.get((class_name, key))
        if manager is None:
            manager = self.managers[(class_name, key)] = Manager(key, self.config.containers[class_name],
                                                                self.services)
            self.order.pop((class_name, key), None)
            self.order[(class_name, key)] = next(self._made)
        return manager

    def peek(self, key: str, class_name: str) -> Manager | None:
        """The manager for `key` if there is one (a read must not create managers)."""
        return self.managers.get((class_name, key))

    def __iter__(self) -> Iterator[Manager]:
        return iter(list(self.managers.values()))

    def pick_lb(self, base_key: str, class_name: str, instances: int) -> Manager:
        pool = [self.get(member_key(base_key, i), class_name) for i in range(instances)]
        return least_loaded(pool, lambda: self.services.capacity.may_start(class_name))

    async def adopt_running(self) -> int:
        """After a proxy restart, take over the running instances this proxy owns.

        Stopped ones stay as a warm-restart cache when `backend.reuse_stopped` is on, else are removed.
        """
        backend = self.services.backend
        if not self.config.backend.reuse_stopped:
            await backend.cleanup_stopped()
        asked = asyncio.get_running_loop().time()
        listed = await backend.list_instances()
        adopted = self.adopt(listed, listed_at=asked)
        await self._stop_second_instances(listed)
        return adopted

    async def _stop_second_instances(self, listed: list[Instance]) -> None:
        """A key has one instance. Two running for one key (a proxy stopped in the middle of a surge rollout:
        the old generation's and the new one's) would leave one running unmanaged: the one not adopted is
        stopped (nothing of this process can be in flight on it yet)."""
        if not isinstance(self.services.backend, Generational):  # two running tasks of one swarm service are one
            return
        for instance in listed:
            manager = self.peek(instance.key, instance.class_name)
            if manager is None or manager.instance is None or manager.instance.id == instance.id:
                continue
            log.warning("second_instance_stopped", key=instance.key, container=instance.class_name,
                        kept=manager.instance.id[:12], stopped=instance.id[:12])
            try:
                await self.services.backend.stop(instance)
            except Exception as exc:  # noqa: BLE001 - start-up goes on; the reconciler lists it again
                log.warning("second_instance_stop_failed", key=instance.key, reason=str(exc))

    def adopt(self, instances: list[Instance], *, checked: bool = True, listed_at: float | None = None) -> int:
        """Take over listed running instances of known classes whose manager is `stopped`; how many.

        `checked`: only of keys `admits` (a cluster's owner adopting a key it is claiming passes False).
        `listed_at`: the loop time the runtime was asked; a manager that changed state since is left alone (the
        list may show the instance it has just stopped: adopting that would serve from a dead one)."""
        adopted = 0
        for instance in instances:
            if instance.class_name not in self.config.containers:
                continue
            if checked and self.admits is not None and not self.admits(instance.class_name, instance.key):
                continue
            manager = self.get(instance.key, instance.class_name)
            if manager.state is State.STOPPED and (listed_at is None or manager.changed_at <= listed_at):
                manager.adopt(instance)
                adopted += 1
        return adopted

    async def stop_all(self, reason: StopReason = StopReason.SHUTDOWN) -> None:
        await asyncio.gather(*(m.stop(reason) for m in self), return_exceptions=True)
