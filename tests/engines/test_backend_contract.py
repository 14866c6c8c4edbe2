"""The Backend contract: what every runtime owes the manager, run against stub, process, docker, podman and swarm.

Behaviour (parametrised by `backend_kind`: docker/podman/swarm params carry their marks, skip when the daemon is
missing, and fail instead under CI=true):
  - start(key, spec) returns an Instance for that key and class whose readiness path answers 2xx within a
    bound; inspect says RUNNING; stop -> not RUNNING and the address stops answering; stopping twice is fine;
  - start after stop works (a restart or a recreate, either is fine);
  - two keys give two instances, each its own server;
  - list_instances lists only running instances of this proxy id, with key/container/address right; where
    instances outlive the Backend object (containers) it lists them all, also from a new Backend with the same
    proxy id (what adoption after a restart relies on), and none from another proxy id;
  - cleanup_stopped removes what stopped instances left behind, and nothing running;
  - close() is idempotent.
Engine-specific behaviour (labels, limits, names, warm restart vs spec change, foreign containers, daemon
outage) is in tests/engines/test_backend_engines.py.

Static guard: every backend class (and the bench's ExternalBackend) has every member of `backends.base.Backend`
with a compatible signature: same parameter names and kinds, same annotations, async where the protocol is.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import pkgutil
import time
import typing
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

import aiohttp
import pytest

import backends
from backends._engine import EngineBackend
from backends._engine_boost import EngineBoost
from backends._engine_ops import EngineOps
from backends.base import Backend, ContainerSpec, Instance, InstanceState, MiB, Resources
from backends.docker import DockerBackend
from backends.podman import PodmanBackend
from backends.process import ProcessBackend
from backends.stub import StubBackend
from backends.swarm import SwarmBackend
from bench.lib.launcher import ExternalBackend
from tests.support import engines
from tests.conftest import LIFECYCLE_PARAMS

READY_PATH = "/v2/health/ready"
CLASS = "Titanic"
# Containers get a whole CPU so the model service imports quickly (limits are tested in test_backend_engines).
FAST = Resources(memory_bytes=512 * MiB, cpus=1.0)


@dataclass(frozen=True)
class Runtime:
    kind: str
    spec: ContainerSpec
    ready_within: float  # seconds from start() returning to the readiness path answering 2xx
    outlives_backend: bool  # instances survive the Backend object (containers): what adoption relies on
    new: Callable[[str], Backend]  # proxy id -> a fresh backend


@pytest.fixture(params=LIFECYCLE_PARAMS)
def backend_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def runtime(backend_kind: str) -> Runtime:
    if backend_kind == "stub":
        return Runtime("stub", ContainerSpec(name=CLASS, image="model_service"), 15.0, False,
                       lambda _proxy_id: StubBackend())
    if backend_kind == "process":  # the model service as a child process (`python -m model_service`)
        return Runtime("process", ContainerSpec(name=CLASS, image="model_service"), 30.0, False,
                       lambda _proxy_id: ProcessBackend())
    image = await engines.ensure_image(backend_kind)  # daemon missing: skip, or fail under CI=true
    return Runtime(backend_kind, ContainerSpec(name=CLASS, image=image, resources=FAST), 60.0, True,
                   lambda proxy_id: engines.make_backend(backend_kind, proxy_id))


@pytest.fixture
async def new_backend(runtime: Runtime) -> AsyncIterator[Callable[..., Backend]]:
    """`new_backend(proxy_id=...)`: a backend of this runtime (one proxy id per test by default). At the end
    each is closed (again) and, on docker/podman/swarm, every container (service) of its proxy id is removed."""
    default_id = f"contract-{uuid.uuid4().hex[:8]}"
    made: dict[str, list[Backend]] = {}  # proxy id -> backends

    def new(proxy_id: str = default_id) -> Backend:
        backend = runtime.new(proxy_id)
        made.setdefault(proxy_id, []).append(backend)
        return backend

    yield new
    for same_id in made.values():
        for backend in same_id:
            await backend.close()
        if runtime.outlives_backend:
            await engines.remove_all(same_id[0])


async def answers(instance: Instance, session: aiohttp.ClientSession) -> bool:
    """One readiness probe: does the instance's address answer 2xx right now?"""
    try:
        async with session.get(instance.url + READY_PATH) as resp:
            return 200 <= resp.status < 300
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
        return False


