"""Autoscaling decisions (proxy/scale/autoscale.py) on the virtual clock: the KPA-like count, then a real pool;
last, an autoscaled lb route through the real proxy (stub backend): the pool grows under concurrent load,
requests spread over ready members, desired and ready instances show in /metrics, and it shrinks after."""

from __future__ import annotations

import asyncio

import pytest

from proxy.scale.autoscale import Autoscaler, RouteScaler, ScalePolicy
from proxy.config.schema import Route
from proxy.lifecycle.events import State
from tests.conftest import base_config
from tests.unit.conftest import REAL_CLOCK

POLICY = ScalePolicy(target=8, min_instances=1, max_instances=10, stable_window=60.0)  # panic window 6 s, ticks 1 s


def feed(scaler: Autoscaler, start: float, seconds: int, in_flight: int, ready: int) -> list[int]:
    """One sample a second; the desired count after each."""
    return [scaler.observe(start + i, in_flight, ready) for i in range(1, seconds + 1)]


async def test_steady_load_wants_load_over_target():
    scaler = Autoscaler(POLICY)
    assert feed(scaler, 0, 120, 20, 3)[-1] == 3  # ceil(20 / 8)
    assert not scaler.panicking(120)


async def test_a_burst_panics_and_scales_within_the_panic_window_then_down_after_the_stable_window():
    scaler = Autoscaler(POLICY)
    assert feed(scaler, 0, 60, 1, 1)[-1] == 1
    burst = feed(scaler, 60, 10, 64, 1)
    assert burst[0] >= 2 and scaler.panicking(61)  # the first tick of the burst already asks for more
    assert burst[5] == 8  # within the panic window (6 s): 64 / 8
    calm = feed(scaler, 70, 120, 1, 8)
    assert calm[30] == 8  # panic mode never scales down
    assert calm[-1] == 1  # a stable window after the burst: back to the load's count
    assert not scaler.panicking(190)


async def test_bounds():
    scaler = Autoscaler(POLICY)
    assert feed(scaler, 0, 10, 0, 0)[-1] == 1  # min_instances with no load
    assert feed(scaler, 10, 70, 500, 10)[-1] == 10  # max_instances


def lb_route(**kw):
    return Route.model_validate({"path": "/lb/{tail:.*}", "container": "svc", "key": "lb", "mode": "lb",
                                 "target_concurrency": 2, "max_instances": 8, "scale_window": "12s", **kw})


async def test_pool_grows_before_saturation_picks_least_loaded_and_shrinks_idle(make_world, clock):
    world = make_world(svc={"max_instances": 4})
    scaler = RouteScaler(lb_route(min_instances=1), world.registry())
    assert len(scaler.members) == 4  # the class's max_instances bounds the pool
    scaler.start()
    await clock.advance(0.5)
    assert scaler.ready == 1 and scaler.members[0].state is State.RUNNING  # min_instances, started at once
    first = scaler.pick()
    for _ in range(6):  # 6 in flight at a target of 2: three instances
        scaler.pick().hold()
    assert first.in_flight == 6  # the only ready member takes them; the rest start in the background
    await clock.advance(3)
    assert scaler.desired == 3 and scaler.ready == 3
    assert scaler.pick() is not first  # the least loaded ready member
    for _ in range(6):
        first.release()
    await clock.advance(13)  # a stable window with nothing in flight
    assert scaler.desired == 1 and scaler.ready == 1 and scaler.members[0].state is State.RUNNING
    scaler.stop()


async def test_no_ready_member_a_request_starts_the_first(make_world, clock):
    world = make_world(svc={"max_instances": 4})
    scaler = RouteScaler(lb_route(), world.registry())
    assert scaler.desired == 0 and scaler.pick() is scaler.members[0]


async def test_paused_members_are_woken_before_cold_ones_are_started(make_world, clock):
    from tests.unit.test_manager_control import pausable

    world = pausable(make_world(svc={"max_instances": 4, "pause_after": "3s", "sleep_after": "600s"}))
    scaler = RouteScaler(lb_route(min_instances=2), world.registry())  # panic window 1.2 s
    scaler.start()
    await clock.advance(5)
    assert [m.state for m in scaler.members] == [State.PAUSED, State.PAUSED, State.STOPPED, State.STOPPED]
    busy = scaler.pick()  # a paused member (none is ready): the request wakes it
    assert busy in scaler.members[:2]
    for _ in range(8):
        busy.hold()
    await busy.ensure_running()
    await clock.advance(1.5)  # (each idle one pauses again 3 s after it was woken: no request goes to it here)
    assert all(m.state is State.RUNNING for m in scaler.members)  # the other paused one woken, two started
    assert world.backend.start.count == 4 and world.backend.resume.count >= 1
    scaler.stop()


# ------------------------------------ an autoscaled lb route through the proxy (stub, real sockets, real clock)


@pytest.fixture
def backend_kind() -> str:
    return "stub"


AUTOSCALED = {"path": "/as/{tail:.*}", "container": "svc", "key": "as", "mode": "lb", "name": "as",
              "target_concurrency": 2, "min_instances": 1, "max_instances": 4, "scale_window": "3s",
              "upstream_path": "/{tail}"}


@REAL_CLOCK
async def test_autoscaled_route_grows_under_load_and_shrinks_after(make_proxy):
    h = await make_proxy(config={"routes": [*base_config("stub", "model_service")["routes"], AUTOSCALED]})
    scaler = h.proxy.scalers[0]
    await h.wait_for(lambda: scaler.ready == 1)  # min_instances, without a request
    assert await h.metric("proxy_route_desired_instances", route="as") == 1

    async def sleepy() -> int:
        return (await h.client.get("/as/debug/sleep?seconds=0.2")).status

    load = True

    async def worker() -> int:
        done = 0
        while load:
            assert await sleepy() == 200
            done += 1
        return done

    workers = [asyncio.create_task(worker()) for _ in range(8)]  # 8 in flight at a target of 2: 4 instances
    await h.wait_for(lambda: scaler.ready == 4, timeout=5)
    assert await h.metric("proxy_route_ready_instances", route="as") == 4
    assert await h.metric("proxy_route_desired_instances", route="as") == 4
    serving: set[int] = set()  # the members seen serving, sampled over half a second: one instant can catch a
    for _ in range(50):  # member between two of its requests on a loaded machine
        serving.update(id(m) for m in scaler.members if m.in_flight > 0)
        await asyncio.sleep(0.01)
    assert len(serving) >= 3  # spread over the ready members
    load = False
    assert sum(await asyncio.gather(*workers)) > 0
    await h.wait_for(lambda: scaler.ready == 1, timeout=10)  # a stable window after the load: min_instances
    assert await h.metric("proxy_route_desired_instances", route="as") == 1


@pytest.mark.parametrize(("route", "field"), [
    ({"mode": "start", "target_concurrency": 2}, "routes[0].target_concurrency"),
    ({"mode": "lb", "target_concurrency": 2, "min_instances": 5, "max_instances": 4}, "routes[0].min_instances"),
    ({"mode": "lb", "target_concurrency": -1}, "routes[0].target_concurrency"),
])
@REAL_CLOCK
def test_config_errors_name_the_field(route, field):
    from proxy.config.schema import ConfigError, parse_config

    raw = {"containers": {"svc": {}}, "routes": [{"path": "/x/{tail:.*}", "container": "svc", "key": "x", **route}]}
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse_config(raw)
