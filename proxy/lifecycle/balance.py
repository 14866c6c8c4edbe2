"""Load-balancing policy for `mode: lb` routes: which pool member takes the next request.

Pool members are keyed by `member_key` (proxy/keys.py), a key rule the config and the cluster use too.
"""

from __future__ import annotations

from typing import Callable, Sequence

from proxy.lifecycle.events import ACTIVE, State
from proxy.lifecycle.manager import Manager


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