async def ready(instance: Instance, within: float) -> float:
    """Seconds until the readiness path answers 2xx; fails past `within`."""
    t0 = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session:
        while not await answers(instance, session):
            if time.monotonic() - t0 > within:
                raise AssertionError(f"{instance.url}{READY_PATH} not 2xx within {within:g}s")
            await asyncio.sleep(0.05)
    return time.monotonic() - t0


async def serving(instance: Instance) -> bool:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session:
        return await answers(instance, session)


def started(instances: list[Instance]) -> set[tuple[str, str, str, str]]:
    return {(i.key, i.class_name, i.id, i.url) for i in instances}


# ---------------------------------------------------------------------------- behaviour


async def test_start_ready_stop_and_start_again(runtime: Runtime, new_backend: Callable[..., Backend]) -> None:
    b = new_backend()
    inst = await b.start("k-1", runtime.spec)
    assert isinstance(inst, Instance)
    assert (inst.key, inst.class_name) == ("k-1", CLASS) and inst.id and 0 < inst.port < 65536
    await ready(inst, runtime.ready_within)
    assert await b.inspect(inst) is InstanceState.RUNNING

    await b.stop(inst)
    assert await b.inspect(inst) is not InstanceState.RUNNING
    assert not await serving(inst)
    await b.stop(inst)  # stopping what is already stopped is not an error

    again = await b.start("k-1", runtime.spec)  # a restart (same id) or a recreate (new id): either is fine
    assert (again.key, again.class_name) == ("k-1", CLASS)
    await ready(again, runtime.ready_within)
    assert await b.inspect(again) is InstanceState.RUNNING


async def test_two_keys_are_two_instances_listed_while_running(runtime: Runtime,
                                                               new_backend: Callable[..., Backend]) -> None:
    b = new_backend()
    ours = list(await asyncio.gather(b.start("k-a", runtime.spec), b.start("k-b", runtime.spec)))
    one, two = ours
    assert (one.key, two.key) == ("k-a", "k-b")
    assert one.id != two.id and one.url != two.url
    await asyncio.gather(ready(one, runtime.ready_within), ready(two, runtime.ready_within))

    listed = await b.list_instances()
    assert started(listed) <= started(ours), "only running instances this backend started"
    if runtime.outlives_backend:  # in-process instances die with the proxy: nothing to adopt, none to list
        assert started(listed) == started(ours)
        # The proxy after a restart: a new Backend with the same proxy id finds them (close() releases
        # connections, not instances); another proxy id sees none of them.
        await b.close()
        b = new_backend()
        assert started(await b.list_instances()) == started(ours)
        assert await new_backend(proxy_id=f"other-{uuid.uuid4().hex[:8]}").list_instances() == []

    await b.stop(one)  # each is its own server: the other one goes on serving, and is all that is listed
    assert await b.inspect(one) is not InstanceState.RUNNING
    assert await b.inspect(two) is InstanceState.RUNNING
    assert await serving(two)
    assert started(await b.list_instances()) == (started([two]) if runtime.outlives_backend else set())


async def test_cleanup_stopped_removes_only_what_stopped(runtime: Runtime,
                                                         new_backend: Callable[..., Backend]) -> None:
    b = new_backend()
    gone, kept = await asyncio.gather(b.start("gone", runtime.spec), b.start("kept", runtime.spec))
    await b.stop(gone)
    left = await b.inspect(gone)  # EXITED where a stopped instance is kept for a warm restart, else MISSING
    assert left is not InstanceState.RUNNING

    removed = await b.cleanup_stopped()
    assert isinstance(removed, list) and all(isinstance(n, str) and n for n in removed)
    assert len(removed) == (1 if left is InstanceState.EXITED else 0), removed
    assert await b.inspect(gone) is InstanceState.MISSING
    assert await b.inspect(kept) is InstanceState.RUNNING
    assert await b.cleanup_stopped() == []


async def test_close_is_idempotent(new_backend: Callable[..., Backend]) -> None:
    never_used = new_backend()
    await never_used.close()
    await never_used.close()
    used = new_backend()
    await used.list_instances()  # opens the runtime connection, if it has one
    await used.close()
    await used.close()


# ---------------------------------------------------------------------------- static guard

