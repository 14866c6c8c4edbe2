"""The idle timer of one key: the `IdleTimer` a `Manager` makes when its instance first goes idle.

One loop timer at the next moment idleness acts: the pause of a running instance (the class's
`pause_after`), else the stop (`sleep_after`). It is armed only while nothing is in flight, and the
deadline is read afresh at each arm, so a changed `sleep_after` or a refused pause counts at once.
The timer sees its manager through `IdleKey`, declared here.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from proxy.lifecycle.events import State, StopReason
from proxy.lifecycle.pause import LIVE, Pauser
from proxy.lifecycle.services import FencedKey, ManagedKey


class IdleKey(ManagedKey, FencedKey, Protocol):
    """What the idle timer uses of a key's manager, beyond what every component does: its activity, its idle
    times and its pauser."""

    @property
    def last_activity(self) -> float: ...
    @property
    def sleep_after(self) -> float: ...
    @property
    def pause_after(self) -> float: ...
    @property
    def pauser(self) -> Pauser: ...


class IdleTimer:
    __slots__ = ("manager", "_handle")

    def __init__(self, manager: IdleKey) -> None:
        self.manager = manager
        self._handle: asyncio.TimerHandle | None = None

    def deadline(self) -> float | None:
        """When idleness acts next (loop time): the pause of a running instance, else the stop."""
        m = self.manager
        if m.state is State.RUNNING and (pause := m.pause_after):
            return m.last_activity + pause
        sleep = m.sleep_after
        return m.last_activity + sleep if sleep > 0 else None

    def arm(self) -> None:
        if self._handle is None and self.manager.state in LIVE and (deadline := self.deadline()) is not None:
            self._handle = asyncio.get_running_loop().call_at(deadline, self._fire)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def rearm(self) -> None:
        """Set the timer afresh (its deadline moved earlier: a pause tier to come again)."""
        self.cancel()
        if self.manager.in_flight == 0:
            self.arm()

    def _fire(self) -> None:
        self._handle = None
        m = self.manager
        if m.state not in LIVE or m.in_flight:
            return  # the last request's release re-arms the timer
        if (fence := m.services.fence) is not None and not fence.holds(m):
            return  # clustered, and the key may be another replica's now: its instance is left alone
        now = asyncio.get_running_loop().time() + 0.001
        if m.sleep_after > 0 and now >= m.last_activity + m.sleep_after:
            m._begin_stop(StopReason.IDLE)
            return
        if m.state is State.RUNNING and m.pause_after and now >= m.last_activity + m.pause_after:
            m.pauser.pause_when_idle()
        self.arm()  # for what comes next (the stop), or again after activity since the timer was set
