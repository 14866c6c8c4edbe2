"""The end of a startup CPU boost (backends/control.py): once an instance is ready, its CPU limit goes down
to its instance type's, the limit it is billed for (proxy/observe/usage.py bills from ready).

In the background, so the first request does not wait for it (~10 ms on docker). A failure is retried a
few times, then logged and left in the key's status (`last_error`): the instance would otherwise run
above its type, unnoticed, until it stops.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import structlog

from backends.base import Backend, ContainerSpec, Instance
from backends.control import Boostable

log = structlog.get_logger("proxy.boost")
RETRY_DELAYS = (0.5, 2.0)  # seconds between attempts
TIMEOUT = 5.0  # per attempt: a failed start waits for it, and the update answers in ~10 ms when all is well
_running: set[asyncio.Task[None]] = set()  # strong references until done


class _Services(Protocol):
    @property
    def backend(self) -> Backend: ...


class _Class(Protocol):
    @property
    def name(self) -> str: ...


class Manager(Protocol):
    """What settling reads and writes of a key's manager (proxy/lifecycle/manager.py), declared here so
    this module stays below it: whose instance it is, and where a failure is reported."""

    instance: Instance | None
    last_error: str

    @property
    def key(self) -> str: ...
    @property
    def klass(self) -> _Class: ...
    @property
    def services(self) -> _Services: ...


async def settle(backend: Backend, instance: Instance, spec: ContainerSpec) -> str | None:
    """Lower `instance`'s CPU limit to its type's now; why it failed, or None (also for a backend without
    CPU limits)."""
    if not isinstance(backend, Boostable):
        return None
    try:
        async with asyncio.timeout(TIMEOUT):
            await backend.settle(instance, spec)
    except Exception as exc:  # noqa: BLE001 - reported by the caller
        return f"CPU limit not lowered to the instance type's: {type(exc).__name__}: {exc}"
    return None


def settle_soon(manager: Manager, instance: Instance, spec: ContainerSpec) -> None:
    """`settle` in a task of its own; a failure goes to the log and to `manager.last_error` while
    `instance` is still the manager's."""
    backend = manager.services.backend
    if not isinstance(backend, Boostable):
        return

    async def run() -> None:
        for delay in (*RETRY_DELAYS, None):
            if manager.instance is not instance:
                return  # stopped or replaced meanwhile: nothing runs boosted
            error = await settle(manager.services.backend, instance, spec)
            if error is None:
                return
            if delay is None:
                if manager.instance is instance:
                    manager.last_error = error
                    log.warning("settle_failed", key=manager.key, container=manager.klass.name, error=error)
                return
            await asyncio.sleep(delay)

    task = asyncio.create_task(run(), name=f"settle:{manager.key}")
    _running.add(task)
    task.add_done_callback(_running.discard)
