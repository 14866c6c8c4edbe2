"""Phase-split cold-start metrics on every backend: the phases of a start add up to its duration."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.observe.metrics import START_PHASES
from tests.conftest import LIFECYCLE_PARAMS, MakeProxy

# What each backend's start is made of (a first start: nothing to restart or unpause yet).
EXPECTED = {"stub": ["start"], "process": ["start"], "docker": ["create", "start", "port"],
            "podman": ["create", "start", "port"], "swarm": ["create", "start", "port"]}


@pytest.fixture(params=LIFECYCLE_PARAMS)
def backend_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_phases_add_up_to_the_start_and_reach_the_hook(make_proxy: MakeProxy, backend_kind: str) -> None:
    h = await make_proxy()
    started: list[dict[str, Any]] = []
    h.proxy.hooks.on("start", started.append)
    resp = await h.client.get("/s/v2/health/ready")
    assert resp.status == 200 and resp.headers["X-Proxy-Cold-Start"] == "1"

    metrics = await h.metrics()

    def phase(name: str, suffix: str) -> float:
        return metrics[(f"proxy_container_start_phase_seconds_{suffix}",
                        (("container_class", "svc"), ("phase", name)))]

    seen = [p for p in START_PHASES if phase(p, "count")]
    assert seen == EXPECTED[backend_kind] + ["ready", "first_byte"], seen
    total = sum(phase(p, "sum") for p in seen if p != "first_byte")
    duration = metrics[("proxy_container_start_duration_seconds_sum", (("container_class", "svc"),))]
    assert abs(total - duration) < 0.005, (total, duration)  # within a few ms
    assert 0 < phase("first_byte", "sum") < 1.0

    assert len(started) == 1
    assert list(started[0]["phases"]) == EXPECTED[backend_kind] + ["ready"]
    assert sum(started[0]["phases"].values()) == pytest.approx(started[0]["duration_seconds"], abs=1e-4)
