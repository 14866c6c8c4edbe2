"""What only the swarm backend does, on a real single-node swarm (the contract and lifecycle tests run on it too):
the service it creates, a task that dies staying dead until the proxy starts it again, the runtime's event for
it, an image no registry serves, a foreign service under our name, and instances on an attachable overlay network.
"""

from __future__ import annotations

import asyncio
import copy
import uuid
from typing import Any, AsyncIterator

import aiodocker
import pytest

from backends._names import service_name
from backends.base import LABEL_KEY, LABEL_MANAGED, LABEL_PROXY_ID, BackendError, ContainerSpec, InstanceState, MiB, \
    Resources
from backends.swarm import SwarmBackend
from proxy.config.schema import parse_config
from tests.conftest import base_config
from tests.support import engines

pytestmark = pytest.mark.swarm
CLASS = "Titanic"
READY = "/v2/health/ready"


@pytest.fixture
async def env() -> AsyncIterator[tuple[SwarmBackend, ContainerSpec, aiodocker.Docker]]:
    image = await engines.ensure_image("swarm")  # no swarm or registry: skip, or fail under CI=true
    backend = engines.make_backend("swarm", f"sw-{uuid.uuid4().hex[:8]}")
    assert isinstance(backend, SwarmBackend)
    docker = aiodocker.Docker(url=engines.socket_for("swarm"))
    yield backend, ContainerSpec(name=CLASS, image=image, resources=Resources(512 * MiB, 1.0)), docker
    await engines.remove_all(backend)
    await backend.close()
    await docker.close()


async def service_of(docker: aiodocker.Docker, name: str) -> dict[str, Any]:
    return dict(await docker.services.inspect(name))


async def container_of(docker: aiodocker.Docker, task_id: str) -> str:
    task = await docker._query_json(f"tasks/{task_id}")
    return str(task["Status"]["ContainerStatus"]["ContainerID"])


async def test_the_service_is_labelled_limited_pinned_and_never_restarted_by_swarm(env):
    backend, spec, docker = env
    instance = await backend.start("k-1", spec)
    service = await service_of(docker, service_name(backend.proxy_id, CLASS, "k-1"))
    labels = service["Spec"]["Labels"]
    assert labels[LABEL_MANAGED] == "true" and labels[LABEL_KEY] == "k-1" and labels[LABEL_PROXY_ID] == backend.proxy_id
    task = service["Spec"]["TaskTemplate"]
    assert task["ContainerSpec"]["Image"].startswith(spec.image + "@sha256:")  # pinned, as `docker service create`
    assert task["RestartPolicy"]["Condition"] == "none"
    assert task["Resources"]["Limits"] == {"NanoCPUs": 10**9, "MemoryBytes": 512 * MiB}
    assert service["Spec"]["EndpointSpec"]["Ports"][0]["PublishMode"] == "host"
    host = (await docker.containers.container(await container_of(docker, instance.id)).show())["HostConfig"]
    assert (host["NanoCpus"], host["Memory"]) == (10**9, 512 * MiB)  # what the task's container really got
    assert (instance.host, instance.port) != ("", 0)


async def test_a_task_killed_from_outside_stays_dead_is_reported_and_the_next_start_serves(env):
    backend, spec, docker = env
    instance = await backend.start("k-1", spec)
    seen: list[str] = []

    async def listen() -> None:
        async for task_id in backend.watch():
            seen.append(task_id)

    watcher = asyncio.create_task(listen())
    await asyncio.sleep(0.5)  # the event stream is subscribed
    await docker.containers.container(await container_of(docker, instance.id)).kill()
    for _ in range(100):
        if instance.id in seen and await backend.inspect(instance) is not InstanceState.RUNNING:
            break
        await asyncio.sleep(0.1)
    watcher.cancel()
    await asyncio.gather(watcher, return_exceptions=True)
    assert instance.id in seen, "the container's die event names the task"
    assert await backend.inspect(instance) is InstanceState.EXITED
    assert "killed (exit 137, SIGKILL)" in (await backend.exit_reason(instance) or "")  # no OOMKilled on a task
    await asyncio.sleep(1.0)
    assert await backend.list_instances() == [], "swarm started nothing by itself (restart policy none)"

    again = await backend.start("k-1", spec)  # the proxy decides: a new task of the same service
    assert again.id != instance.id
    assert [i.id for i in await backend.list_instances()] == [again.id]
    assert await backend.inspect(again) is InstanceState.RUNNING


