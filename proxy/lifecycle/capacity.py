"""How many instances of each container class exist (or are being made), against `max_instances`.

The manager claims a slot when it begins a start (or adopts) and releases it when its instance is
gone; it calls this directly rather than through the event bus, because a missed count would let a
class exceed its limit or lock it out for good.

At the limit a start may wait for a slot (`capacity_wait`), in arrival order: `release` hands the
freed slot to the oldest waiter (it is *reserved* for it until it resumes), so a newcomer cannot
overtake the queue. `wait_for_slot` returning True means the slot is the caller's: it must `claim`
it before its next await, or give it back with `unused`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Mapping


class Capacity:
    def __init__(self, limits: Mapping[str, int]) -> None:
        self._limits = dict(limits)
        self._active = dict.fromkeys(limits, 0)
        self._reserved = dict.fromkeys(limits, 0)  # freed slots handed to a waiter that has not resumed yet
        self._waiters: dict[str, deque[asyncio.Future[None]]] = {name: deque() for name in limits}

    def may_start(self, class_name: str) -> bool:
        return self._active[class_name] + self._reserved[class_name] < self._limits[class_name]

    def active(self, class_name: str) -> int:
        return self._active[class_name]

    def limit(self, class_name: str) -> int:
        return self._limits[class_name]

    def waiting(self, class_name: str) -> int:
        """Starts queued for a slot of this class."""
        return len(self._waiters[class_name])

    def claim(self, class_name: str) -> None:
        self._active[class_name] += 1

    def release(self, class_name: str) -> None:
        self._active[class_name] -= 1
        self._dispatch(class_name)

    def unused(self, class_name: str) -> None:
        """A slot `wait_for_slot` granted will not be claimed after all: pass it on."""
        self._dispatch(class_name)

    async def wait_for_slot(self, class_name: str, timeout: float, *, max_queue: int | None = None) -> bool:
        """Wait (in arrival order, up to `timeout` seconds) until a start of `class_name` may begin.

        True: a slot is free for the caller, who must claim it before awaiting anything. False: none
        came in time, or `max_queue` starts already wait (then at once)."""
        if self.may_start(class_name):
            return True
        queue = self._waiters[class_name]
        if timeout <= 0 or (max_queue is not None and len(queue) >= max_queue):
            return False
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(granted)
        try:
            async with asyncio.timeout(timeout):
                await granted
        except TimeoutError:
            pass
        except BaseException:  # cancelled: a slot handed over meanwhile goes to the next waiter
            self._give_up(class_name, granted)
            raise
        if granted.done() and not granted.cancelled():  # handed over (perhaps just as the timeout fired)
            self._reserved[class_name] -= 1
            return True
        self._give_up(class_name, granted)
        return False

    def _give_up(self, class_name: str, granted: asyncio.Future[None]) -> None:
        if granted.done() and not granted.cancelled():
            self._reserved[class_name] -= 1
            self._dispatch(class_name)
            return
        granted.cancel()
        try:
            self._waiters[class_name].remove(granted)
        except ValueError:
            pass

    def _dispatch(self, class_name: str) -> None:
        """Hand free slots to the oldest live waiters."""
        queue = self._waiters[class_name]
        while queue and self.may_start(class_name):
            granted = queue.popleft()
            if granted.done():  # cancelled or timed out: skipped
                continue
            self._reserved[class_name] += 1
            granted.set_result(None)
