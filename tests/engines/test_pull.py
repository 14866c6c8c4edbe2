"""Image pulls on the real daemons and the local registry (.ci/daemons.sh: 127.0.0.1:5000), no mocks.

Each test pushes the model image under a fresh name `127.0.0.1:5000/lazy-proxy-test/pull-<uuid>:t` (through
dockerd's API, which talks plain HTTP to a loopback registry), removes that name from the daemon under test, and
starts keys: the image is pulled (once, however many keys start at the same time: counted from the daemon's own
`pull` events) and served. `pull: never` fails clearly, a pull the registry refuses names the image and why.
Every name pushed or pulled is removed from the daemons and its manifest from the registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from typing import Any, AsyncIterator

import aiodocker
import aiohttp
import pytest
from structlog.testing import capture_logs

from backends._pull import PULL_RETRY_AFTER
from backends.base import BackendError, ContainerSpec, MiB, Resources
from backends.swarm import SwarmBackend
from tests.support import engines
from tests.conftest import ENGINE_PARAMS, MakeProxy

CLASS = "Pulled"
FAST = Resources(memory_bytes=512 * MiB, cpus=1.0)
REPO = f"{engines.REGISTRY}/lazy-proxy-test"
STARTS = 4  # keys started at once on one missing image


@pytest.fixture(params=ENGINE_PARAMS)
def backend_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def _delete_manifest(ref: str) -> None:
    """Remove `ref`'s manifest from the registry (its blobs stay: other names share them)."""
    name, _, tag = ref.removeprefix(f"{engines.REGISTRY}/").rpartition(":")
    accept = {"Accept": "application/vnd.docker.distribution.manifest.v2+json"}
    async with aiohttp.ClientSession(f"http://{engines.REGISTRY}") as http:
        async with http.head(f"/v2/{name}/manifests/{tag}", headers=accept) as resp:
            digest = resp.headers.get("Docker-Content-Digest")
        if digest:
            async with http.delete(f"/v2/{name}/manifests/{digest}"):
                pass


async def _forget(docker: aiodocker.Docker, ref: str) -> None:
    try:
        await docker.images.delete(ref)  # the name only: the model image keeps its own
    except aiodocker.DockerError as e:
        if e.status != 404:
            raise


@pytest.fixture
async def pushed(backend_kind: str) -> AsyncIterator[str]:
    """A fresh name for the model image in the local registry, absent from the daemon under test."""
    await engines.ensure_image(backend_kind)
    await engines.ensure_image("docker")
    ref = f"{REPO}/pull-{uuid.uuid4().hex[:12]}:t"
    docker = aiodocker.Docker(url=engines.socket_for("docker"))
    own = aiodocker.Docker(url=engines.socket_for(backend_kind))
    try:
        repo, _, tag = ref.rpartition(":")
        await docker.images.tag(engines.DEFAULT_TAG, repo, tag=tag)
        await docker.images.push(repo, tag=tag)
        await _forget(docker, ref)
        await _forget(own, ref)
        yield ref
    finally:  # each step on its own: one failing must not leave the others' leftovers
        for step in (_forget(docker, ref), _forget(own, ref), _delete_manifest(ref), docker.close(), own.close()):
            with contextlib.suppress(Exception):
                await step


@pytest.fixture
async def backend(backend_kind: str) -> AsyncIterator[Any]:
    b = engines.make_backend(backend_kind, f"pull-{uuid.uuid4().hex[:8]}")
    yield b
    await engines.remove_all(b)
    await b.close()


async def pull_events(kind: str, ref: str, since: float) -> int:
    """How many times the daemon says it pulled `ref` since `since` (its own image `pull` events). podman reads
    past events reliably only through libpod's `stream=false` (its compat `until` races its own log reader)."""
    docker = aiodocker.Docker(url=engines.socket_for(kind))
    filters = json.dumps({"type": ["image"], "event": ["pull"]})
    try:
        if kind == "podman":
            path, versioned, params = "v4.0.0/libpod/events", False, {"stream": "false"}
        else:
            path, versioned, params = "events", True, {"until": str(int(time.time()) + 1)}
        params.update(since=str(int(since) - 1), filters=filters)
        async with docker._query(path, params=params, versioned_api=versioned) as resp:
            lines = (await resp.text()).splitlines()
    finally:
        await docker.close()
    repo = ref.rpartition(":")[0]  # unique to the test; dockerd names the repository, podman the reference
    return sum(1 for line in lines if repo in line)


async def test_concurrent_starts_of_a_missing_image_share_one_pull(pushed, backend, backend_kind):
    spec = ContainerSpec(name=CLASS, image=pushed, resources=FAST)
    since = time.time()
    instances = await asyncio.gather(*(backend.start(f"k-{i}", spec) for i in range(STARTS)))
    assert await pull_events(backend_kind, pushed, since) == 1
    assert backend.puller.pulls == 1
    # a start that found the image missing waited for that pull and says so (on a busy daemon a late one may
    # create after the pull, without one)
    phases = [[p for p, _ in instance.phases] for instance in instances]
    assert ["pull", "create", "start", "port"] in phases, phases
    assert all(p in (["pull", "create", "start", "port"], ["create", "start", "port"]) for p in phases), phases
    again = await backend.start("k-late", spec)  # present now: no pull
    assert "pull" not in dict(again.phases) and backend.puller.pulls == 1


