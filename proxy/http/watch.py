"""What all exchanges share: their limits, the one sweep that enforces upstream_timeout, and the count of
upstream timeouts in a row that takes an instance which stopped answering out of service.

A timer per request would cost more than the request; one sweep a second (or a quarter of
upstream_timeout) over the active exchanges answers each silent one with 504 within that much of its
deadline. `replace_after_timeouts` timeouts in a row on one instance retire it (proxy/lifecycle/health.py).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

from backends.base import Instance
from proxy.wire.upstream import UpstreamPool

if TYPE_CHECKING:
    from proxy.lifecycle.manager import Manager


class _Client(Protocol):
    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...


class _Pools(Protocol):
    def upstream(self, instance: Instance) -> UpstreamPool: ...


class _Handler(Protocol):
    @property
    def pools(self) -> _Pools: ...


class Exchange(Protocol):
    """What the watch reads of an exchange (proxy/http/exchange.py), declared here so the exchange can use
    the watch without the two knowing each other's class."""

    @property
    def client(self) -> _Client: ...
    @property
    def handler(self) -> _Handler: ...
    @property
    def manager(self) -> Manager: ...
    @property
    def pool(self) -> UpstreamPool: ...
    @property
    def last_rx(self) -> float: ...
    @property
    def head_sent(self) -> bool: ...
    def timed_out(self) -> None: ...


class ExchangeWatch:
    """What exchanges share: limits, the one sweep that enforces upstream_timeout, and per instance the
    count of consecutive upstream timeouts that takes an instance which stopped answering out of service."""

    def __init__(self, max_body: int, upstream_timeout: float) -> None:
        self.max_body = max_body
        self.upstream_timeout = upstream_timeout
        self.active: set[Exchange] = set()
        # Consecutive upstream timeouts per instance (its pool); any response byte from it removes the entry.
        self.timeouts: dict[UpstreamPool, int] = {}
        self._draining: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._sweep_every = min(1.0, upstream_timeout / 4)

    def track(self, exchange: Exchange) -> None:
        """Watch an exchange for upstream_timeout: one sweep a second for all, not a timer per request."""
        self.active.add(exchange)
        if self._sweeper is None:
            loop = exchange.client.loop
            self._sweeper = loop.call_later(self._sweep_every, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweeper = None
        deadline = loop.time() - self.upstream_timeout
        for exchange in [e for e in self.active if e.last_rx <= deadline]:
            exchange.timed_out()
        if self.active:
            self._sweeper = loop.call_later(self._sweep_every, self._sweep, loop)

    def count_timeout(self, pool: UpstreamPool, limit: int) -> bool:
        """One more upstream timeout on this instance: True when it makes `limit` in a row (`0`: never), and
        the count starts again. Any response byte in between resets it (`Exchange.on_upstream_data`)."""
        if limit <= 0 or pool.closed:
            return False
        for gone in [p for p in self.timeouts if p.closed]:  # stopped instances: drop their counts
            del self.timeouts[gone]
        count = self.timeouts.get(pool, 0) + 1
        if count < limit:
            self.timeouts[pool] = count
            return False
        self.timeouts.pop(pool, None)
        return True

    def after_timeout(self, exchange: Exchange) -> None:
        """An exchange timed out (and was answered 504). After `replace_after_timeouts` in a row on the same
        instance, it is taken out of service: no new request goes to it, the next one starts a fresh instance;
        it is stopped once the exchanges still on it have ended (each ends within upstream_timeout, as nothing
        comes from it). Not while another exchange still receives a response from it: it answers, then."""
        pool, manager = exchange.pool, exchange.manager
        limit = manager.klass.replace_after_timeouts
        if not self.count_timeout(pool, limit):
            return
        if any(e.pool is pool and e.head_sent for e in self.active):
            return
        instance = manager.instance
        if instance is None or exchange.handler.pools.upstream(instance) is not pool:
            return  # already replaced or stopped
        loop = exchange.client.loop
        drained: asyncio.Future[None] = loop.create_future()
        if manager.health.retire(instance, f"{limit} upstream timeouts in a row", drained):
            task = loop.create_task(self._drain(pool, drained))
            self._draining.add(task)
            task.add_done_callback(self._draining.discard)

    async def _drain(self, pool: UpstreamPool, drained: asyncio.Future[None]) -> None:
        """Until no exchange is on the pool any more; upstream_timeout and one sweep at most."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.upstream_timeout + 2 * self._sweep_every
        try:
            while loop.time() < deadline and any(e.pool is pool for e in self.active):
                await asyncio.sleep(min(0.1, self._sweep_every))
        finally:
            if not drained.done():
                drained.set_result(None)