async def test_an_image_no_registry_serves_is_refused_at_once_and_leaves_nothing(env):
    backend, spec, docker = env
    missing = ContainerSpec(name=CLASS, image=f"{engines.REGISTRY}/lazy-proxy/no-such-image:never")
    with pytest.raises(BackendError, match="cannot be resolved in a registry"):
        await backend.start("k-1", missing)
    with pytest.raises(aiodocker.DockerError):
        await service_of(docker, service_name(backend.proxy_id, CLASS, "k-1"))


async def test_a_foreign_service_under_our_name_is_left_alone(env):
    backend, spec, docker = env
    name = service_name(backend.proxy_id, CLASS, "k-1")
    await docker.services.create({"ContainerSpec": {"Image": spec.image}}, name=name, labels={"owner": "someone"},
                                 mode={"Replicated": {"Replicas": 0}})
    try:
        with pytest.raises(BackendError, match="name conflict"):
            await backend.start("k-1", spec)
        service = await service_of(docker, name)
        assert service["Spec"]["Labels"] == {"owner": "someone"}
        assert service["Spec"]["Mode"]["Replicated"]["Replicas"] == 0
    finally:
        await docker.services.delete(name)


async def test_network_mode_reaches_the_task_on_an_attachable_overlay(env):
    """No port published; the instance is its task's IP on the overlay, reached from a container on it."""
    backend, spec, docker = env
    network = f"lp-ovl-{uuid.uuid4().hex[:6]}"
    await docker.networks.create({"Name": network, "Driver": "overlay", "Attachable": True})
    on_net = SwarmBackend(socket=backend.socket, proxy_id=backend.proxy_id, network=network)
    try:
        instance = await on_net.start("k-net", spec)
        service = await service_of(docker, service_name(backend.proxy_id, CLASS, "k-net"))
        assert not (service.get("Endpoint") or {}).get("Ports"), "nothing published"
        assert instance.port == spec.port
        probe = ("import time, urllib.request\n"
                 "for _ in range(300):\n"
                 "    try:\n"
                 f"        status = urllib.request.urlopen('{instance.url}{READY}').status\n"
                 "        raise SystemExit(0 if status == 200 else 3)\n"
                 "    except OSError:\n"
                 "        time.sleep(0.1)\n"
                 "raise SystemExit(4)\n")
        client = await docker.containers.create({
            "Image": engines.DEFAULT_TAG, "Entrypoint": ["python3", "-c", probe],
            "Labels": {LABEL_PROXY_ID: backend.proxy_id}, "HostConfig": {"NetworkMode": network}})
        await client.start()
        assert (await client.wait())["StatusCode"] == 0, await client.log(stdout=True, stderr=True)
        assert [i.id for i in await on_net.list_instances()] == [instance.id]
        await on_net.stop(instance)
        assert await on_net.inspect(instance) is not InstanceState.RUNNING
    finally:
        await engines.remove_all(on_net)
        await on_net.close()
        await engines.remove_network(docker, network)


@pytest.fixture
def backend_kind() -> str:
    return "swarm"  # make_proxy's backend


async def test_a_restart_on_a_changed_config_replaces_the_service_of_the_old_spec(make_proxy):
    """Proxy #1 runs a key and crashes; the config changes (an env var) before proxy #2 starts. The task's
    instance carries its service's `proxy.spec` label, so proxy #2 does not adopt it: it scales the old spec's
    service to 0 at start-up, and the key's next request starts the configured spec (the service recreated)."""
    image = await engines.ensure_image("swarm")
    proxy_id = f"sw-{uuid.uuid4().hex[:8]}"
    before = base_config("swarm", image) | {"backend": {"proxy_id": proxy_id}}
    backend = engines.make_backend("swarm", proxy_id)
    spec = parse_config(before).containers["svc"].spec
    old = await backend.start("shared", spec)
    assert [i.spec for i in await backend.list_instances() if i.key == "shared"] == [backend.spec_hash(spec)]
    await backend.close()

    after = copy.deepcopy(before)
    after["containers"]["svc"]["env"]["RELEASE"] = "2"
    h = await make_proxy(config={"containers": after["containers"]},
                         backend=engines.make_backend("swarm", proxy_id))
    assert h.proxy.registry.peek("shared", "svc") is None  # not adopted
    assert await h.proxy.backend.inspect(old) is not InstanceState.RUNNING  # and stopped at start-up
    resp = await h.client.get("/s/api/health")
    assert resp.status == 200 and resp.headers["X-Proxy-Cold-Start"] == "1"
    m = h.manager("shared")
    assert m.instance.id != old.id and m.instance.spec != old.spec
    docker = aiodocker.Docker(url=engines.socket_for("swarm"))
    try:
        service = await service_of(docker, service_name(proxy_id, "svc", "shared"))
        assert "RELEASE=2" in service["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"]
    finally:
        await docker.close()
