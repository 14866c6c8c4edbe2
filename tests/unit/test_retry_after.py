"""Retry-After by what the proxy knows (proxy/http/retry_after.py): each case, and that they differ as they should;
last, the same through the real proxy (stub backend): each refusal says what the proxy knows."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from backends.base import BackendError, BackendUnavailable
from proxy.errors import CapacityExceeded, NotWarm, StartFailed
from proxy.lifecycle.events import StopReason
from proxy.lifecycle.manager import Manager
from proxy.scale.prewarm import schedule_prewarm
from proxy.lifecycle.registry import Registry
from proxy.http.retry_after import NO_HISTORY, RetryAdvisor
from proxy.scale.schedule import Scheduler
from tests.unit.conftest import Clock, World
from tests.conftest import MakeProxy
from tests.unit.conftest import REAL_CLOCK

WALL = 5000.0  # the scheduler's (wall) clock, fixed


def setup(world: World) -> tuple[Registry, RetryAdvisor, Scheduler]:
    registry = world.registry()
    scheduler = Scheduler(clock=lambda: WALL)
    return registry, RetryAdvisor(registry, world.bus, schedule_prewarm(scheduler, world.config, registry),
                                  scheduler.clock), scheduler


async def start_taking(world: World, clock: Clock, manager: Manager, seconds: float) -> None:
    """A start of `seconds` (the readiness wait is held that long)."""
    world.prober.wait_ready.hold()
    task = asyncio.create_task(manager.ensure_running())
    await clock.settle()
    await clock.advance(seconds)
    world.prober.wait_ready.pending[0].resolve()
    await task
    world.prober.wait_ready.reset_answer()


async def refused(coro: Any) -> Any:
    with pytest.raises((StartFailed, CapacityExceeded, NotWarm)) as info:
        await coro
    return info.value


async def test_a_failed_start_says_about_one_start(make_world: Any, clock: Clock) -> None:
    world = make_world(svc={"crash_loop": {"failures": 0}, "max_instances": 20})
    registry, advisor, _ = setup(world)
    m = registry.get("k", "svc")
    world.backend.start.raises(BackendError("exit 1"))
    first = await refused(m.ensure_running())
    advisor.advise(first, m)
    assert first.retry_after == NO_HISTORY  # nothing known yet

    world.backend.start.reset_answer()
    for seconds in (2.0, 3.0, 3.0, 2.5, 9.0, 2.0, 3.0, 2.0, 2.5, 3.0):  # p90 of these ten: 3.0
        other = registry.get(f"o{seconds}-{clock.now}", "svc")
        await start_taking(world, clock, other, seconds)
    world.backend.start.raises(BackendError("exit 1"))
    later = await refused(m.ensure_running())
    advisor.advise(later, m)
    assert later.retry_after == 3.0

    world.backend.start.raises(BackendUnavailable("daemon down", retry_after=7))
    down = await refused(m.ensure_running())
    advisor.advise(down, m)
    assert down.retry_after == 7  # the backend's own hint, longer than a start


async def test_a_failure_that_opens_the_breaker_says_its_backoff(make_world: Any, clock: Clock) -> None:
    world = make_world(svc={"crash_loop": {"failures": 2, "backoff": "20s"}})
    registry, advisor, _ = setup(world)
    m = registry.get("k", "svc")
    world.backend.start.raises(BackendError("exit 1"))
    await refused(m.ensure_running())
    opening = await refused(m.ensure_running())
    advisor.advise(opening, m)
    assert opening.retry_after == 20.0


async def test_capacity_says_until_the_soonest_stop_plus_a_start(make_world: Any, clock: Clock) -> None:
    world = make_world(svc={"max_instances": 1, "sleep_after": "60s"})
    registry, advisor, _ = setup(world)
    a, b = registry.get("a", "svc"), registry.get("b", "svc")
    await start_taking(world, clock, a, 4.0)
    await clock.advance(10.0)  # a idle for 10 s: it stops in 50 s
    idle = await refused(b.ensure_running())
    advisor.advise(idle, b)
    assert idle.retry_after == pytest.approx(50.0 + 4.0)

    await clock.advance(1.0)  # past the cache
    a.hold()  # a busy: its 60 s count from when it ends, at the earliest now
    busy = await refused(b.ensure_running())
    advisor.advise(busy, b)
    assert busy.retry_after == pytest.approx(60.0 + 4.0)
    a.release()

    world.backend.stop.hold()
    stopping = asyncio.create_task(a.stop(StopReason.ADMIN))
    await clock.advance(1.0)
    going = await refused(b.ensure_running())
    advisor.advise(going, b)
    assert going.retry_after == pytest.approx(4.0)  # a's slot frees with its stop
    world.backend.stop.pending[0].resolve()
    await stopping


async def test_capacity_of_a_class_that_never_sleeps_says_nothing(make_world: Any, clock: Clock) -> None:
    world = make_world(svc={"max_instances": 1, "sleep_after": "0s"})
    registry, advisor, _ = setup(world)
    await registry.get("a", "svc").ensure_running()
    b = registry.get("b", "svc")
    never = await refused(b.ensure_running())
    advisor.advise(never, b)
    assert never.retry_after is None


async def test_not_warm_says_the_rest_of_a_start_or_until_a_keepalive_or_nothing(make_world: Any,
                                                                                   clock: Clock) -> None:
    world = make_world(svc={"keepalive": {"schedule": "30s", "keys": ["kept"]}})
    registry, advisor, _ = setup(world)
    await start_taking(world, clock, registry.get("x", "svc"), 5.0)

    kept = registry.get("kept", "svc")
    cold = NotWarm("kept is stopped")
    advisor.advise(cold, kept)
    assert cold.retry_after == pytest.approx(30.0 + 5.0)  # the keepalive's next tick, then its start

    starting = registry.get("s", "svc")
    world.prober.wait_ready.hold()
    task = asyncio.create_task(starting.ensure_running())
    await clock.advance(2.0)
    midway = NotWarm("s is starting")
    advisor.advise(midway, starting)
    assert midway.retry_after == pytest.approx(3.0)
    world.prober.wait_ready.pending[0].resolve()
    await task

    nobody = NotWarm("n is stopped")
    advisor.advise(nobody, registry.get("n", "svc"))
    assert nobody.retry_after is None  # nothing will warm it


# ---------------------------------------- through the proxy (stub backend, real sockets, real clock)


@pytest.fixture
def backend_kind() -> str:
    return "stub"


async def retry_after(h: object, path: str, error: str) -> str | None:
    resp = await h.client.get(path)  # type: ignore[attr-defined]
    assert resp.status == 503 and (await resp.json())["error"] == error, await resp.text()
    return resp.headers.get("Retry-After")


@REAL_CLOCK
async def test_each_refusal_says_what_is_known(make_proxy: MakeProxy) -> None:
    h = await make_proxy(svc={"max_instances": 1, "sleep_after": "30s",
                              "keepalive": {"schedule": "1h", "keys": ["warmed"]}},
                         config={"routes": [
                             {"path": "/k/{id}/{tail:.*}", "container": "svc", "key": "{id}",
                              "upstream_path": "/{tail}"},
                             {"path": "/warm/{id}/{tail:.*}", "container": "svc", "key": "{id}", "mode": "warm",
                              "upstream_path": "/{tail}"},
                         ]})
    assert (await h.client.get("/k/a/v2/health/ready")).status == 200
    # Capacity: a stops after 30 s idle, then a start (milliseconds on the stub).
    assert await retry_after(h, "/k/b/v2/health/ready", "capacity exceeded") in ("30", "29")
    # A warm-only route: the keepalive warms `warmed` within the hour; nothing warms `cold`.
    assert 3590 <= int(await retry_after(h, "/warm/warmed/v2/health/ready", "not warm") or 0) <= 3600
    assert await retry_after(h, "/warm/cold/v2/health/ready", "not warm") is None


@REAL_CLOCK
async def test_a_failed_start_says_one_start_and_an_open_breaker_its_backoff(make_proxy: MakeProxy) -> None:
    h = await make_proxy(svc={"image": "stub:no_such_module:create_app",
                              "crash_loop": {"failures": 2, "backoff": "40s"}})
    assert await retry_after(h, "/s/v2/health/ready", "start failed") == "1"
    assert await retry_after(h, "/s/v2/health/ready", "start failed") == "40"  # this failure opened the breaker
    assert await retry_after(h, "/s/v2/health/ready", "crash loop") in ("40", "39")
