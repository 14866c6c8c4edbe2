"""Pause and resume of one key's instance: the `Pauser` a `Manager` makes on its first pause or resume.

A paused instance still exists (it counts against max_instances) but takes no requests: a request for
a paused key resumes it through `ensure_running`, single-flight like a start, and is then served. Its
idle time still counts: after sleep_after a paused instance is thawed and stopped like a running one
(a frozen process cannot act on SIGTERM). The class's `pause_after` pauses an idle instance by itself
(the manager's idle timer calls `pause_when_idle`), a tier between running and stopped.

The pauser owns what only pausing needs (the pause and resume tasks, when the runtime last refused) and
sees its manager through `PausedKey`, declared here; a key that never pauses has no pauser at all.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import structlog

from backends.base import Instance
from backends.control import Pausable
from proxy.errors import ActionFailed, Conflict, NotSupported
from proxy.lifecycle.events import State, StopReason
from proxy.lifecycle.services import ManagedKey

log = structlog.get_logger("proxy.manager")
LIVE = frozenset({State.RUNNING, State.PAUSED})  # an instance exists and is not on its way out


class Draining(Protocol):
    """What a drain uses of a key's manager: the requests on its instance, and the future `release` resolves."""

    _drained: asyncio.Future[None] | None

    @property
    def key(self) -> str: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def _waiting(self) -> int: ...


class PausedKey(Draining, ManagedKey, Protocol):
    """What a `Pauser` uses of its key's manager, beyond what every component does and what a drain reads: its
    activity (read and touched) and the fence."""

    @property
    def last_activity(self) -> float: ...
    def fenced(self) -> None: ...
    async def confirmed(self) -> bool: ...
    def touch(self, now: float | None = None) -> None: ...


