"""Is the instance still there, and still answering? The `HealthWatch` a `Manager` makes when it first asks.

A failed upstream connection makes the manager `suspect` its instance (a few looks at the runtime, which may
report a killed container as running for a moment); the event stream and the reconciler ask
`liveness`; the exchange `retire`s an instance that stopped answering (upstream timeouts in a row),
never cutting the exchanges still on it.

The watch owns what only watching needs (the background check under way) and sees its manager through
`WatchedKey`, declared here; a key nobody asked about has no watch at all.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import structlog

from backends.base import BackendError, Instance, InstanceState
from proxy.config.schema import ContainerClass
from proxy.lifecycle.events import Happening, State, StopReason
from proxy.lifecycle.services import ManagedKey

log = structlog.get_logger("proxy.manager")


class WatchedKey(ManagedKey, Protocol):
    """What a `HealthWatch` uses of its key's manager, beyond what every component does: its class, the last
    error it reports, a failure to count, and the wider forms of its transition and its stop."""

    last_error: str

    @property
    def klass(self) -> ContainerClass: ...
    def _transition(self, new: State, reason: str, happening: Happening | None = None,
                    stop_reason: StopReason | None = None) -> None: ...
    def _count_failure(self, what: str) -> None: ...
    def _begin_stop(self, reason: StopReason, drain: float = 0.0, remove: bool = False,
                    after: asyncio.Future[None] | None = None) -> asyncio.Task[None] | None: ...


class HealthWatch:
    __slots__ = ("manager", "_check_task")

    def __init__(self, manager: WatchedKey) -> None:
        self.manager = manager
        self._check_task: asyncio.Task[None] | None = None

    def suspect(self) -> None:
        """An upstream connection failed: find out in the background whether the instance died.

        The runtime may report a killed container as running for a moment, so look a few times.
        """
        if self._check_task is None or self._check_task.done():
            self._check_task = asyncio.create_task(self._recheck(), name=f"check:{self.manager.key}")

    async def _recheck(self) -> None:
        for delay in (0.0, 0.2, 0.5, 1.0):
            await asyncio.sleep(delay)
            if not await self.check_alive():
                return

    async def check_alive(self) -> bool:
        """After an upstream error: is the instance still there? If not, forget it (reason=error).

        True when it is, or when the runtime cannot be asked (keep serving rather than flap)."""
        return await self.liveness() is not False

    async def liveness(self) -> bool | None:
        """Ask the runtime: True alive, False gone (and forgotten, as a crash), None cannot tell."""
        m = self.manager
        instance = m.instance
        if m.state is not State.RUNNING or instance is None:
            return False
        backend = m.services.backend
        try:
            status = await backend.inspect(instance)
        except BackendError:
            return None
        why = None
        if status is not InstanceState.RUNNING:
            try:
                why = await backend.exit_reason(instance)
            except BackendError:  # gone is gone: the runtime's word on why is a detail, not a reason to doubt
                why = "exited" if status is InstanceState.EXITED else "removed"
        if status is InstanceState.RUNNING or m.instance is not instance or m.state is not State.RUNNING:
            return status is InstanceState.RUNNING
        m.idle.cancel()
        m.last_error = f"instance {status.value}" + (f": {why}" if why else "")
        m._transition(State.STOPPED, why or "error", Happening.CRASHED, StopReason.ERROR)
        log.warning("instance_gone", key=m.key, container=m.klass.name, reason=m.last_error)
        m._count_failure("crash")
        return False

    def retire(self, instance: Instance, reason: str, drained: asyncio.Future[None] | None = None) -> bool:
        """Take a running instance that stopped answering out of service (stop reason `unhealthy`).

        Only `instance`, and only while it is running: False otherwise (replaced or stopped already). It goes
        to `stopping` at once, so no new request is sent to it: new ones wait and start a fresh instance, as
        after an idle stop. The container is stopped in the background once `drained` is done (the exchanges
        still on it have ended), or at once without one.
        """
        m = self.manager
        if m.instance is not instance or m.state is not State.RUNNING:
            return False
        m.last_error = f"instance stopped answering: {reason}"
        log.warning("instance_unhealthy", key=m.key, container=m.klass.name, instance=instance.id,
                    reason=reason, in_flight=m.in_flight)
        m._begin_stop(StopReason.UNHEALTHY, after=drained)
        return True
