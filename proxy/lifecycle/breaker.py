"""The crash-loop breaker of one key: after repeated failed starts or crashes, refuse starts for a while.

Without it an image that exits at start gets a backend start per request. The rules, all here:
- A failure (a failed or timed-out start, or a running instance found dead) is recorded with the loop time.
  `failures` of them within `window` seconds open the breaker.
- While open, `wait()` is the remaining backoff (> 0) and the caller refuses the start (503, Retry-After
  that long) without asking the backend.
- Once the backoff has passed the breaker is half-open: `wait()` returns 0, one start is let through (the
  manager's starts are single-flight: every request meanwhile shares that one). The trial's success closes
  the breaker; its failure opens it again with twice the backoff, capped at `max_backoff`.
- The backoff starts from `backoff` again once the breaker has stayed closed for `window`.
`failures: 0` turns it off. The clock is the caller's (the loop's time), so unit tests run it virtually.
"""

from __future__ import annotations

import enum
from collections import deque

from proxy.config.containers import CrashLoopPolicy


class BreakerState(str, enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Breaker:
    __slots__ = ("policy", "state", "backoff", "_failures", "_open_until", "_closed_at")

    def __init__(self, policy: CrashLoopPolicy) -> None:
        self.policy = policy
        self.state = BreakerState.CLOSED
        self.backoff = 0.0  # the current (or last) open's backoff
        self._failures: deque[float] = deque()
        self._open_until = 0.0
        self._closed_at = 0.0

    def wait(self, now: float) -> float:
        """Seconds before a start may be tried; 0 lets one start through now (the half-open trial)."""
        if self.state is BreakerState.OPEN:
            if now < self._open_until:
                return self._open_until - now
            self.state = BreakerState.HALF_OPEN
        return 0.0

    def failed(self, now: float) -> bool:
        """Record a failed start or a crash; True when this opens the breaker."""
        policy = self.policy
        if policy.failures <= 0:
            return False
        if self.state is BreakerState.HALF_OPEN:
            return self._open(now, min(self.backoff * 2, policy.max_backoff))
        if self.state is BreakerState.OPEN:
            return False  # a late failure of what was already counted (an abandoned start's cleanup)
        self._failures.append(now)
        while self._failures and self._failures[0] <= now - policy.window:
            self._failures.popleft()
        if len(self._failures) < policy.failures:
            return False
        recently = self.backoff > 0 and now - self._closed_at < policy.window  # reopened soon after closing
        return self._open(now, min(self.backoff * 2, policy.max_backoff) if recently else policy.backoff)

    def succeeded(self, now: float) -> None:
        """A start became ready: a half-open breaker closes (and forgets the failures that opened it)."""
        if self.state is BreakerState.HALF_OPEN:
            self.state = BreakerState.CLOSED
            self._failures.clear()
            self._closed_at = now

    def _open(self, now: float, backoff: float) -> bool:
        self.state = BreakerState.OPEN
        self.backoff = backoff
        self._open_until = now + backoff
        self._failures.clear()
        return True

    @property
    def is_open(self) -> bool:
        """Open or half-open: the key is in a crash loop until a start succeeds."""
        return self.state is not BreakerState.CLOSED

    def status(self, now: float) -> dict[str, object]:
        return {"state": self.state.value, "failures": len(self._failures),
                "retry_in": round(max(0.0, self._open_until - now), 3) if self.state is BreakerState.OPEN else 0.0,
                "backoff": self.backoff}
