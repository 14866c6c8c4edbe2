"""One Manager per container key: the Durable Object analogue.

It owns the lifecycle of one instance: lazy single-flight start, readiness wait, in-flight
accounting, idle sleep and stop. It knows the `Backend` protocol and nothing of Docker. All state
changes happen on the event loop without awaiting in between check and change, so no lock is needed:
the only awaits are on the start/stop tasks, which every caller shares.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator, Protocol

from backends.base import Backend, BackendError, ContainerSpec, Instance, InstanceState
from proxy.config import ContainerClass, Readiness
from proxy.events import EventBus, State, Transition


class StartFailed(Exception):
    """The backend refused or the instance died while starting (503 + Retry-After)."""

    def __init__(self, reason: str, retry_after: float = 1.0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class StartTimeout(Exception):
    """The instance was not ready within start_timeout (504)."""


class CapacityExceeded(Exception):
    """Starting would exceed the class's max_instances (503 + Retry-After)."""


class NotWarm(Exception):
    """A warm-only route found the instance not running; it never starts one (503)."""


class Environment(Protocol):
    """What a manager needs from the proxy around it (implemented by the Registry)."""

    backend: Backend
    bus: EventBus

    async def wait_ready(self, instance: Instance, readiness: Readiness) -> None: ...

    def may_start(self, container: str) -> bool: ...

    def observe_cold_wait(self, container: str, seconds: float) -> None: ...


@dataclass(slots=True)
class Lease:
    """A request's hold on a running instance; `cold_wait` is set when it waited for a start."""

    instance: Instance
    cold_wait: float | None


