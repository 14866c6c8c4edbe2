"""Is the instance still there, and still answering? The part of a `Manager` that asks the runtime.

`Health` is a base of `Manager` (proxy/lifecycle/manager.py) on top of `Pausing`: one chain of bases, so their
slots make one layout. It declares what it uses of the manager, and the manager provides it. A failed
upstream connection makes the manager `suspect` its instance (a few looks at the runtime, which may
report a killed container as running for a moment); the event stream and the reconciler ask
`liveness`; the relay `retire`s an instance that stopped answering (upstream timeouts in a row),
never cutting the exchanges still on it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from backends.base import BackendError, Instance, InstanceState
from proxy.config.schema import ContainerClass
from proxy.lifecycle.events import Happening, State, StopReason
from proxy.lifecycle.pause import Pausing

log = structlog.get_logger("proxy.manager")


class Health(Pausing):
    __slots__ = ("_check_task", "last_error", "_stop_task")
    # What the manager has (proxy/lifecycle/manager.py).
    key: str
    klass: ContainerClass
    state: State
    instance: Instance | None
    services: Any
    in_flight: int

    def __init__(self) -> None:
        super().__init__()
        self._check_task: asyncio.Task[None] | None = None
        self._stop_task: asyncio.Task[None] | None = None
        self.last_error = ""

    def _cancel_idle(self) -> None:
        raise NotImplementedError

    def _count_failure(self, what: str) -> None:
        raise NotImplementedError

    async def _run_stop(self, reason: StopReason) -> None:
        raise NotImplementedError

    def suspect(self) -> None:
        """An upstream connection failed: find out in the background whether the instance died.

        The runtime may report a killed container as running for a moment, so look a few times.
        """
        if self._check_task is None or self._check_task.done():
            self._check_task = asyncio.create_task(self._recheck(), name=f"check:{self.key}")

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
        instance = self.instance
        if self.state is not State.RUNNING or instance is None:
            return False
        backend = self.services.backend
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
        if status is InstanceState.RUNNING or self.instance is not instance or self.state is not State.RUNNING:
            return status is InstanceState.RUNNING
        self._cancel_idle()
        self.last_error = f"instance {status.value}" + (f": {why}" if why else "")
        self._transition(State.STOPPED, why or "error", Happening.CRASHED, StopReason.ERROR)
        log.warning("instance_gone", key=self.key, container=self.klass.name, reason=self.last_error)
        self._count_failure("crash")
        return False

    def retire(self, instance: Instance, reason: str, drained: asyncio.Future[None] | None = None) -> bool:
        """Take a running instance that stopped answering out of service (stop reason `unhealthy`).

        Only `instance`, and only while it is running: False otherwise (replaced or stopped already). It goes
        to `stopping` at once, so no new request is sent to it: new ones wait and start a fresh instance, as
        after an idle stop. The container is stopped in the background once `drained` is done (the exchanges
        still on it have ended), or at once without one.
        """
        if self.instance is not instance or self.state is not State.RUNNING:
            return False
        self.last_error = f"instance stopped answering: {reason}"
        log.warning("instance_unhealthy", key=self.key, container=self.klass.name, instance=instance.id,
                    reason=reason, in_flight=self.in_flight)
        if drained is None:
            self._begin_stop(StopReason.UNHEALTHY)
            return True
        self._cancel_idle()
        self._transition(State.STOPPING, StopReason.UNHEALTHY.value)

        async def drain_then_stop() -> None:
            try:
                await drained
            except Exception:  # noqa: BLE001 - stop it anyway
                pass
            await self._run_stop(StopReason.UNHEALTHY)

        self._stop_task = asyncio.create_task(drain_then_stop(), name=f"stop:{self.key}")
        return True
