"""Lifecycle events: what a manager tells the rest of the proxy, and nothing more.

The manager emits one `Transition` per state change; the ones that complete something carry a
`Happening` that says what (started, adopted, stopped, start failed, crashed), so logs, metrics, the
usage meter and webhooks read the same fact instead of each re-deriving it from old and new states.
Requests that waited for a start emit `ColdWait`. Nothing load-bearing hangs off the bus: the
capacity count and upstream pools are told explicitly by the manager (proxy/lifecycle/manager.py).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Callable, Union

import structlog

from backends.base import Instance


class State(str, enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    FAILED = "failed"
    PAUSED = "paused"  # frozen by the runtime (memory kept, no CPU); a request resumes it


# States in which an instance exists (or is being made) and so counts against max_instances.
ACTIVE = frozenset({State.STARTING, State.RUNNING, State.STOPPING, State.PAUSED})


class Happening(str, enum.Enum):
    STARTED = "started"  # became ready after a start (duration: the start)
    ADOPTED = "adopted"  # a running instance left by an earlier proxy process was taken over
    STOPPED = "stopped"  # stopped on purpose; `stop_reason` says why
    START_FAILED = "start_failed"  # the start failed or timed out; `reason` has the backend's words
    CRASHED = "crashed"  # a running instance was found dead (exited, removed, killed)


class StopReason(str, enum.Enum):
    IDLE = "idle"
    SHUTDOWN = "shutdown"
    ERROR = "error"  # what a crash counts as
    ADMIN = "admin"
    UNHEALTHY = "unhealthy"  # stopped answering (replace_after_timeouts upstream timeouts in a row)


@dataclass(frozen=True)
class Transition:
    key: str
    class_name: str  # the container class's name
    old: State
    new: State
    duration: float  # seconds spent in `old`
    reason: str = ""  # why, in words: "request", "keepalive", "cron", "ready", a backend message...
    instance: Instance | None = None
    happening: Happening | None = None  # set on the transitions that complete something
    stop_reason: StopReason | None = None  # with STOPPED and CRASHED
    # With STARTED: the start's phases in order, e.g. (create, start, port, ready), seconds each; they add up to
    # `duration` (see START_PHASES in proxy/observe/metrics.py)
    phases: tuple[tuple[str, float], ...] = ()
    timestamp: float = field(default_factory=time.time)


@dataclass(frozen=True)
class ColdWait:
    """A request (or pre-warm) waited `seconds` for its key's instance to become ready."""

    class_name: str
    seconds: float


@dataclass(frozen=True)
class BreakerOpened:
    """A key's crash-loop breaker opened (or opened again): its starts are refused for `backoff` seconds."""

    key: str
    class_name: str
    reason: str
    backoff: float
    timestamp: float = field(default_factory=time.time)


@dataclass(frozen=True)
class StartPhase:
    """Live progress of a start in progress: phase `ended` took `seconds` ("" when only `now` is news); `now` is
    the phase under way when the manager knows it ("ready": the instance exists, its readiness is probed)."""

    key: str
    class_name: str
    ended: str
    seconds: float
    now: str = ""


Event = Union[Transition, ColdWait, BreakerOpened, StartPhase]
Listener = Callable[[Event], None]


class EventBus:
    """Fan-out to observers; a failing observer is logged and never breaks a lifecycle."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def emit(self, event: Event) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:  # noqa: BLE001 - observers must not take down the manager
                structlog.get_logger("proxy.events").exception("listener_failed", listener=repr(listener))
