"""Keeping the managers and the runtime in agreement.

The runtime's event stream (docker/podman `/events`, filtered by this proxy's labels) makes an instance
that dies, is stopped or removed from outside, or is OOM-killed leave `running` at once, not on the next
failed request. A periodic reconcile covers what no event says: after a daemon outage, a manager still
`running` at an address the runtime no longer lists is checked and forgotten, and a running container
whose manager is `stopped` (a stop that failed) is adopted again, so its idle stop can retry, and
containers a key had to move away from (stuck in removal) are removed once the runtime lets them go.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Protocol, runtime_checkable

import structlog

from backends.base import Backend, BackendError, Instance
from proxy.lifecycle.events import State
from proxy.lifecycle.registry import Registry

log = structlog.get_logger("proxy.reconcile")
RECONCILE_EVERY = 10.0  # seconds between full comparisons with the runtime
STEP = 0.005  # seconds of comparing before a yield to the event loop (a backend that lists nothing, as the process
# backend, has each running key's liveness asked, with no await that yields: 5000 keys were one step; issue 28)
RECONNECT_AFTER = 1.0  # seconds before listening to the event stream again after it broke


@runtime_checkable
class Watchable(Protocol):
    def watch(self) -> AsyncIterator[str]: ...


@runtime_checkable
class Sweepable(Protocol):
    """A backend that can leave containers it could not remove (see backends/_names.py)."""

    async def cleanup_stuck(self) -> list[str]: ...


class Reconciler:
    def __init__(self, registry: Registry, backend: Backend) -> None:
        self.registry = registry
        self.backend = backend
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._periodic(), name="reconcile"))
        if isinstance(self.backend, Watchable):
            self._tasks.append(asyncio.create_task(self._listen(self.backend), name="runtime-events"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def reconcile_once(self) -> int:
        """Compare with what the runtime lists; the number of managers corrected."""
        asked = asyncio.get_running_loop().time()
        try:
            listed = await self.backend.list_instances()
        except BackendError:
            return 0  # the runtime cannot be asked now; next round
        ids = {instance.id for instance in listed}
        corrected = 0
        loop = asyncio.get_running_loop()
        yield_at = loop.time() + STEP
        for manager in self.registry:
            if loop.time() >= yield_at:  # thousands of running keys: many short steps, never one long one
                await asyncio.sleep(0)
                yield_at = loop.time() + STEP
            if manager.state is State.RUNNING and manager.instance is not None and manager.instance.id not in ids:
                corrected += await manager.health.liveness() is False
        corrected += self.registry.adopt(listed, listed_at=asked)  # (a key stopped meanwhile is not one)
        if isinstance(self.backend, Sweepable):
            try:
                await self.backend.cleanup_stuck()
            except BackendError:
                pass  # still stuck, or the runtime is away: next round
        if corrected:
            log.info("reconciled", corrected=corrected)
        return corrected

    async def _periodic(self) -> None:
        while True:
            await asyncio.sleep(RECONCILE_EVERY)
            await self.reconcile_once()

    async def _listen(self, backend: Watchable) -> None:
        while True:
            try:
                async for container_id in backend.watch():
                    self._changed(container_id)
            except (BackendError, OSError) as exc:
                log.debug("runtime_events_broken", error=f"{type(exc).__name__}: {exc}")
            except Exception as exc:  # noqa: BLE001 - a broken stream must not end the listening
                log.warning("runtime_events_failed", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(RECONNECT_AFTER)
            await self.reconcile_once()  # whatever happened while nobody listened

    def _changed(self, container_id: str) -> None:
        for manager in self.registry:
            instance: Instance | None = manager.instance
            if manager.state is State.RUNNING and instance is not None and instance.id.startswith(container_id):
                manager.health.suspect()  # checks with the runtime; a gone instance becomes `stopped` (a crash)
