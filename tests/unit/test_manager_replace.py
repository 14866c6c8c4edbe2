"""Issue 15: an instance that stops answering is taken out of service after `replace_after_timeouts`
upstream timeouts in a row (any response byte in between starts the count again) and replaced."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from backends.base import Instance
from proxy.lifecycle.events import Happening, State, StopReason
from proxy.lifecycle.health import HealthWatch
from proxy.lifecycle.manager import Manager
from proxy.http.watch import ExchangeWatch
from proxy.wire.upstream import UpstreamPool

UPSTREAM_TIMEOUT = 5.0


class FakeHandlerPools:
    """`handler.pools.upstream(instance)`: one UpstreamPool per instance, as proxy/wire/pools.py keeps them."""

    def __init__(self) -> None:
        self.pools: dict[str, UpstreamPool] = {}

    def upstream(self, instance: Instance) -> UpstreamPool:
        return self.pools.setdefault(instance.id, UpstreamPool(instance.host, instance.port, 1.0))


@dataclass
class FakeHandler:
    pools: FakeHandlerPools = field(default_factory=FakeHandlerPools)


@dataclass
class FakeClient:
    loop: asyncio.AbstractEventLoop


@dataclass(eq=False)
class FakeExchange:
    """What `ExchangeWatch.after_timeout` reads of an `Exchange`."""

    pool: UpstreamPool
    manager: Manager
    handler: FakeHandler
    client: FakeClient
    head_sent: bool = False


class Harness:
    def __init__(self, manager: Manager) -> None:
        self.manager = manager
        self.exchanges = ExchangeWatch(1024, UPSTREAM_TIMEOUT)
        self.handler = FakeHandler()
        self.retired: list[tuple[Instance, str]] = []
        real = manager.health.retire

        def spy(instance: Instance, reason: str, drained: Any = None) -> bool:
            self.retired.append((instance, reason))
            return real(instance, reason, drained)

        self.spy = spy

    @property
    def pool(self) -> UpstreamPool:
        assert self.manager.instance is not None
        return self.handler.pools.upstream(self.manager.instance)

    def exchange(self) -> FakeExchange:
        return FakeExchange(self.pool, self.manager, self.handler, FakeClient(asyncio.get_running_loop()))

    def timeout(self, exchange: FakeExchange | None = None) -> None:
        """One exchange answered 504 after upstream_timeout (what `Exchange.timed_out` reports)."""
        self.exchanges.after_timeout(exchange or self.exchange())  # type: ignore[arg-type]

    def answered(self) -> None:
        """A response byte came from the instance (what `Exchange.on_upstream_data` does)."""
        self.exchanges.timeouts.pop(self.pool, None)


def spy_on(manager: Manager, harness: Harness, monkeypatch) -> None:
    monkeypatch.setattr(HealthWatch, "retire", lambda self, *a: harness.spy(*a) if self.manager is manager else None)


async def test_three_timeouts_in_a_row_retire_the_instance_once(world, clock, monkeypatch):
    manager = world.manager()
    await manager.ensure_running()
    first = manager.instance
    h = Harness(manager)
    spy_on(manager, h, monkeypatch)
    assert manager.klass.replace_after_timeouts == 3  # the default
    h.timeout()
    h.timeout()
    assert h.retired == [] and manager.state is State.RUNNING
    h.timeout()
    assert [i for i, _ in h.retired] == [first]
    assert manager.state is State.STOPPING  # at once: no new request goes to it
    assert world.backend.stop.count == 0  # nothing was left on it, but the drain finishes in the background
    await clock.advance(0.5)
    assert world.backend.stop.args() == [(first,)]
    assert manager.state is State.STOPPED and manager.instance is None
    assert world.events.happenings("k")[-1] == (Happening.STOPPED, StopReason.UNHEALTHY)
    assert "3 upstream timeouts in a row" in manager.last_error
    # The next request starts a fresh instance, as after an idle stop.
    await manager.ensure_running()
    assert manager.instance is not None and manager.instance is not first and manager.start_count == 2
    assert len(h.retired) == 1


async def test_a_response_byte_in_between_starts_the_count_again(world, clock, monkeypatch):
    manager = world.manager()
    await manager.ensure_running()
    h = Harness(manager)
    spy_on(manager, h, monkeypatch)
    for _ in range(3):
        h.timeout()
        h.timeout()
        h.answered()
    assert h.retired == [] and manager.state is State.RUNNING
    h.timeout()
    h.timeout()
    h.timeout()
    assert len(h.retired) == 1


async def test_zero_never_retires(make_world, clock, monkeypatch):
    world = make_world(svc={"replace_after_timeouts": 0})
    manager = world.manager()
    await manager.ensure_running()
    h = Harness(manager)
    spy_on(manager, h, monkeypatch)
    for _ in range(50):
        h.timeout()
    assert h.retired == [] and manager.state is State.RUNNING and not h.exchanges.timeouts


async def test_not_while_another_exchange_still_receives_a_response(world, clock, monkeypatch):
    manager = world.manager()
    await manager.ensure_running()
    h = Harness(manager)
    spy_on(manager, h, monkeypatch)
    streaming = h.exchange()
    streaming.head_sent = True
    h.exchanges.active.add(streaming)  # type: ignore[arg-type]
    for _ in range(3):
        h.timeout()
    assert h.retired == [] and manager.state is State.RUNNING


async def test_the_stop_waits_for_the_exchanges_still_on_the_instance(world, clock):
    manager = world.manager()
    await manager.ensure_running()
    first = manager.instance
    h = Harness(manager)
    hung = h.exchange()  # sent before the instance was retired, no answer yet
    h.exchanges.active.add(hung)  # type: ignore[arg-type]
    for _ in range(3):
        h.timeout()
    assert manager.state is State.STOPPING
    await clock.advance(2.0)
    assert world.backend.stop.count == 0  # it is still on the instance
    h.exchanges.active.discard(hung)  # type: ignore[arg-type]  (it timed out too: answered 504)
    await clock.advance(0.2)
    assert world.backend.stop.args() == [(first,)] and manager.state is State.STOPPED


async def test_the_drain_has_a_bound(world, clock):
    manager = world.manager()
    await manager.ensure_running()
    h = Harness(manager)
    h.exchanges.active.add(h.exchange())  # type: ignore[arg-type]  (never ends)
    for _ in range(3):
        h.timeout()
    await clock.advance(UPSTREAM_TIMEOUT + 2.5)
    assert manager.state is State.STOPPED and world.backend.stop.count == 1


async def test_retire_only_acts_on_the_current_running_instance(world, clock):
    manager = world.manager()
    await manager.ensure_running()
    other = world.backend.new_instance("k")
    assert manager.health.retire(other, "test") is False and manager.state is State.RUNNING
    instance = manager.instance
    assert instance is not None
    assert manager.health.retire(instance, "test") is True  # without a drain: stops at once
    assert manager.health.retire(instance, "test") is False  # stopping already
    await clock.settle()
    assert manager.state is State.STOPPED
    assert world.events.happenings("k")[-1] == (Happening.STOPPED, StopReason.UNHEALTHY)
