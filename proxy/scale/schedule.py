"""Timers that pre-warm instances: per-class keepalive and the seed's cron jobs.

Time comes from an injectable clock, so tests drive a cron tick without sleeping minutes.
A tick missed while the proxy was down (or busy) is not replayed: the next time is computed from now.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Awaitable, Callable

import structlog
from croniter import croniter

from proxy.config.schema import Schedule

log = structlog.get_logger("proxy.schedule")
Clock = Callable[[], float]  # wall-clock seconds since the epoch


def next_time(schedule: Schedule, now: float) -> float:
    if schedule.every is not None:
        return now + schedule.every
    assert schedule.cron is not None
    start = datetime.fromtimestamp(now, tz=timezone.utc)
    return float(croniter(schedule.cron, start).get_next(float))


@dataclass
class Job:
    name: str
    schedule: Schedule
    action: Callable[[], Awaitable[None]]
    next_at: float


class Scheduler:
    def __init__(self, clock: Clock = time.time) -> None:
        self.clock = clock
        self.jobs: list[Job] = []
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._firing: set[asyncio.Task[list[str]]] = set()

    def add(self, name: str, schedule: Schedule, action: Callable[[], Awaitable[None]]) -> Job:
        job = Job(name, schedule, action, next_time(schedule, self.clock()))
        self.jobs.append(job)
        self._wake.set()
        return job

    async def run_due(self, now: float | None = None) -> list[str]:
        """Fire every job whose time has come (once, however many ticks were missed)."""
        now = self.clock() if now is None else now
        due = [job for job in self.jobs if job.next_at <= now]
        for job in due:
            job.next_at = next_time(job.schedule, now)
        results = await asyncio.gather(*(job.action() for job in due), return_exceptions=True)
        for job, result in zip(due, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("job_failed", job=job.name, error=f"{type(result).__name__}: {result}")
        return [job.name for job in due]

    def clear(self) -> None:
        """Drop every job (a reload adds the new config's); the timer ends until `start` begins it again."""
        self.jobs.clear()
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def start(self) -> None:
        if self.jobs and self._task is None:
            self._task = asyncio.create_task(self._run(), name="scheduler")

    async def _run(self) -> None:
        while True:
            delay = min(job.next_at for job in self.jobs) - self.clock()
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.0, min(delay, 60.0)))
            except asyncio.TimeoutError:
                pass
            # Fire in the background: a slow start must not delay the next job's tick.
            task = asyncio.create_task(self.run_due())
            self._firing.add(task)
            task.add_done_callback(self._firing.discard)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for task in list(self._firing):
            task.cancel()
        await asyncio.gather(*self._firing, return_exceptions=True)