async def test_pull_always_pulls_before_a_create_and_not_before_a_warm_restart(pushed, backend, backend_kind):
    spec = ContainerSpec(name=CLASS, image=pushed, resources=FAST, pull="always")
    since = time.time()
    first = await backend.start("k-1", spec)
    assert "pull" in dict(first.phases) and backend.puller.pulls == 1
    second = await backend.start("k-2", spec)  # present, yet pulled again: the registry may have a newer one
    assert "pull" in dict(second.phases) and backend.puller.pulls == 2
    assert await pull_events(backend_kind, pushed, since) == 2
    await backend.stop(first)
    restarted = await backend.start("k-1", spec)  # the stopped container of the same spec: its image as it is
    assert [p for p, _ in restarted.phases] == ["restart", "port"] and backend.puller.pulls == 2


async def test_pull_never_with_a_missing_image_fails_clearly_and_warns_at_startup(pushed, backend, backend_kind):
    spec = ContainerSpec(name=CLASS, image=pushed, resources=FAST, pull="never")
    since = time.time()
    with pytest.raises(BackendError) as failed:
        await backend.start("k-1", spec)
    assert failed.value.reason == f"image {pushed} is not present and pull is never"
    assert backend.puller.pulls == 0 and await pull_events(backend_kind, pushed, since) == 0
    present = ContainerSpec(name="Present", image=engines.DEFAULT_TAG, pull="never")
    assert await backend.missing_images([spec, present]) == [(CLASS, pushed)]


async def test_a_pull_the_registry_refuses_names_the_image_and_the_reason(backend):
    absent = f"{REPO}/absent-{uuid.uuid4().hex[:12]}:t"
    with pytest.raises(BackendError) as failed:
        await backend.start("k-1", ContainerSpec(name=CLASS, image=absent, resources=FAST))
    reason = failed.value.reason
    assert reason.startswith(f"pull of {absent} failed: ") and "manifest unknown" in reason, reason
    assert failed.value.retry_after == PULL_RETRY_AFTER
    assert backend.puller.pulls == 1


async def test_a_short_name_is_pulled_from_docker_hub_on_podman_as_on_docker(backend, backend_kind):
    """`image: nginx:alpine` (the README's first config) means docker.io/library/nginx:alpine on both runtimes:
    podman's own pull refused short names (`short-name ... did not resolve to an alias`) unless
    registries.conf names a search registry. A name Docker Hub lacks: the pull reaches it (or fails offline)."""
    absent = f"lazy-proxy-test-absent-{uuid.uuid4().hex[:12]}:t"
    with pytest.raises(BackendError) as failed:
        await backend.start("k-1", ContainerSpec(name=CLASS, image=absent, resources=FAST))
    reason = failed.value.reason
    assert reason.startswith(f"pull of {absent} failed: ") and "short-name" not in reason, reason
    assert backend.puller.pulls == 1


async def test_a_request_through_the_proxy_pulls_and_is_served(pushed, make_proxy: MakeProxy):
    with capture_logs() as logs:
        h = await make_proxy(svc={"image": pushed},
                             config={"containers": {"off": {"image": f"{pushed}-nope", "pull": "never"}}})
    assert [(e["container_class"], e["image"]) for e in logs if e["event"] == "image_missing"] == \
        [("off", f"{pushed}-nope")]
    started: list[dict[str, Any]] = []
    h.proxy.hooks.on("start", started.append)
    resp = await h.client.get("/s/v2/health/ready")
    assert resp.status == 200, await resp.text()
    assert list(started[0]["phases"]) == ["pull", "create", "start", "port", "ready"]
    count = await h.metric("proxy_container_start_phase_seconds_count", container_class="svc", phase="pull")
    assert count == 1


@pytest.mark.swarm
async def test_swarm_pull_never_uses_the_name_as_is_without_a_registry_lookup():
    image = await engines.ensure_image("swarm")  # pushed, and present on the (single) node
    backend = engines.make_backend("swarm", f"pull-{uuid.uuid4().hex[:8]}")
    assert isinstance(backend, SwarmBackend)
    docker = aiodocker.Docker(url=engines.socket_for("swarm"))
    try:
        await backend.start("k-1", ContainerSpec(name=CLASS, image=image, resources=FAST, pull="never"))
        services = await docker.services.list(filters={"label": f"proxy.instance={backend.proxy_id}"})
        assert [s["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] for s in services] == [image]  # not pinned
    finally:
        await engines.remove_all(backend)
        await backend.close()
        await docker.close()
