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

from backends.base import ContainerSpec, Instance
from backends.control import Generational, SpecHashed
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
        self._hashes: dict[str, tuple[ContainerSpec, str]] = {}  # class -> (its spec, that spec's hash)

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
        await self.stop_unadopted(listed)
        return adopted

    async def stop_unadopted(self, listed: list[Instance], *, checked: bool = True) -> None:
        """A listed running instance no manager took is stopped (nothing of this process can be in flight on it
        yet; `checked` as `adopt`'s), in two cases. A key found running twice (a proxy stopped in the middle of a
        surge rollout: the old generation's and the new one's): the one not adopted. An instance of another spec
        than the configured one (the config changed while the proxy was down, or a cluster's previous owner ran
        another config): the key's next start runs the configured spec, as a reload's rollout would have made it."""
        generational = isinstance(self.services.backend, Generational)  # (two tasks of one swarm service are one)
        for instance in listed:
            stale = self.stale(instance)
            if stale and checked and self.admits is not None and not self.admits(instance.class_name, instance.key):
                continue  # (clustered: another replica's key)
            manager = self.peek(instance.key, instance.class_name)
            second = (generational and manager is not None and manager.instance is not None
                      and manager.instance.id != instance.id)
            if not (stale or second):
                continue
            kept = manager.instance.id[:12] if manager is not None and manager.instance is not None else None
            log.warning("stale_instance_stopped" if stale else "second_instance_stopped", key=instance.key,
                        container=instance.class_name, kept=kept, stopped=instance.id[:12])
            try:
                await self.services.backend.stop(instance)
            except Exception as exc:  # noqa: BLE001 - start-up goes on; the reconciler lists it again
                log.warning("unadopted_instance_stop_failed", key=instance.key, reason=str(exc))

    def stale(self, instance: Instance) -> bool:
        """Started with another spec than its class's configured one (as far as the backend can tell)."""
        backend, klass = self.services.backend, self.config.containers.get(instance.class_name)
        if not instance.spec or klass is None or not isinstance(backend, SpecHashed):
            return False
        known = self._hashes.get(klass.name)  # (hashed once per class spec: the reconciler asks every listing)
        if known is None or known[0] is not klass.spec:
            known = self._hashes[klass.name] = (klass.spec, backend.spec_hash(klass.spec))
        return known[1] != instance.spec

    def adopt(self, instances: list[Instance], *, checked: bool = True, listed_at: float | None = None) -> int:
        """Take over listed running instances of known classes whose manager is `stopped`; how many.

        `checked`: only of keys `admits` (a cluster's owner adopting a key it is claiming passes False).
        `listed_at`: the loop time the runtime was asked; a manager that changed state since is left alone (the
        list may show the instance it has just stopped: adopting that would serve from a dead one). An instance
        of another spec than the configured one is not adopted (`stale`)."""
        adopted = 0
        for instance in instances:
            if instance.class_name not in self.config.containers or self.stale(instance):
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
