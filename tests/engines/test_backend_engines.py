"""DockerBackend / PodmanBackend against the REAL daemons (no mocks): what is specific to these engines.

What every backend owes (start -> ready, inspect, stop, list, restart after stop, cleanup, close) is in
tests/engines/test_backend_contract.py; here: labels, limits, names, adoption of a running container, warm restart vs
spec change, missing images, foreign containers, a killed container, and the daemon going away and coming back.

Bring them up with `bash .ci/daemons.sh up`. A runtime whose socket does not answer is skipped,
or fails when CI=true. The model-service image is built (cached) through backends.image.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid

import aiodocker
import pytest

from backends.base import (
    INSTANCE_TYPES,
    LABEL_CONTAINER,
    LABEL_KEY,
    LABEL_MANAGED,
    LABEL_PROXY_ID,
    LABEL_SPEC,
    BackendError,
    BackendUnavailable,
    ContainerSpec,
    Instance,
    InstanceState,
    Resources,
    MiB,
)
from backends.docker import DockerBackend
from backends.image.build import DEFAULT_TAG, build_image
from backends.podman import PodmanBackend
from tests.support import engines

RUNTIMES = {
    "docker": (DockerBackend, lambda: engines.socket_for("docker")),
    "podman": (PodmanBackend, lambda: engines.socket_for("podman")),
}
FAST = Resources(memory_bytes=512 * MiB, cpus=1.0)  # enough CPU to import onnxruntime quickly


@pytest.fixture(scope="session", params=[pytest.param("docker", marks=pytest.mark.docker),
                                         pytest.param("podman", marks=pytest.mark.podman)])
def runtime(request) -> str:
    """The runtime name, once its daemon answers and the image is built (cached; shared with the other
    daemon tests through tests/support/engines.py). A daemon that does not answer: skip, or fail under CI=true."""
    asyncio.run(engines.ensure_image(request.param))
    return request.param


@pytest.fixture
def proxy_id() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def raw(runtime):
    """A plain aiodocker client to the same daemon (to look at / tamper with containers)."""
    docker = aiodocker.Docker(url=RUNTIMES[runtime][1]())
    yield docker
    await docker.close()


@pytest.fixture
async def make_backend(runtime, proxy_id, raw):
    """Factory for backends of this runtime; every container they (or the test) created is removed."""
    made = []
    extra_names: list[str] = []

    def make(**kw):
        kw.setdefault("proxy_id", proxy_id)
        b = RUNTIMES[runtime][0](**kw)
        made.append(b)
        return b

    make.extra_names = extra_names  # type: ignore[attr-defined]
    yield make
    for b in made:
        await b.close()
    filters = json.dumps({"label": [f"{LABEL_PROXY_ID}={proxy_id}"]})
    for c in await raw.containers.list(all=True, filters=filters):
        await c.delete(force=True)
    for name in extra_names:
        try:
            await raw.containers.container(name).delete(force=True)
        except aiodocker.DockerError:
            pass


def spec(image: str = DEFAULT_TAG, resources: Resources = FAST, **kw) -> ContainerSpec:
    return ContainerSpec(name="Titanic", image=image, resources=resources, **kw)


def assert_limits(info: dict, res: Resources) -> None:
    hc = info["HostConfig"]
    assert hc["Memory"] == res.memory_bytes
    nano = int(round(res.cpus * 1e9))
    # dockerd keeps NanoCpus; podman reports NanoCpus and also the CFS quota/period it turned it into.
    assert hc.get("NanoCpus") == nano or (
        hc.get("CpuPeriod") and hc.get("CpuQuota") == round(res.cpus * hc["CpuPeriod"])
    ), {k: hc.get(k) for k in ("NanoCpus", "CpuQuota", "CpuPeriod")}


async def test_created_container_and_adoption_of_a_running_one(make_backend, raw, proxy_id):
    b = make_backend()
    inst = await b.start("k-1", spec())
    assert inst.host == "127.0.0.1" and inst.port > 0 and inst.class_name == "Titanic"

    info = await raw.containers.container(inst.id).show()
    labels = info["Config"]["Labels"]
    assert labels[LABEL_MANAGED] == "true" and labels[LABEL_PROXY_ID] == proxy_id
    assert labels[LABEL_KEY] == "k-1" and labels[LABEL_CONTAINER] == "Titanic" and labels[LABEL_SPEC]
    assert info["HostConfig"]["Init"] is True
    assert_limits(info, FAST)
    bindings = info["HostConfig"]["PortBindings"]["8080/tcp"]
    assert bindings[0]["HostIp"] == "127.0.0.1"
    assert info["Name"].lstrip("/") == b.name_for("k-1", spec())

    # a second start of a running instance adopts it (the stub, whose instances die with it, starts another)
    again = await b.start("k-1", spec())
    assert again == inst
    await b.stop(inst)


@pytest.mark.parametrize("itype", ["dev", "basic", "lite", "standard-2"])
async def test_instance_type_limits(make_backend, raw, itype):
    b = make_backend()
    inst = await b.start(f"type-{itype}", spec(resources=INSTANCE_TYPES[itype]))
    assert_limits(await raw.containers.container(inst.id).show(), INSTANCE_TYPES[itype])
    await b.stop(inst)


async def test_warm_restart_and_spec_change(make_backend):
    b = make_backend(reuse_stopped=True)
    first = await b.start("warm", spec())
    await b.stop(first)
    assert await b.inspect(first) == InstanceState.EXITED
    second = await b.start("warm", spec())
    assert second.id == first.id  # same spec: the stopped container is restarted
    await b.stop(second)
    third = await b.start("warm", spec(env={"LOG_LEVEL": "INFO"}))
    assert third.id != first.id  # changed spec: removed and recreated
    assert await b.inspect(first) == InstanceState.MISSING
    await b.stop(third)
    assert await b.cleanup_stopped() == [b.name_for("warm", spec())]
    assert await b.inspect(third) == InstanceState.MISSING

    r = make_backend(reuse_stopped=False)
    inst = await r.start("cold", spec())
    await r.stop(inst)
    assert await r.inspect(inst) == InstanceState.MISSING  # stop also removes


async def test_missing_image_is_backend_error(make_backend):
    b = make_backend()
    with pytest.raises(BackendError) as ei:  # `pull: never`: no registry asked (tests/engines/test_pull.py: the pulls)
        await b.start("nope", spec(image="lazy-proxy/does-not-exist:never", pull="never"))
    assert ei.value.reason == "image lazy-proxy/does-not-exist:never is not present and pull is never"
    assert not isinstance(ei.value, BackendUnavailable) and b.puller.pulls == 0
    with pytest.raises(BackendError) as ei:  # the default, `missing`: a pull no registry serves
        await b.start("nope", spec(image="lazy-proxy/does-not-exist:never"))
    assert ei.value.reason.startswith("pull of lazy-proxy/does-not-exist:never failed: "), ei.value.reason
    assert not isinstance(ei.value, BackendUnavailable) and b.puller.pulls == 1


async def test_unlabelled_container_is_never_touched(make_backend, raw, runtime):
    b = make_backend()
    s = spec()
    name = b.name_for("intruder", s)
    make_backend.extra_names.append(name)
    foreign = await raw.containers.create(
        {"Image": DEFAULT_TAG, "Cmd": ["/usr/bin/python3.11", "-c", "import time; time.sleep(300)"],
         "Labels": {"someone.else": "yes"}},
        name=name,
    )
    await foreign.start()
    with pytest.raises(BackendError, match="name conflict"):
        await b.start("intruder", s)
    fake = Instance(key="intruder", class_name="Titanic", host="127.0.0.1", port=1, id=foreign.id)
    with pytest.raises(BackendError):
        await b.stop(fake)
    assert foreign.id not in [i.id for i in await b.list_instances()]
    # a container claiming to be managed by another proxy is foreign too
    other = make_backend(proxy_id="someone-else")
    assert foreign.id not in [i.id for i in await other.list_instances()]
    await foreign.kill()
    assert await b.cleanup_stopped() == []
    info = await raw.containers.container(foreign.id).show()  # still there, untouched
    assert info["Config"]["Labels"].get(LABEL_MANAGED) is None


async def test_killed_container_is_exited(make_backend, raw):
    b = make_backend()
    inst = await b.start("victim", spec())
    await raw.containers.container(inst.id).kill()
    for _ in range(50):
        if await b.inspect(inst) == InstanceState.EXITED:
            break
        await asyncio.sleep(0.1)
    assert await b.inspect(inst) == InstanceState.EXITED
    assert inst.id not in [i.id for i in await b.list_instances()]


@pytest.mark.parametrize("cls", [DockerBackend, PodmanBackend])
async def test_dead_socket_is_unavailable(cls, tmp_path):
    b = cls(socket=f"unix://{tmp_path}/nothing.sock", proxy_id="dead")
    fake = Instance(key="k", class_name="c", host="127.0.0.1", port=1, id="0" * 12)
    try:
        for call in (b.start("k", spec()), b.list_instances(), b.inspect(fake), b.stop(fake)):
            with pytest.raises(BackendUnavailable) as ei:
                await call
            assert "unreachable" in ei.value.reason and ei.value.retry_after > 0
    finally:
        await b.close()


def test_container_names_are_safe_and_distinct():
    from backends._names import container_name

    a = container_name("p", "Titanic", "user/../1;rm -rf")
    assert a.startswith("lp-titanic-user-..-1-rm-rf-") or a.startswith("lp-titanic-")
    assert all(c.isalnum() or c in "_.-" for c in a) and a == a.lower() and len(a) <= 128
    assert container_name("p", "T", "a/b") != container_name("p", "T", "a_b") != container_name("q", "T", "a/b")
    assert len(container_name("p", "x" * 500, "y" * 500)) <= 128


async def test_recovers_when_daemon_comes_back(runtime, tmp_path):
    """Same backend object: unavailable while the socket is dead, works once it answers again."""
    real = RUNTIMES[runtime][1]().removeprefix("unix://")
    path = tmp_path / "flaky.sock"

    async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            w.close()

    async def forward(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_unix_connection(real)
        await asyncio.gather(pipe(cr, uw), pipe(ur, cw))

    b = RUNTIMES[runtime][0](socket=f"unix://{path}", proxy_id=f"flaky-{uuid.uuid4().hex[:6]}")
    try:
        with pytest.raises(BackendUnavailable):
            await b.list_instances()
        server = await asyncio.start_unix_server(forward, path=str(path))
        try:
            assert await b.list_instances() == []
        finally:
            server.close()
    finally:
        await b.close()


async def test_an_image_built_under_another_tag_carries_that_tag(runtime, raw):
    """`python -m backends.image build --tag T` (what a user's own tag or a rollout's new one needs): podman's
    API ignores the import's `tag` parameter, so the tag once became `:latest` and the build ended in a 404."""
    tag = f"lp-tagtest/app:t{uuid.uuid4().hex[:6]}"
    try:
        built = await build_image(runtime, tag=tag, socket=engines.socket_for(runtime), verbose=False)
        assert built.tag == tag and (await raw.images.inspect(tag))["Id"] == built.image_id
    finally:
        with contextlib.suppress(aiodocker.DockerError):
            await raw.images.delete(tag)
