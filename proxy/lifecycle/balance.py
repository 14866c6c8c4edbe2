"""Load-balancing policy for `mode: lb` routes: which pool member takes the next request.

Pool members get keys no URL can produce (`lb#0`, `lb#1`, ...: `#` never reaches a path, and
`validate_key` refuses it), so a per-key route can never address a balanced pool's instance.
"""

from __future__ import annotations

from typing import Callable, Sequence

from proxy.lifecycle.events import ACTIVE, State
from proxy.lifecycle.manager import Manager

POOL_SEPARATOR = "#"


def member_key(base_key: str, index: int) -> str:
    return f"{base_key}{POOL_SEPARATOR}{index}"


def least_loaded(pool: Sequence[Manager], may_start: Callable[[], bool]) -> Manager:
    """An idle ready member; else a cold one to start (while capacity allows); else the least busy."""
    running = [m for m in pool if m.state is State.RUNNING]
    if running:
        best = min(running, key=lambda m: m.in_flight)
        if best.in_flight == 0:
            return best
    cold = [m for m in pool if m.state not in ACTIVE]
    if cold and may_start():
        return cold[0]
    live = [m for m in pool if m.state in ACTIVE] or list(pool)
    return min(live, key=lambda m: (m.in_flight, m.state is not State.RUNNING))
