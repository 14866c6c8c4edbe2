"""Lifecycle events: what a manager tells the rest of the proxy, and nothing more.

The manager emits one `Transition` per state change; logs, metrics, the usage meter, the capacity
count and webhooks all subscribe. So the manager stays free of every one of those concerns.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Callable

from backends.base import Instance


class State(str, enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    FAILED = "failed"


# States in which an instance exists (or is being made) and so counts against max_instances.
ACTIVE = frozenset({State.STARTING, State.RUNNING, State.STOPPING})


@dataclass(frozen=True)
class Transition:
    key: str
    container: str
    old: State
    new: State
    duration: float  # seconds spent in `old`
    reason: str = ""  # why: "request", "keepalive", "cron", "idle", "shutdown", "error", a backend message...
    instance: Instance | None = None
    timestamp: float = field(default_factory=time.time)


Listener = Callable[[Transition], None]


class EventBus:
    """Fan-out of transitions to listeners; a failing listener never breaks a lifecycle."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def emit(self, event: Transition) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:  # noqa: BLE001 - observers must not take down the manager
                import structlog

                structlog.get_logger("proxy.events").exception("listener_failed", listener=repr(listener))
