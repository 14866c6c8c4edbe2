"""A key's requests in flight and its last activity: the part of a `Manager` every request runs through.

Kept out of proxy/lifecycle/manager.py so that mypyc compiles it (python -m proxy.compile): the manager module
is not compiled (its async generator `lease` is beyond mypyc), and its `Manager` inherits this class, so the fast
path's `hold`/`release` per request run as native code. A class of its own, not a mixin of protocols: native
attributes are what make it cheap.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, cast

from proxy.config.schema import ContainerClass
from proxy.lifecycle.idle import IdleKey, IdleTimer

try:  # (ships with mypy, which the compiled build needs; only mypyc reads the mark)
    from mypy_extensions import mypyc_attr
except ImportError:  # plain Python without mypy: a no-op does
    def mypyc_attr(*attrs: str, **kwattrs: object) -> Callable[[Any], Any]:  # type: ignore[misc]
        return lambda cls: cls


@mypyc_attr(allow_interpreted_subclasses=True)  # Manager (interpreted) inherits it
class InFlight:
    __slots__ = ("klass", "in_flight", "last_activity", "sleep_after_override", "_waiting", "_drained", "_idle",
                 "_idle_never")

    def __init__(self, klass: ContainerClass) -> None:
        self.klass = klass  # the container class: what to run and the lifecycle policy
        self.in_flight = 0
        self.last_activity = 0.0  # loop time
        self.sleep_after_override: float | None = None  # an operator's per-key sleep_after (admin API)
        self._waiting = 0  # requests held but waiting for the instance (not on it): a drain does not wait for them
        self._drained: asyncio.Future[None] | None = None  # set while a stop or pause waits for requests to end
        self._idle: IdleTimer | None = None
        self._idle_never: ContainerClass | None = None  # the class under which idleness never acts (see `touch`)

    def hold(self) -> None:
        """One more request or WebSocket in flight: the instance is not stopped while any is."""
        self.in_flight += 1

    def release(self, now: float | None = None) -> None:
        """The end of what `hold` began (the fast path calls the pair directly, the aiohttp path via lease)."""
        self.in_flight -= 1
        drained = self._drained
        if drained is not None and self.in_flight <= self._waiting and not drained.done():
            drained.set_result(None)
        _touch(self, now)

    def touch(self, now: float | None = None) -> None:
        """Record activity (a request finished, a WebSocket message passed, a keepalive tick). `now`: the loop's
        time when the caller has it (the fast path: on Python 3.11 `get_running_loop()` costs a getpid())."""
        _touch(self, now)

    @property
    def idle(self) -> IdleTimer:  # the idle pause and stop: proxy/lifecycle/idle.py
        self._idle = self._idle or IdleTimer(cast(IdleKey, self))  # (self: the Manager, which is an IdleKey)
        return self._idle


def _touch(key: InFlight, now: float | None) -> None:
    """`touch`, as a function: compiled, `release` calls it natively, where a method call on the Manager (an
    interpreted subclass) goes through Python (~1.4k instructions a request)."""
    key.last_activity = asyncio.get_running_loop().time() if now is None else now
    if key.in_flight == 0 and (klass := key.klass) is not key._idle_never:
        (key._idle or key.idle).arm()  # (the property only the first time)
        if klass.sleep_after <= 0 and klass.pause_after <= 0 and key.sleep_after_override is None:
            key._idle_never = klass  # no stop, no pause, whatever the state: not armed until these change
