"""Startup CPU boost on real dockerd and podman: a container starts above its instance type's CPU limit,
is at the type's once ready, is boosted again when its stopped container is restarted, and is never
boosted with `startup_cpu_boost: false`. The limit is read where it acts, the container's cgroup (podman
4.3's inspect does not show an update), and for docker also as `docker inspect` shows it (NanoCpus)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from bench.cold_start.boost import cgroup_cpus
from proxy.lifecycle.events import State, StopReason
from tests.conftest import ENGINE_PARAMS

TYPE_CPUS = 0.5
SVC = {"instance_type": {"memory": "512MiB", "cpus": TYPE_CPUS}}


@pytest.fixture(params=ENGINE_PARAMS)
def backend_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def limits(kind: str, raw: Any, cid: str) -> list[float]:
    """The limit as the cgroup says and, on docker, as inspect says."""
    seen = [cgroup_cpus(cid)]
    if kind == "docker":
        seen.append((await raw.containers.container(cid).show())["HostConfig"]["NanoCpus"] / 1e9)
    return seen


async def recording_proxy(make_proxy: Any, kind: str, raw: Any, **svc: Any) -> tuple[Any, list[list[float]]]:
    """A proxy whose backend records the container's limits as `start` returns (before readiness)."""
    from tests.support import engines

    backend: Any = engines.make_backend(kind, proxy_id=f"t{uuid.uuid4().hex[:10]}")
    at_start: list[list[float]] = []
    start = backend.start

    async def recording_start(key: str, spec: Any) -> Any:
        instance = await start(key, spec)
        at_start.append(await limits(kind, raw, instance.id))
        return instance

    backend.start = recording_start
    return await make_proxy(svc={**SVC, **svc}, backend=backend), at_start


async def once_ready(h: Any, kind: str, raw: Any, key: str) -> list[float]:
    """Serve one request for `key`; the limits once the background settle has had its moment."""
    assert (await h.client.get(f"/k/{key}/v2/health/ready")).status == 200
    cid = h.manager(key).instance.id
    for _ in range(100):
        now = await limits(kind, raw, cid)
        if now == [TYPE_CPUS] * len(now):
            break
        await asyncio.sleep(0.02)
    return now


async def test_boosted_while_starting_at_the_types_limit_once_ready_and_boosted_again_on_restart(
        make_proxy, backend_kind, raw):
    h, at_start = await recording_proxy(make_proxy, backend_kind, raw)  # default: unlimited
    host = await h.backend.host_cpus()
    assert host > TYPE_CPUS
    n = 2 if backend_kind == "docker" else 1
    assert await once_ready(h, backend_kind, raw, "b") == [TYPE_CPUS] * n
    assert at_start == [[host] * n]
    m = h.manager("b")
    first = m.instance.id
    await m.stop(StopReason.ADMIN)
    assert m.state is State.STOPPED
    assert await once_ready(h, backend_kind, raw, "b") == [TYPE_CPUS] * n
    assert m.instance.id == first  # a warm restart of the stopped container...
    assert at_start == [[host] * n, [host] * n]  # ...boosted again while it started
    assert m.last_error == ""


async def test_a_boost_of_some_vcpus(make_proxy, backend_kind, raw):
    h, at_start = await recording_proxy(make_proxy, backend_kind, raw, startup_cpu_boost=1.5)
    n = 2 if backend_kind == "docker" else 1
    assert await once_ready(h, backend_kind, raw, "c") == [TYPE_CPUS] * n
    assert at_start == [[min(1.5, await h.backend.host_cpus())] * n]


async def test_no_boost_means_the_types_limit_from_the_start(make_proxy, backend_kind, raw):
    h, at_start = await recording_proxy(make_proxy, backend_kind, raw, startup_cpu_boost=False)
    n = 2 if backend_kind == "docker" else 1
    assert await once_ready(h, backend_kind, raw, "d") == [TYPE_CPUS] * n
    m = h.manager("d")
    await m.stop(StopReason.ADMIN)
    assert await once_ready(h, backend_kind, raw, "d") == [TYPE_CPUS] * n
    assert at_start == [[TYPE_CPUS] * n, [TYPE_CPUS] * n]
