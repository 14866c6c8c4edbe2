"""Event-loop lag: how late a periodic timer fires, so an operator sees any step that stalls the data path.

Every request, probe and timer of the proxy shares one event loop: a step that runs 200 ms (a status page
built in one go, a large JSON body encoded at once) delays every proxied request by up to that. A timer
due every `interval` seconds is late by about as long as the step that held the loop when it fell due, so
the lateness of each tick, observed into `proxy_event_loop_lag_seconds`, shows any stall longer than the
interval (and most shorter ones). A tick costs one timer callback and one histogram observation.

Lateness is wall time: on a busy host it includes the time the OS ran other processes. `busiest` is the
loop thread's own CPU time between two ticks, which other processes cannot inflate: with a short interval
it bounds the longest step the proxy itself took (tests assert on it; operators read the histogram).
"""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry, Histogram

INTERVAL = 0.1  # seconds between ticks: 10 cheap callbacks a second
# 0.5 ms to 10 s: a healthy loop's ticks fall in the first buckets, a stall in the ones its length names.
BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2,
           0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0)


class LoopLag:
    """A timer re-armed every `interval` seconds; each tick records how late it fired (and the worst yet)."""

    def __init__(self, registry: CollectorRegistry | None = None, interval: float = INTERVAL) -> None:
        self.interval = interval
        self.worst = 0.0  # the longest lag seen since start (or `reset`): what a bench reads
        self.busiest = 0.0  # the most CPU time the loop's thread spent between two ticks since start (or `reset`)
        self.ticks = 0
        self._cpu = 0.0
        self._histogram = Histogram(
            "proxy_event_loop_lag_seconds", "How late a timer due every 0.1 s fired: the event loop was busy "
            "with something else that long (every proxied request waited as long).", buckets=BUCKETS,
            registry=registry) if registry is not None else None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    def start(self) -> None:
        if self._handle is None:
            loop = asyncio.get_running_loop()
            self._due = loop.time() + self.interval
            self._cpu = time.thread_time()
            self._handle = loop.call_at(self._due, self._tick, loop)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def reset(self) -> float:
        """The worst lag since the last reset (or start), and start counting afresh."""
        worst, self.worst, self.busiest = self.worst, 0.0, 0.0
        return worst

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        now, cpu = loop.time(), time.thread_time()
        lag = max(0.0, now - self._due)  # asyncio may fire a timer up to its clock resolution early
        self.ticks += 1
        self.worst = max(self.worst, lag)
        self.busiest = max(self.busiest, cpu - self._cpu)
        self._cpu = cpu
        if self._histogram is not None:
            self._histogram.observe(lag)
        self._due += self.interval
        if self._due < now:  # after a stall: the next tick an interval from now, not a burst of late ones
            self._due = now + self.interval
        self._handle = loop.call_at(self._due, self._tick, loop)
