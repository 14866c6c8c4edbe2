"""How many instances of each container class exist (or are being made), against `max_instances`.

The manager claims a slot when it begins a start (or adopts) and releases it when its instance is
gone; it calls this directly rather than through the event bus, because a missed count would let a
class exceed its limit or lock it out for good.
"""

from __future__ import annotations

from typing import Mapping


class Capacity:
    def __init__(self, limits: Mapping[str, int]) -> None:
        self._limits = dict(limits)
        self._active = dict.fromkeys(limits, 0)

    def may_start(self, container: str) -> bool:
        return self._active[container] < self._limits[container]

    def active(self, container: str) -> int:
        return self._active[container]

    def limit(self, container: str) -> int:
        return self._limits[container]

    def claim(self, container: str) -> None:
        self._active[container] += 1

    def release(self, container: str) -> None:
        self._active[container] -= 1
