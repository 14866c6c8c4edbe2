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
from typing import AsyncIterator

import structlog

from backends.base import PHASE_SINCE, PHASE_WATCH, BackendError, BackendUnavailable, ContainerSpec, Instance
from backends.control import Removable
from proxy.lifecycle.boost import settle, settle_soon
from proxy.lifecycle.breaker import Breaker
from proxy.config.schema import ContainerClass
from proxy.errors import (BreakerOpen, CapacityExceeded, Fenced, NotWarm, RuntimeUnreachable, StartFailed,
                          StartTimeout)
from proxy.lifecycle.events import (ACTIVE, BreakerOpened, ColdWait, Happening, StartPhase, State, StopReason,
                                    Transition)
from proxy.lifecycle.health import HealthWatch
from proxy.lifecycle.inflight import InFlight
from proxy.lifecycle.pause import LIVE, Pauser, consume_exception, drain_requests, pause_after
from proxy.lifecycle.readiness import LastSeen, timed_out
from proxy.lifecycle.services import Fence, InstancePools, Lease, Prober, Services

__all__ = ["Fence", "InstancePools", "Lease", "Manager", "Prober", "Services"]  # the ports: proxy/lifecycle/services.py

log = structlog.get_logger("proxy.manager")
STOP_RETRY_DELAYS = (0.5, 2.0, 5.0)  # seconds between attempts to stop an instance before giving up


