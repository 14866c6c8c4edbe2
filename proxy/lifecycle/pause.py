"""Pause and resume, and the drain that stop and pause share: the part of a `Manager` beyond start/stop.

`Pausing` is a base of `Manager` (proxy/lifecycle/manager.py) and only makes sense as one: it declares what it
uses of the manager and the manager provides it. Kept apart so manager.py stays the core lifecycle.

A paused instance still exists (it counts against max_instances) but takes no requests: a request for
a paused key resumes it through `ensure_running`, single-flight like a start, and is then served. Its
idle time still counts: after sleep_after a paused instance is thawed and stopped like a running one
(a frozen process cannot act on SIGTERM). The class's `pause_after` pauses an idle instance by itself
(the manager's idle timer calls `_pause_when_idle`), a tier between running and stopped.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from backends.base import Instance
from backends.control import Pausable
from proxy.errors import ActionFailed, Conflict, NotSupported
from proxy.lifecycle.events import Happening, State, StopReason

log = structlog.get_logger("proxy.manager")
LIVE = frozenset({State.RUNNING, State.PAUSED})  # an instance exists and is not on its way out


class Pausing:
    __slots__ = ("_waiting", "_drained", "_pause_task", "_resume_task", "pause_refused_at")
    # What the manager has (proxy/lifecycle/manager.py).
    key: str
    state: State
    instance: Instance | None
    services: Any
    in_flight: int
    last_activity: float

    def __init__(self) -> None:
        self._waiting = 0  # requests held but waiting for the instance (not on it): a drain does not wait for them
        self._drained: asyncio.Future[None] | None = None  # set while a stop or pause waits for requests to end
        self._pause_task: asyncio.Task[None] | None = None
        self._resume_task: asyncio.Task[None] | None = None
        self.pause_refused_at = -1.0  # the activity time at which the runtime last refused a pause

    def _transition(self, new: State, reason: str, happening: Happening | None = None,
                    stop_reason: StopReason | None = None) -> None:
        raise NotImplementedError

    def touch(self, now: float | None = None) -> None:
        raise NotImplementedError

    def _rearm_idle(self) -> None:
        raise NotImplementedError

    def _begin_stop(self, reason: StopReason) -> asyncio.Task[None] | None:
        raise NotImplementedError

    def fenced(self) -> None:
        raise NotImplementedError

    async def confirmed(self) -> bool:
        raise NotImplementedError

    # ------------------------------------------------------------------ pause

    def _pausable(self) -> Pausable:
        backend = self.services.backend
        if not isinstance(backend, Pausable):
            raise NotSupported(f"not supported by backend {backend.name}", key=self.key)
        return backend

    async def pause(self, drain: float = 0.0, reason: str = "admin") -> None:
        """Freeze the running instance (memory kept, no CPU). It is `paused` at once, so no new request
        goes to it (they wait, then resume it); requests in flight get up to `drain` seconds first."""
        backend = self._pausable()
        if self.state is State.PAUSED:
            if self._pause_task is not None:
                await asyncio.shield(self._pause_task)
            return
        instance = self.instance
        if self.state is not State.RUNNING or instance is None:
            raise Conflict(f"{self.key} is {self.state.value}, not running", key=self.key)
        await asyncio.shield(self._begin_pause(backend, instance, drain, reason))

    def _begin_pause(self, backend: Pausable, instance: Instance, drain: float, reason: str) -> asyncio.Task[None]:
        """`paused` now, with no await before it: a request that comes later waits and resumes it."""
        self.fenced()
        self._transition(State.PAUSED, reason)
        self._pause_task = task = asyncio.create_task(self._run_pause(backend, instance, drain),
                                                      name=f"pause:{self.key}")
        task.add_done_callback(consume_exception)
        return task

    def _pause_when_idle(self) -> None:
        """The idle timer's pause (`pause_after`): only from running with nothing in flight."""
        backend = self.services.backend
        if self.state is State.RUNNING and self.instance is not None and isinstance(backend, Pausable):
            self._begin_pause(backend, self.instance, 0.0, "idle")

    async def _run_pause(self, backend: Pausable, instance: Instance, drain: float) -> None:
        await self._drain(drain)
        try:
            if not await self.confirmed():
                raise RuntimeError("not confirmed as the key's owner")  # clustered: not ours to pause any more
            await backend.pause(instance)
        except Exception as exc:  # noqa: BLE001 - the instance goes on running; the caller hears why
            error = f"pause failed: {type(exc).__name__}: {exc}"
            log.warning("pause_failed", key=self.key, error=error)
            if self.state is State.PAUSED and self.instance is instance:
                self._transition(State.RUNNING, error)
                self.pause_refused_at = self.last_activity  # no idle pause again until there is activity
                self._rearm_idle()
            raise ActionFailed(error, key=self.key) from None

    async def resume(self, reason: str = "admin") -> None:
        """Thaw a paused instance (a request does this by itself); nothing to do if it is running."""
        if self.state is State.PAUSED:
            await asyncio.shield(self._begin_resume(reason))
        elif self.state is not State.RUNNING:
            raise Conflict(f"{self.key} is {self.state.value}, not paused", key=self.key)

    def _begin_resume(self, reason: str) -> asyncio.Task[None]:
        """The one resume of this pause, which every request for the key shares."""
        if self._resume_task is None or self._resume_task.done():
            assert self.instance is not None
            self.fenced()
            self._resume_task = asyncio.create_task(self._run_resume(self.instance, reason),
                                                    name=f"resume:{self.key}")
            self._resume_task.add_done_callback(consume_exception)
        return self._resume_task

    async def _run_resume(self, instance: Instance, reason: str) -> None:
        if self._pause_task is not None and not self._pause_task.done():
            await asyncio.wait({self._pause_task})  # thaw what was frozen, not a freeze still under way
        if self.state is not State.PAUSED or self.instance is not instance:
            return  # the pause failed (running again), or a stop took the instance
        try:
            await self._pausable().resume(instance)
        except Exception as exc:  # noqa: BLE001 - a frozen instance that cannot be thawed is of no use
            log.warning("resume_failed", key=self.key, error=f"{type(exc).__name__}: {exc}")
            if self.state is State.PAUSED and self.instance is instance:
                self._begin_stop(StopReason.ERROR)  # waiting requests then start a fresh instance
            return
        if self.state is State.PAUSED and self.instance is instance:
            self._transition(State.RUNNING, reason)
            self.touch()
            self._rearm_idle()  # the timer set for the paused instance's stop comes too late for the next pause

    async def _thaw(self, instance: Instance) -> None:
        """Before a paused instance is stopped: best effort, the stop follows whatever happens."""
        pending = {t for t in (self._pause_task, self._resume_task) if t is not None and not t.done()}
        if pending:
            await asyncio.wait(pending)
        backend = self.services.backend
        if isinstance(backend, Pausable):
            try:
                await backend.resume(instance)
            except Exception:  # noqa: BLE001 - not paused after all, or gone: the stop copes
                pass

    # ------------------------------------------------------------------ drain

    async def _drain(self, seconds: float) -> None:
        """Until the requests on the instance have ended (not those waiting for it), or `seconds` passed."""
        if seconds <= 0 or self.in_flight <= self._waiting:
            return
        self._drained = drained = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(drained, seconds)
        except TimeoutError:
            log.info("drain_timeout", key=self.key, in_flight=self.in_flight)
        finally:
            self._drained = None


def consume_exception(task: asyncio.Task[None]) -> None:
    """Waiters may all have gone (client aborts); the outcome is in the state, not lost."""
    if not task.cancelled():
        task.exception()
