"""Adaptive pre-warm (proxy/scale/adaptive.py) on the virtual clock: what is learned, what is due, and a real manager
started ahead of a daily habit."""

from __future__ import annotations

import asyncio

from proxy.scale.adaptive import DAY, FIRST, SLOT, TICK, AdaptivePrewarm, Learner, Planner
from proxy.lifecycle.events import State, Transition

TEN = 10 * 3600.0  # 10:00


async def test_learner_first_day_then_decay_and_neighbours():
    learner = Learner(alpha=0.3)
    assert learner.likely("k", TEN) == 0.0
    learner.observe("k", TEN + 60)  # day 0, 10:01
    assert learner.likely("k", DAY + TEN) == FIRST  # the same slot tomorrow
    assert learner.likely("k", DAY + TEN + SLOT) == FIRST / 2  # the next slot: half
    assert learner.likely("k", DAY + TEN + 2 * SLOT) == 0.0
    learner.observe("k", DAY + TEN + 30)  # day 1: again
    assert learner.likely("k", 2 * DAY + TEN) == FIRST * 0.7 + 0.3
    # days 2 and 3 pass without it: by day 4 two misses
    assert abs(learner.likely("k", 4 * DAY + TEN) - (FIRST * 0.7 + 0.3) * 0.7 ** 2) < 1e-12


async def test_planner_lead_threshold_and_budget_with_refunds():
    planner = Planner(Learner(), threshold=0.3, budget=600)
    for key in ("a", "b"):
        planner.observe(key, TEN + 10)
        planner.observe(key, TEN + 2 * SLOT + 10)
    day1 = DAY + TEN
    assert planner.due(day1 - 3 * TICK, lead=5, cost=300) == []  # too early: a later tick is still in time
    assert planner.due(day1 - TICK, lead=5, cost=300) == ["a", "b"]
    assert planner.due(day1 - TICK + 1, lead=5, cost=300) == []  # planned once per slot
    planner.observe("a", day1 + 20)  # "a" used its pre-warm: refunded; "b" did not
    planner.learner.observe("a", day1 + SLOT + 20)
    planner.learner.observe("b", day1 + SLOT + 20)
    assert planner.due(day1 + SLOT - TICK, lead=5, cost=300) == ["a", "b"]  # b: 600 of 600 spent
    assert planner.due(day1 + 2 * SLOT - TICK, lead=5, cost=300) == ["a"]  # b's budget is spent: 2 unused


async def test_a_daily_habit_is_prewarmed_before_it_comes(make_world, clock):
    world = make_world(svc={"prewarm": "adaptive", "sleep_after": "60s"})
    registry = world.registry()
    loop = asyncio.get_running_loop()
    wall0 = 9.5 * 3600 - loop.time()  # the test starts at 09:30 on day 0
    adaptive = AdaptivePrewarm(world.config, registry, lambda: loop.time() + wall0)
    adaptive.start()
    manager = registry.get("k", "svc")
    for day in range(2):  # a request at 10:01 on days 0 and 1
        await clock.advance_to(day * DAY + TEN + 60 - wall0)
        await manager.ensure_running()
        manager.hold()
        manager.release()
        await clock.advance(120)
        assert manager.state is State.STOPPED  # sleep_after 60 s
    await clock.advance_to(2 * DAY + TEN - wall0)  # day 2, 10:00: started ahead of the habit
    assert manager.state is State.RUNNING
    starting = [seen for seen in world.events.seen if isinstance(seen.event, Transition)
                and seen.event.key == "k" and seen.event.new is State.STARTING]
    assert starting[-1].event.reason == "prewarm"
    assert 2 * DAY + TEN - TICK - 1 <= starting[-1].at + wall0 <= 2 * DAY + TEN
    adaptive.stop()


async def test_config_errors_name_the_field():
    import pytest

    from tests.unit.conftest import make_config
    from proxy.config.schema import ConfigError

    with pytest.raises(ConfigError, match=r"containers\.svc\.prewarm"):
        make_config({"svc": {"prewarm": "sometimes"}})
    with pytest.raises(ConfigError, match=r"containers\.svc\.prewarm_budget"):
        make_config({"svc": {"prewarm": "adaptive", "prewarm_budget": "-1s"}})
    assert make_config({"svc": {"prewarm": "adaptive", "prewarm_budget": "30m"}}).containers["svc"].prewarm_budget \
        == 1800