PROTOCOL_METHODS: dict[str, Callable[..., Any]] = {
    name: member for name, member in vars(Backend).items() if inspect.isfunction(member) and not name.startswith("_")
}
PROTOCOL_ATTRIBUTES: dict[str, Any] = typing.get_type_hints(Backend)
IMPLEMENTATIONS: list[type] = [StubBackend, ProcessBackend, EngineBackend, EngineOps, EngineBoost, DockerBackend,
                               PodmanBackend, SwarmBackend, ExternalBackend]


def signature_problems(name: str, proto: Callable[..., Any], impl: Callable[..., Any]) -> list[str]:
    """How `impl` is not a drop-in for the protocol method `proto` (both as looked up on their classes)."""
    problems = []
    if inspect.iscoroutinefunction(proto) != inspect.iscoroutinefunction(impl):
        problems.append(f"{name}: {'async' if inspect.iscoroutinefunction(proto) else 'sync'} in the protocol")
    want = list(inspect.signature(proto).parameters.values())[1:]  # without self
    got = list(inspect.signature(impl).parameters.values())[1:]
    for i, p in enumerate(want):
        q = got[i] if i < len(got) else None
        if q is None or (q.name, q.kind) != (p.name, p.kind):
            problems.append(f"{name}: parameter {i + 1} is {q and (q.name, q.kind.name)}, protocol has "
                            f"{(p.name, p.kind.name)}")
    for q in got[len(want):]:
        if q.default is inspect.Parameter.empty and q.kind not in (q.VAR_POSITIONAL, q.VAR_KEYWORD):
            problems.append(f"{name}: extra parameter {q.name!r} without a default")
    want_hints, got_hints = typing.get_type_hints(proto), typing.get_type_hints(impl)
    for arg in [p.name for p in want] + ["return"]:
        if got_hints.get(arg) != want_hints.get(arg):
            problems.append(f"{name}: {arg} annotated {got_hints.get(arg)}, protocol has {want_hints.get(arg)}")
    return problems


def test_the_guard_sees_the_protocol() -> None:
    assert {"start", "stop", "inspect", "list_instances", "cleanup_stopped", "close"} <= set(PROTOCOL_METHODS)
    assert PROTOCOL_ATTRIBUTES == {"name": str}


def test_every_backend_class_is_guarded() -> None:
    """A new class in backends/ that looks like a backend (has start and stop) must be added to IMPLEMENTATIONS."""
    found = set()
    for info in pkgutil.iter_modules(backends.__path__):
        module = importlib.import_module(f"backends.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and callable(getattr(cls, "start", None)) \
                    and callable(getattr(cls, "stop", None)) and cls is not Backend:
                found.add(cls)
    assert found <= set(IMPLEMENTATIONS), f"not checked against the protocol: {found - set(IMPLEMENTATIONS)}"


@pytest.mark.parametrize("cls", IMPLEMENTATIONS, ids=lambda cls: cls.__name__)
def test_implements_the_backend_protocol(cls: type) -> None:
    problems = []
    for attr, typ in PROTOCOL_ATTRIBUTES.items():
        if not isinstance(getattr(cls, attr, None), typ):
            problems.append(f"{attr}: not a class attribute of type {typ.__name__}")
    for name, proto in PROTOCOL_METHODS.items():
        impl = getattr(cls, name, None)
        if not callable(impl):
            problems.append(f"{name}: missing")
            continue
        problems += signature_problems(name, proto, impl)
    assert not problems, f"{cls.__module__}.{cls.__name__} does not implement Backend:\n  " + "\n  ".join(problems)


def test_the_guard_catches_drift() -> None:
    """The check above really fails on the kinds of drift it is for."""

    class Drifted:
        name = "drifted"

        async def start(self, key: str, container_spec: ContainerSpec) -> Instance:  # renamed parameter
            raise NotImplementedError

        def stop(self, instance: Instance) -> None:  # sync where the protocol is async
            return None

        async def inspect(self, instance: Instance, deep: bool) -> InstanceState:  # extra required parameter
            raise NotImplementedError

        async def list_instances(self) -> list[str]:  # wrong return type
            return []

        # no cleanup_stopped, no close

    with pytest.raises(AssertionError) as failed:
        test_implements_the_backend_protocol(Drifted)
    message = str(failed.value)
    for expected in ("start: parameter 2", "stop: async in the protocol", "inspect: extra parameter 'deep'",
                     "list_instances: return annotated", "cleanup_stopped: missing", "close: missing"):
        assert expected in message, message