class Manager(InFlight):  # requests in flight, activity, the idle timer: proxy/lifecycle/inflight.py
    __slots__ = ("key", "services", "state", "instance", "start_count", "_since", "_start_deadline", "_start_task",
                 "breaker", "_seen", "last_error", "_stop_task", "_pauser", "_health")

    def __init__(self, key: str, klass: ContainerClass, services: Services) -> None:
        super().__init__(klass)
        self.key = key
        self.services = services
        self.state = State.STOPPED
        self.instance: Instance | None = None
        self.start_count = 0
        self.breaker = Breaker(klass.crash_loop)
        self._since = 0.0
        self._start_task: asyncio.Task[None] | None = None
        self._start_deadline = 0.0
        self._seen = LastSeen()  # the current (or last) start's readiness observation
        self.last_error = ""
        self._stop_task: asyncio.Task[None] | None = None
        self._pauser: Pauser | None = None  # the components, made on first use: an idle key has neither
        self._health: HealthWatch | None = None

    # ------------------------------------------------------------------ requests

    @asynccontextmanager
    async def lease(self, *, start: bool = True) -> AsyncIterator[Lease]:
        """Hold the instance for one request or WebSocket; always released, even on client abort."""
        self.hold()
        try:
            if self.state is State.RUNNING:
                waited = None  # the usual case: nothing to wait for (and no clock read: a getpid() on 3.11)
            elif start:
                self._waiting += 1
                try:
                    waited = await self.ensure_running(reason="request")
                finally:
                    self._waiting -= 1
            else:
                raise NotWarm(f"{self.key} is {self.state.value}")
            assert self.instance is not None
            yield Lease(self.instance, waited)
        finally:
            self.release()

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
            if self.state is State.PAUSED:
                await asyncio.shield(self.pauser.begin_resume(reason))
                continue
            if self.state in (State.STOPPED, State.FAILED):
                if self._start_task is None or self._start_task.done():
                    self._begin_start(reason, spec)  # CapacityExceeded at once when it may not wait
                if self.state not in ACTIVE:  # no start began: it waits for a capacity slot (one wait per key)
                    slot_wait = self._start_task
                    assert slot_wait is not None
                    await asyncio.shield(slot_wait)  # CapacityExceeded when no slot came within capacity_wait
                    if self._start_task is slot_wait:  # no start began (the key became running otherwise)
                        continue
            assert self._start_task is not None
            try:
                async with asyncio.timeout_at(self._start_deadline):
                    await asyncio.shield(self._start_task)
            except TimeoutError:  # the start's deadline passed; its cleanup goes on in the start task
                if not self._start_task.done():
                    raise StartTimeout(self._timeout_reason(), seconds=self.klass.start_timeout, key=self.key) from None
                self._start_task.result()  # its own outcome: raises its failure, or it made it just in time
        if not waited:
            return None
        seconds = loop.time() - began
        self.services.bus.emit(ColdWait(self.klass.name, seconds))
        return seconds

    # ------------------------------------------------------------------ start

    def _begin_start(self, reason: str, spec: ContainerSpec | None) -> None:
        """Begin a start now; or, at max_instances with `capacity_wait`, a task that waits (in arrival
        order) for a slot and then begins it. Until then the state stays stopped/failed and that task is
        `_start_task`, which every request for this key shares. start_timeout counts from the start."""
        capacity, name = self.services.capacity, self.klass.name
        self.fenced()
        if (backoff := self.breaker.wait(asyncio.get_running_loop().time())) > 0:  # no backend call at all
            raise BreakerOpen(f"{self.key} keeps failing ({self.last_error}); starts refused for {backoff:.1f}s",
                              retry_after=backoff, key=self.key)
        full = f"container class {name} is at max_instances={self.klass.max_instances}"

        def begin() -> None:  # no await between a slot found free (or handed over) and its claim
            self.fenced()  # a wait for a slot may have outlasted this replica's lease
            self._start_deadline = asyncio.get_running_loop().time() + self.klass.start_timeout
            self._transition(State.STARTING, reason)  # claims the slot
            self._start_task = asyncio.create_task(self._run_start(spec or self.klass.spec),
                                                   name=f"start:{self.key}")
            self._start_task.add_done_callback(consume_exception)

        if capacity.may_start(name):
            begin()
            return
        wait, queue = self.klass.capacity_wait, self.klass.capacity_queue
        if wait <= 0 or capacity.waiting(name) >= queue:
            raise CapacityExceeded(full if wait <= 0 else f"{full} and capacity_queue={queue} starts wait")

        async def wait_for_slot() -> None:
            if not await capacity.wait_for_slot(name, wait, max_queue=queue):
                raise CapacityExceeded(f"{full}: no slot free within capacity_wait={wait:g}s", key=self.key)
            if self.state in (State.STOPPED, State.FAILED):
                begin()
            else:  # running already (adopted meanwhile): the slot goes to the next waiter
                capacity.unused(name)

        self._start_task = asyncio.create_task(wait_for_slot(), name=f"slot:{self.key}")
        self._start_task.add_done_callback(consume_exception)

    async def _run_start(self, spec: ContainerSpec) -> None:
        deadline = asyncio.timeout_at(self._start_deadline)
        loop = asyncio.get_running_loop()
        self._seen = LastSeen()  # this start's: what its readiness probes saw last
        PHASE_WATCH.set(self._phase)  # this task's context: the backend's phases are told live
        PHASE_SINCE.set(time.perf_counter() - (loop.time() - self._since))  # and counted from the start request
        try:
            async with deadline:
                self.instance = await self.services.backend.start(self.key, spec)
                self._phase("", 0.0, "ready")
                await self.services.prober.wait_ready(self.instance, self.klass.readiness, self._seen)
        except TimeoutError as exc:
            if not deadline.expired():  # a TimeoutError of the backend's or prober's own: a failed start
                await self._abandon_start(f"{type(exc).__name__}: {exc}")
                raise StartFailed(self.last_error, key=self.key) from None
            await self._abandon_start(self._timeout_reason())
            raise StartTimeout(self.last_error, seconds=self.klass.start_timeout, key=self.key) from None
        except BackendError as exc:  # an unreachable runtime is an outage, not this key's crash loop
            await self._abandon_start(exc.reason, failed=not isinstance(exc, BackendUnavailable))
            down = RuntimeUnreachable.public if isinstance(exc, BackendUnavailable) else None  # the public words
            raise StartFailed(exc.reason, retry_after=exc.retry_after, key=self.key, public=down) from None
        except asyncio.CancelledError:
            await self._abandon_start("start cancelled", failed=False)
            raise
        except Exception as exc:  # noqa: BLE001 - any other failure is a failed start, not a crash
            await self._abandon_start(f"{type(exc).__name__}: {exc}")
            raise StartFailed(self.last_error, key=self.key) from None
        self.start_count += 1
        self.last_error = ""
        self.breaker.succeeded(loop.time())
        steps = self.instance.phases  # the backend's, from the start request: readiness has the rest of the start
        phases = (*steps, ("ready", max(0.0, loop.time() - self._since - sum(seconds for _, seconds in steps))))
        self._transition(State.RUNNING, "ready", Happening.STARTED, phases=phases)
        self.touch()
        settle_soon(self, self.instance, spec)  # the startup CPU boost ends at ready

    def _phase(self, ended: str, seconds: float, now: str = "") -> None:
        self.services.bus.emit(StartPhase(self.key, self.klass.name, ended, seconds, now))

    def _timeout_reason(self) -> str:
        seen = f": {timed_out(self._seen.what)}" if self._seen.what else ""
        return f"not ready within start_timeout={self.klass.start_timeout:g}s{seen}"

    async def _abandon_start(self, reason: str, failed: bool = True) -> None:
        """A start that failed must not leave a half-started instance behind."""
        self.last_error = reason
        if self.instance is not None:
            try:  # the backend's SIGKILL comes after stop_timeout: leave it that and some
                await asyncio.wait_for(self.services.backend.stop(self.instance),
                                       timeout=self.klass.spec.stop_timeout + 10)
            except Exception:  # noqa: BLE001 - best effort; the backend reuses or removes it next time
                await settle(self.services.backend, self.instance, self.klass.spec)  # not left boosted
        self._transition(State.FAILED, reason, Happening.START_FAILED)
        if failed:
            self._count_failure("failed start")

    def _count_failure(self, what: str) -> None:
        """A failed start or a crash, for the crash-loop breaker; tell the observers when it opens."""
        if self.breaker.failed(asyncio.get_running_loop().time()):
            reason = f"crash loop: {what} ({self.last_error}); starts refused for {self.breaker.backoff:g}s"
            log.warning("breaker_open", key=self.key, container=self.klass.name, reason=reason)
            self.services.bus.emit(BreakerOpened(self.key, self.klass.name, reason, self.breaker.backoff))

    # ------------------------------------------------------------------ stop

    @property
    def sleep_after(self) -> float:
        """Idle seconds before the instance stops: the key's own (an operator set it) or its class's."""
        return self.klass.sleep_after if self.sleep_after_override is None else self.sleep_after_override

    def set_sleep_after(self, seconds: float | None) -> None:
        """Override the class's sleep_after for this key (None: the class's again). Counted from the last
        activity, like the class's: a shorter one that has already passed stops the instance now."""
        self.sleep_after_override = seconds
        self._idle_never = None
        self.idle.rearm()

    @property
    def pause_after(self) -> float:
        """Idle seconds before a running instance is paused; 0 when it is not (off, or not before the stop)."""
        refused = self._pauser is not None and self._pauser.refused_at == self.last_activity
        return pause_after(self.klass.pause_after, self.sleep_after, refused, self.services.backend)

    def _begin_stop(self, reason: StopReason, drain: float = 0.0, remove: bool = False,
                    after: asyncio.Future[None] | None = None) -> asyncio.Task[None] | None:
        """From running or paused (or, to `remove` a stopped container, from stopped or failed too)."""
        if self.state is State.STOPPING:
            return self._stop_task
        if self.state not in LIVE and not (remove and self.state in (State.STOPPED, State.FAILED)):
            return None
        self.idle.cancel()
        paused = self.state is State.PAUSED
        self._transition(State.STOPPING, reason.value)
        self._stop_task = asyncio.create_task(self._run_stop(reason, drain, paused, remove, after),
                                              name=f"stop:{self.key}")
        return self._stop_task

    async def _run_stop(self, reason: StopReason, drain: float = 0.0, paused: bool = False,
                        remove: bool = False, after: asyncio.Future[None] | None = None) -> None:
        instance = self.instance
        try:
            if after is not None:
                await asyncio.gather(after, return_exceptions=True)  # a retired instance's exchanges end first
            await drain_requests(self, drain)
            if instance is not None and not await self.confirmed():
                log.warning("stop_not_confirmed", key=self.key, container=self.klass.name, reason=reason.value)
                instance = None  # not this replica's to stop any more: the manager lets go of it untouched
            if instance is not None:
                if paused:
                    await self.pauser.thaw(instance)
                await self._stop_instance(instance)
            backend = self.services.backend
            if remove and isinstance(backend, Removable):
                try:
                    await backend.remove(self.key, self.klass.spec)
                except Exception as exc:  # noqa: BLE001 - reported; a later start replaces a stale container
                    self.last_error = f"remove failed: {type(exc).__name__}: {exc}"
                    log.warning("remove_failed", key=self.key, container=self.klass.name, error=self.last_error)
        finally:
            stopped = instance is not None  # else only a stopped container was removed: no instance stopped
            self._transition(State.STOPPED, reason.value, Happening.STOPPED if stopped else None,
                             reason if stopped else None)

    async def _stop_instance(self, instance: Instance) -> None:
        """Stop, retrying while the runtime refuses or cannot be reached: a forgotten failed stop leaves a
        container running that nothing will ever stop."""
        for delay in (*STOP_RETRY_DELAYS, None):
            try:
                await self.services.backend.stop(instance)
                return
            except Exception as exc:  # noqa: BLE001 - any failure is retried, then reported
                self.last_error = f"stop failed: {type(exc).__name__}: {exc}"
                log.warning("stop_failed", key=self.key, container=self.klass.name, error=self.last_error,
                            retry_in=delay)
                if delay is None:
                    return
                await asyncio.sleep(delay)

    def fenced(self) -> None:
        """Raise `Fenced` when clustered and this replica may not act on the key now."""
        if (fence := self.services.fence) is not None and not fence.holds(self):
            raise Fenced(f"{self.key} is not certainly owned by this replica", key=self.key)

    async def confirmed(self) -> bool:
        """Right before a stop or pause of a running instance: still this replica's (unclustered: always)."""
        fence = self.services.fence
        return fence is None or await fence.confirm(self)

    def cancel_start(self) -> bool:
        """Give up a start in progress (at shutdown, after the drain: nobody waits for it any more); its
        half-started instance is stopped by `_abandon_start`. True when there was one."""
        if self._start_task is None or self._start_task.done():
            return False
        self._start_task.cancel()
        return True

    async def stop(self, reason: StopReason, drain: float = 0.0, *, remove: bool = False) -> None:
        """Stop now (shutdown, admin). Waits for a start in progress first; a wait for a capacity slot is
        given up (else the slots this very shutdown frees would start an instance nobody asked for).

        Stopping begins at once (a new request waits, then starts a fresh instance); requests in flight on
        the instance get up to `drain` seconds to end first. `remove`: the container is removed as well,
        so no warm restart reuses it (admin destroy); the key's sleep_after override is forgotten too."""
        if self.state in (State.STOPPED, State.FAILED) and self._start_task is not None \
                and not self._start_task.done():
            self._start_task.cancel()
            if not remove:
                return
        if self.state is State.STARTING and self._start_task is not None:
            try:
                await asyncio.shield(self._start_task)
            except Exception:  # noqa: BLE001 - nothing to stop if it failed
                if not remove:
                    return
        if remove:
            self.sleep_after_override = None
            if self.state is State.STOPPING and self._stop_task is not None:  # a stop under way: remove after it
                await asyncio.shield(self._stop_task)
        task = self._begin_stop(reason, drain, remove)
        if task is not None:
            await asyncio.shield(task)

    def let_go(self) -> None:
        """Another replica owns the key now (a handover, a lost lease): its instance is never stopped or paused
        here; once nothing is in flight here, the manager is `stopped` without a stop (its slot given back)."""
        self.set_sleep_after(0)  # 0: no idle stop, no pause
        if self.state is State.RUNNING:
            asyncio.create_task(self._let_go(), name=f"let-go:{self.key}").add_done_callback(consume_exception)

    async def _let_go(self) -> None:
        while self.in_flight > self._waiting:  # a WebSocket may last hours: its end frees the slot
            await drain_requests(self, 3600.0)
        if self.state is State.RUNNING:
            self.instance = None  # its pools are not closed: a new manager here may have adopted it again
            self._transition(State.STOPPED, "handed over")

    def adopt(self, instance: Instance) -> None:
        """Take over an instance a previous proxy process started (restart without double start)."""
        self.instance = instance
        self._transition(State.RUNNING, "adopted", Happening.ADOPTED)
        self.touch()
        settle_soon(self, instance, self.klass.spec)  # its start may have ended with the proxy before ready

    # ------------------------------------------------------------------ bookkeeping

    def _transition(self, new: State, reason: str, happening: Happening | None = None,
                    stop_reason: StopReason | None = None, phases: tuple[tuple[str, float], ...] = ()) -> None:
        """Change state; keep the capacity count and the instance's pools right; tell the observers."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        old, self.state = self.state, new
        duration = now - self._since if self._since else 0.0
        self._since = now
        name = self.klass.name
        if (new in ACTIVE) != (old in ACTIVE):
            (self.services.capacity.claim if new in ACTIVE else self.services.capacity.release)(name)
        instance = self.instance
        if new in (State.STOPPED, State.FAILED):
            self.instance = None
            if instance is not None:
                self.services.pools.forget(instance)
        self.services.bus.emit(Transition(self.key, name, old, new, duration, reason, instance, happening,
                                          stop_reason, phases))

    @property
    def changed_at(self) -> float:
        """The loop time of the last state change (0: none yet)."""
        return self._since

    def status(self) -> dict[str, object]:
        loop = asyncio.get_running_loop()
        last = time.time() - (loop.time() - self.last_activity) if self.last_activity else None
        return {
            "key": self.key,
            "container": self.klass.name,
            "state": self.state.value,
            "in_flight": self.in_flight,
            "last_activity": last,
            "start_count": self.start_count,
            "address": self.instance.url if self.instance else None,
            "last_error": self.last_error or None,
            "breaker": self.breaker.status(loop.time()),
            "sleep_after": self.sleep_after,
        }

    # ------------------------------------------------------------------ components, made on first use

    @property
    def pauser(self) -> Pauser:  # pause and resume: proxy/lifecycle/pause.py
        self._pauser = self._pauser or Pauser(self)
        return self._pauser

    @property
    def health(self) -> HealthWatch:  # liveness checks and retiring: proxy/lifecycle/health.py
        self._health = self._health or HealthWatch(self)
        return self._health
