"""Each key's start as it happens, read from the event bus, and what a waiting page may be told of it.

A waiting page reads its own key's progress through an unguessable token (an HMAC of the key under a secret
made at start-up), never by naming a key: the token is handed out only with a waiting page for that key, and
the snapshot holds the phase names and their seconds, the state and a public reason, nothing else (no other
key, no address, no image, no backend words unless `errors.detail: full`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from proxy.errors import StartFailed, StartTimeout
from proxy.lifecycle.events import Event, EventBus, Happening, StartPhase, State, Transition

Unit = tuple[str, str]  # (container class, key)

# What a person reads for each phase under way.
PHASE_WORDS = {
    "start": "starting the container", "pull": "pulling the image", "create": "creating the container",
    "port": "waiting for the port", "ready": "waiting for the app to answer", "restart": "restarting the container",
    "unpause": "waking the container", "queued": "waiting for a free slot", "resume": "waking the app",
}
# A backend's usual order (the engines'; the stub's and process's start is followed by `ready`, which the manager
# says at once): what a page shows after a phase ended until the next is told.
NEXT = {"pull": "create", "create": "start", "start": "port", "restart": "port", "unpause": "port", "port": "ready"}


@dataclass
class Start:
    """One key's current (or last) start."""

    began: float = field(default_factory=time.monotonic)
    state: str = "starting"  # starting | ready | failed
    now: str = "start"  # the phase under way
    done: list[tuple[str, float]] = field(default_factory=list)
    reason: str = ""  # public words, for a failed start
    ended: float | None = None
    version: int = 0

    def snapshot(self, app: str) -> dict[str, Any]:
        elapsed = (self.ended or time.monotonic()) - self.began
        return {"app": app, "state": self.state, "phase": self.now if self.state == "starting" else "",
                "phase_words": PHASE_WORDS.get(self.now, self.now) if self.state == "starting" else "",
                "phases": [{"name": name, "seconds": round(seconds, 3)} for name, seconds in self.done],
                "elapsed": round(elapsed, 3), "reason": self.reason or None}


def public_reason(reason: str, detail: str) -> str:
    """A failed start's words for a person: the public sentence unless `errors.detail: full`."""
    if detail == "full":
        return reason
    return StartTimeout.public if reason.startswith("not ready within") else (StartFailed.public or "")


class Progress:
    """Starts in progress and just ended, per key; `changed(unit)` wakes whoever streams that key."""

    def __init__(self, bus: EventBus, detail: str = "public") -> None:
        self.detail = detail
        self.starts: dict[Unit, Start] = {}
        self._secret = secrets.token_bytes(32)
        self._tokens: dict[str, Unit] = {}  # handed out with a waiting page
        self._changed: dict[Unit, asyncio.Event] = {}
        bus.subscribe(self.on_event)

    # ---------------------------------------------------------------- tokens

    def token(self, class_name: str, key: str) -> str:
        digest = hmac.new(self._secret, f"{class_name}\0{key}".encode(), hashlib.sha256).digest()
        token = base64.urlsafe_b64encode(digest[:18]).decode()
        self._tokens[token] = (class_name, key)
        return token

    def unit_of(self, token: str) -> Unit | None:
        return self._tokens.get(token)

    # ---------------------------------------------------------------- events

    def on_event(self, event: Event) -> None:
        if isinstance(event, StartPhase):
            start = self.starts.get((event.class_name, event.key))
            if start is None or start.state != "starting":
                return
            if event.ended:
                start.done.append((event.ended, event.seconds))
            start.now = event.now or NEXT.get(event.ended, start.now)
            self._bump((event.class_name, event.key), start)
        elif isinstance(event, Transition):
            self._transition(event)

    def _transition(self, event: Transition) -> None:
        unit = (event.class_name, event.key)
        start = self.starts.get(unit)
        if event.new is State.STARTING or (event.old is State.PAUSED and event.new is State.RUNNING):
            start = self.starts[unit] = Start(now="start" if event.new is State.STARTING else "resume")
        elif start is None or start.state != "starting":
            return
        elif event.new is State.RUNNING:
            start.state, start.ended = "ready", time.monotonic()
            if event.happening is Happening.STARTED and event.phases:
                start.done = list(event.phases)
        elif event.new in (State.FAILED, State.STOPPED):
            start.state, start.ended = "failed", time.monotonic()
            start.reason = public_reason(event.reason, self.detail)
        else:
            return
        self._bump(unit, start)

    def fail(self, class_name: str, key: str, reason: str) -> None:
        """A start refused before it began (breaker open, no capacity): the page says so."""
        start = self.starts[(class_name, key)] = Start(state="failed", reason=reason)
        start.ended = start.began
        self._bump((class_name, key), start)

    def _bump(self, unit: Unit, start: Start) -> None:
        start.version += 1
        if (changed := self._changed.pop(unit, None)) is not None:
            changed.set()

    def wake_all(self) -> None:
        for changed in self._changed.values():
            changed.set()
        self._changed.clear()

    async def next_change(self, unit: Unit, timeout: float) -> None:
        """Return when the key's start changes, or after `timeout` seconds."""
        changed = self._changed.setdefault(unit, asyncio.Event())
        try:
            async with asyncio.timeout(timeout):
                await changed.wait()
        except TimeoutError:
            pass
