"""An autoscaled lb route through the real proxy (stub backend): the pool grows under concurrent load,
requests spread over ready members, desired and ready instances show in /metrics, and it shrinks after."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import base_config


@pytest.fixture
def backend_kind() -> str:
    return "stub"


AUTOSCALED = {"path": "/as/{tail:.*}", "container": "svc", "key": "as", "mode": "lb", "name": "as",
              "target_concurrency": 2, "min_instances": 1, "max_instances": 4, "scale_window": "3s",
              "upstream_path": "/{tail}"}


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
    await asyncio.sleep(0.5)
    assert sum(m.in_flight > 0 for m in scaler.members) >= 3  # spread over the ready members
    load = False
    assert sum(await asyncio.gather(*workers)) > 0
    await h.wait_for(lambda: scaler.ready == 1, timeout=10)  # a stable window after the load: min_instances
    assert await h.metric("proxy_route_desired_instances", route="as") == 1


@pytest.mark.parametrize(("route", "field"), [
    ({"mode": "start", "target_concurrency": 2}, "routes[0].target_concurrency"),
    ({"mode": "lb", "target_concurrency": 2, "min_instances": 5, "max_instances": 4}, "routes[0].min_instances"),
    ({"mode": "lb", "target_concurrency": -1}, "routes[0].target_concurrency"),
])
def test_config_errors_name_the_field(route, field):
    from proxy.config.schema import ConfigError, parse_config

    raw = {"containers": {"svc": {}}, "routes": [{"path": "/x/{tail:.*}", "container": "svc", "key": "x", **route}]}
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse_config(raw)