class Manager:
    __slots__ = (
        "key", "cls", "env", "state", "instance", "in_flight", "start_count", "last_activity",
        "_since", "_start_task", "_stop_task", "_idle_handle", "_check_task", "last_error",
    )

    def __init__(self, key: str, cls: ContainerClass, env: Environment) -> None:
        self.key = key
        self.cls = cls
        self.env = env
        self.state = State.STOPPED
        self.instance: Instance | None = None
        self.in_flight = 0
        self.start_count = 0
        self.last_activity = 0.0  # loop time
        self.last_error = ""
        self._since = 0.0
        self._start_task: asyncio.Task[None] | None = None
        self._stop_task: asyncio.Task[None] | None = None
        self._idle_handle: asyncio.TimerHandle | None = None
        self._check_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ requests

    @asynccontextmanager
    async def lease(self, *, start: bool = True) -> AsyncIterator[Lease]:
        """Hold the instance for one request or WebSocket; always released, even on client abort."""
        self.hold()
        try:
            if start:
                waited = await self.ensure_running(reason="request")
            elif self.state is State.RUNNING:
                waited = None
            else:
                raise NotWarm(f"{self.key} is {self.state.value}")
            assert self.instance is not None
            yield Lease(self.instance, waited)
        finally:
            self.release()

    def hold(self) -> None:
        """One more request or WebSocket in flight: the instance is not stopped while any is."""
        self.in_flight += 1

    def release(self) -> None:
        """The end of what `hold` began (the fast path calls the pair directly, the aiohttp path via lease)."""
        self.in_flight -= 1
        self.touch()

    def touch(self) -> None:
        """Record activity (a request finished, a WebSocket message passed, a keepalive tick)."""
        self.last_activity = asyncio.get_running_loop().time()
        if self.in_flight == 0:
            self._arm_idle()

    async def ensure_running(self, reason: str = "request", spec: ContainerSpec | None = None) -> float | None:
        """Return once the instance is ready; the seconds waited, or None if it already was."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        waited = False
        while self.state is not State.RUNNING:
            waited = True
            if self.state is State.STOPPING:
                assert self._stop_task is not None
                await asyncio.shield(self._stop_task)
                continue
            if self.state in (State.STOPPED, State.FAILED):
                self._begin_start(reason, spec)
            assert self._start_task is not None
            await asyncio.shield(self._start_task)
        if not waited:
            return None
        seconds = loop.time() - began
        self.env.observe_cold_wait(self.cls.name, seconds)
        return seconds

    # ------------------------------------------------------------------ start

    def _begin_start(self, reason: str, spec: ContainerSpec | None) -> None:
        if not self.env.may_start(self.cls.name):
            raise CapacityExceeded(f"container class {self.cls.name} is at max_instances={self.cls.max_instances}")
        self._transition(State.STARTING, reason)
        self._start_task = asyncio.create_task(self._run_start(spec or self.cls.spec), name=f"start:{self.key}")
        self._start_task.add_done_callback(_consume_exception)

    async def _run_start(self, spec: ContainerSpec) -> None:
        try:
            async with asyncio.timeout(self.cls.start_timeout):
                self.instance = await self.env.backend.start(self.key, spec)
                await self.env.wait_ready(self.instance, self.cls.readiness)
        except TimeoutError:
            await self._abandon_start(f"not ready within start_timeout={self.cls.start_timeout:g}s")
            raise StartTimeout(self.last_error) from None
        except BackendError as exc:
            await self._abandon_start(exc.reason)
            raise StartFailed(exc.reason, exc.retry_after) from None
        except asyncio.CancelledError:
            await self._abandon_start("start cancelled")
            raise
        except Exception as exc:  # noqa: BLE001 - any other failure is a failed start, not a crash
            await self._abandon_start(f"{type(exc).__name__}: {exc}")
            raise StartFailed(self.last_error) from None
        self.start_count += 1
        self.last_error = ""
        self._transition(State.RUNNING, "ready")
        self.touch()

    async def _abandon_start(self, reason: str) -> None:
        """A start that failed must not leave a half-started instance behind."""
        self.last_error = reason
        if self.instance is not None:
            try:
                await asyncio.wait_for(self.env.backend.stop(self.instance), timeout=15)
            except Exception:  # noqa: BLE001 - best effort; the backend reuses or removes it next time
                pass
        self._transition(State.FAILED, reason)
        self.instance = None

    # ------------------------------------------------------------------ stop

    def _arm_idle(self) -> None:
        if self._idle_handle is None and self.state is State.RUNNING and self.cls.sleep_after > 0:
            loop = asyncio.get_running_loop()
            self._idle_handle = loop.call_at(self.last_activity + self.cls.sleep_after, self._on_idle)

    def _on_idle(self) -> None:
        self._idle_handle = None
        if self.state is not State.RUNNING or self.in_flight:
            return  # the last request's release re-arms the timer
        if asyncio.get_running_loop().time() + 0.001 >= self.last_activity + self.cls.sleep_after:
            self._begin_stop("idle")
        else:
            self._arm_idle()

    def _begin_stop(self, reason: str) -> asyncio.Task[None] | None:
        if self.state is State.STOPPING:
            return self._stop_task
        if self.state is not State.RUNNING:
            return None
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None
        self._transition(State.STOPPING, reason)
        self._stop_task = asyncio.create_task(self._run_stop(reason), name=f"stop:{self.key}")
        return self._stop_task

    async def _run_stop(self, reason: str) -> None:
        instance = self.instance
        try:
            if instance is not None:
                await self.env.backend.stop(instance)
        except Exception as exc:  # noqa: BLE001 - a failed stop still ends our claim on it
            self.last_error = f"stop failed: {exc}"
        finally:
            self._transition(State.STOPPED, reason)  # the event still names the instance
            self.instance = None

    async def stop(self, reason: str) -> None:
        """Stop now (shutdown, admin). Waits for a start in progress first."""
        if self.state is State.STARTING and self._start_task is not None:
            try:
                await asyncio.shield(self._start_task)
            except Exception:  # noqa: BLE001 - nothing to stop if it failed
                return
        task = self._begin_stop(reason)
        if task is not None:
            await asyncio.shield(task)

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
        """After an upstream error: is the instance still there? If not, forget it (reason=error)."""
        instance = self.instance
        if self.state is not State.RUNNING or instance is None:
            return False
        try:
            status = await self.env.backend.inspect(instance)
        except BackendError:
            return True  # cannot tell; keep serving rather than flap
        if status is InstanceState.RUNNING or self.instance is not instance or self.state is not State.RUNNING:
            return status is InstanceState.RUNNING
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None
        self.last_error = f"instance {status.value}"
        self._transition(State.STOPPED, "error")
        self.instance = None
        return False

    def adopt(self, instance: Instance) -> None:
        """Take over an instance a previous proxy process started (restart without double start)."""
        self.instance = instance
        self._transition(State.RUNNING, "adopted")
        self.touch()

    # ------------------------------------------------------------------ bookkeeping

    def _transition(self, new: State, reason: str) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        old, self.state = self.state, new
        duration = now - self._since if self._since else 0.0
        self._since = now
        self.env.bus.emit(Transition(self.key, self.cls.name, old, new, duration, reason, self.instance))

    def status(self) -> dict[str, object]:
        loop = asyncio.get_running_loop()
        last = time.time() - (loop.time() - self.last_activity) if self.last_activity else None
        return {
            "key": self.key,
            "container": self.cls.name,
            "state": self.state.value,
            "in_flight": self.in_flight,
            "last_activity": last,
            "start_count": self.start_count,
            "address": self.instance.url if self.instance else None,
            "last_error": self.last_error or None,
        }


def _consume_exception(task: asyncio.Task[None]) -> None:
    """Waiters may all have gone (client aborts); the outcome is in the state, not lost."""
    if not task.cancelled():
        task.exception()
