"""The Registry: key -> Manager, plus what managers share (backend, readiness probe, capacity).

Managers are created on first use and cost a few hundred bytes until started, so 100k keys are cheap.
"""

from __future__ import annotations

import asyncio
from typing import Callable, Iterator

import aiohttp

from backends.base import Backend, BackendError, Instance, InstanceState
from proxy.config import Config, ContainerClass, Readiness
from proxy.events import ACTIVE, EventBus, Transition
from proxy.manager import Manager


class Registry:
    def __init__(self, config: Config, backend: Backend, bus: EventBus | None = None) -> None:
        self.config = config
        self.backend = backend
        self.bus = bus or EventBus()
        self.managers: dict[str, Manager] = {}
        self._active: dict[str, int] = {name: 0 for name in config.containers}
        self._probe: aiohttp.ClientSession | None = None
        self.cold_wait_observer: Callable[[str, float], None] = lambda container, seconds: None
        self.bus.subscribe(self._count_active)

    # ------------------------------------------------------------------ lookup

    def get(self, key: str, container: str) -> Manager:
        """The manager for `key` (created on first use). A key belongs to the class it was first used with."""
        manager = self.managers.get(key)
        if manager is None:
            manager = self.managers[key] = Manager(key, self.config.containers[container], self)
        return manager

    def __iter__(self) -> Iterator[Manager]:
        return iter(list(self.managers.values()))

    def pick_lb(self, base_key: str, container: str, instances: int) -> Manager:
        """Least-loaded balancing: an idle ready instance, else start another (up to N), else the least busy."""
        pool = [self.get(f"{base_key}-{i}", container) for i in range(instances)]
        running = [m for m in pool if m.state.value == "running"]
        if running:
            best = min(running, key=lambda m: m.in_flight)
            if best.in_flight == 0:
                return best
        cold = [m for m in pool if m.state not in ACTIVE]
        if cold and self.may_start(container):
            return cold[0]
        live = [m for m in pool if m.state in ACTIVE] or pool
        return min(live, key=lambda m: (m.in_flight, m.state.value != "running"))

    # ------------------------------------------------------------------ Environment for managers

    def may_start(self, container: str) -> bool:
        return self._active[container] < self.config.containers[container].max_instances

    def observe_cold_wait(self, container: str, seconds: float) -> None:
        self.cold_wait_observer(container, seconds)

    def _count_active(self, event: Transition) -> None:
        self._active[event.container] += (event.new in ACTIVE) - (event.old in ACTIVE)

    def active(self, container: str) -> int:
        return self._active[container]

    async def probe(self, instance: Instance, path: str, timeout: float) -> int:
        """One GET of `path` on the instance, on its own short-lived connection; the status code."""
        if self._probe is None:
            self._probe = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        async with self._probe.get(instance.url + path, timeout=aiohttp.ClientTimeout(total=timeout),
                                   allow_redirects=False) as resp:
            return resp.status

    async def wait_ready(self, instance: Instance, readiness: Readiness) -> None:
        """Poll the readiness path until it answers 2xx; fail fast if the instance died meanwhile.

        The caller bounds the whole wait with start_timeout.
        """
        loop = asyncio.get_running_loop()
        next_inspect = loop.time() + 0.5
        while True:
            try:
                if 200 <= await self.probe(instance, readiness.path, readiness.timeout) < 300:
                    return
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                pass
            if loop.time() >= next_inspect:
                next_inspect = loop.time() + 0.5
                if await self.backend.inspect(instance) is not InstanceState.RUNNING:
                    raise BackendError(f"instance exited before it was ready ({instance.id[:12]})")
            await asyncio.sleep(readiness.interval)

    # ------------------------------------------------------------------ process lifecycle

    async def adopt_running(self) -> int:
        """After a proxy restart, take over the running instances this proxy owns.

        Stopped ones stay as a warm-restart cache when `backend.reuse_stopped` is on, else are removed.
        """
        if not self.config.backend.reuse_stopped:
            await self.backend.cleanup_stopped()
        adopted = 0
        for instance in await self.backend.list_instances():
            cls: ContainerClass | None = self.config.containers.get(instance.container)
            if cls is None:
                continue
            manager = self.get(instance.key, instance.container)
            if manager.state.value == "stopped":
                manager.adopt(instance)
                adopted += 1
        return adopted

    async def stop_all(self, reason: str = "shutdown") -> None:
        await asyncio.gather(*(m.stop(reason) for m in self), return_exceptions=True)

    async def close(self) -> None:
        if self._probe is not None:
            await self._probe.close()
            self._probe = None
