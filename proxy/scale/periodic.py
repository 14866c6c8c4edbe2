"""A tick on the event loop and the background tasks it begins, ended together by `stop`.

Autoscaling (proxy/scale/autoscale.py) and adaptive pre-warm (proxy/scale/adaptive.py) each sample the managers on a
timer and start instances in the background; this is the part they share.
"""

from __future__ import annotations

import asyncio
from typing import Any, Coroutine


class Periodic:
    def __init__(self) -> None:
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def tick(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        """The first tick at once."""
        self.again(0)

    def again(self, delay: float) -> None:
        """The next tick in `delay` seconds (a tick ends with this)."""
        self._timer = asyncio.get_running_loop().call_later(delay, self.tick)

    def spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run `work` in the background, cancelled by `stop` if still running."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in self._tasks:
            task.cancel()