class Pauser:
    """Pause, resume and the thaw before a stop of one key's instance; the idle pause of the pause tier."""

    __slots__ = ("manager", "_pause_task", "_resume_task", "refused_at")

    def __init__(self, manager: PausedKey) -> None:
        self.manager = manager
        self._pause_task: asyncio.Task[None] | None = None
        self._resume_task: asyncio.Task[None] | None = None
        self.refused_at = -1.0  # the activity time at which the runtime last refused a pause

    def _pausable(self) -> Pausable:
        backend = self.manager.services.backend
        if not isinstance(backend, Pausable):
            raise NotSupported(f"not supported by backend {backend.name}", key=self.manager.key)
        return backend

    async def pause(self, drain: float = 0.0, reason: str = "admin") -> None:
        """Freeze the running instance (memory kept, no CPU). It is `paused` at once, so no new request
        goes to it (they wait, then resume it); requests in flight get up to `drain` seconds first."""
        m = self.manager
        backend = self._pausable()
        if m.state is State.PAUSED:
            if self._pause_task is not None:
                await asyncio.shield(self._pause_task)
            return
        instance = m.instance
        if m.state is not State.RUNNING or instance is None:
            raise Conflict(f"{m.key} is {m.state.value}, not running", key=m.key)
        await asyncio.shield(self._begin_pause(backend, instance, drain, reason))

    def _begin_pause(self, backend: Pausable, instance: Instance, drain: float, reason: str) -> asyncio.Task[None]:
        """`paused` now, with no await before it: a request that comes later waits and resumes it."""
        m = self.manager
        m.fenced()
        m._transition(State.PAUSED, reason)
        self._pause_task = task = asyncio.create_task(self._run_pause(backend, instance, drain),
                                                      name=f"pause:{m.key}")
        task.add_done_callback(consume_exception)
        return task

    def pause_when_idle(self) -> None:
        """The idle timer's pause (`pause_after`): only from running with nothing in flight."""
        m = self.manager
        backend = m.services.backend
        if m.state is State.RUNNING and m.instance is not None and isinstance(backend, Pausable):
            self._begin_pause(backend, m.instance, 0.0, "idle")

    async def _run_pause(self, backend: Pausable, instance: Instance, drain: float) -> None:
        m = self.manager
        await drain_requests(m, drain)
        try:
            if not await m.confirmed():
                raise RuntimeError("not confirmed as the key's owner")  # clustered: not ours to pause any more
            await backend.pause(instance)
        except Exception as exc:  # noqa: BLE001 - the instance goes on running; the caller hears why
            error = f"pause failed: {type(exc).__name__}: {exc}"
            log.warning("pause_failed", key=m.key, error=error)
            if m.state is State.PAUSED and m.instance is instance:
                m._transition(State.RUNNING, error)
                self.refused_at = m.last_activity  # no idle pause again until there is activity
                m.idle.rearm()
            raise ActionFailed(error, key=m.key) from None

    async def resume(self, reason: str = "admin") -> None:
        """Thaw a paused instance (a request does this by itself); nothing to do if it is running."""
        m = self.manager
        if m.state is State.PAUSED:
            await asyncio.shield(self.begin_resume(reason))
        elif m.state is not State.RUNNING:
            raise Conflict(f"{m.key} is {m.state.value}, not paused", key=m.key)

    def begin_resume(self, reason: str) -> asyncio.Task[None]:
        """The one resume of this pause, which every request for the key shares."""
        m = self.manager
        if self._resume_task is None or self._resume_task.done():
            assert m.instance is not None
            m.fenced()
            self._resume_task = asyncio.create_task(self._run_resume(m.instance, reason), name=f"resume:{m.key}")
            self._resume_task.add_done_callback(consume_exception)
        return self._resume_task

    async def _run_resume(self, instance: Instance, reason: str) -> None:
        m = self.manager
        if self._pause_task is not None and not self._pause_task.done():
            await asyncio.wait({self._pause_task})  # thaw what was frozen, not a freeze still under way
        if m.state is not State.PAUSED or m.instance is not instance:
            return  # the pause failed (running again), or a stop took the instance
        try:
            await self._pausable().resume(instance)
        except Exception as exc:  # noqa: BLE001 - a frozen instance that cannot be thawed is of no use
            log.warning("resume_failed", key=m.key, error=f"{type(exc).__name__}: {exc}")
            if m.state is State.PAUSED and m.instance is instance:
                m._begin_stop(StopReason.ERROR)  # waiting requests then start a fresh instance
            return
        if m.state is State.PAUSED and m.instance is instance:
            m._transition(State.RUNNING, reason)
            m.touch()
            m.idle.rearm()  # the timer set for the paused instance's stop comes too late for the next pause

    async def thaw(self, instance: Instance) -> None:
        """Before a paused instance is stopped: best effort, the stop follows whatever happens."""
        pending = {t for t in (self._pause_task, self._resume_task) if t is not None and not t.done()}
        if pending:
            await asyncio.wait(pending)
        backend = self.manager.services.backend
        if isinstance(backend, Pausable):
            try:
                await backend.resume(instance)
            except Exception:  # noqa: BLE001 - not paused after all, or gone: the stop copes
                pass


def pause_after(configured: float, sleep_after: float, refused: bool, backend: object) -> float:
    """The pause tier's idle seconds before a running instance is paused; 0 when it is not: off, not before the
    stop, refused by the runtime since the last activity (asking again at once would only spin), or no pausing."""
    if configured <= 0 or (sleep_after and configured >= sleep_after) or refused:
        return 0.0
    return configured if isinstance(backend, Pausable) else 0.0


async def drain_requests(m: Draining, seconds: float) -> None:
    """Until the requests on the instance have ended (not those waiting for it), or `seconds` passed: the drain
    that stop and pause share. `release` resolves `m._drained` when the last of them ends."""
    if seconds <= 0 or m.in_flight <= m._waiting:
        return
    m._drained = drained = asyncio.get_running_loop().create_future()
    try:
        await asyncio.wait_for(drained, seconds)
    except TimeoutError:
        log.info("drain_timeout", key=m.key, in_flight=m.in_flight)
    finally:
        m._drained = None


def consume_exception(task: asyncio.Task[None]) -> None:
    """Waiters may all have gone (client aborts); the outcome is in the state, not lost."""
    if not task.cancelled():
        task.exception()
