"""The embedded backend: the model service runs in the proxy's own process on an ephemeral port.

The proxied path is still real HTTP over 127.0.0.1, exactly as with a container, so everything
above the Backend protocol behaves the same with no daemon at all. `image` may name an app factory
as `stub:package.module:function` (tests use this); anything else serves the model service, over KServe V2
gRPC when the class's env says `MODEL_SERVICE_PROTOCOL=grpc` (as the model image and a process do).
"""

from __future__ import annotations

import importlib
import itertools
from typing import Any, Awaitable, Callable, Mapping, Protocol, cast

from aiohttp import web

from backends.base import BackendError, ContainerSpec, Instance, InstanceState, Phases
from backends.ports import listening_socket

DEFAULT_FACTORY = "model_service.app:create_app"
AppFactory = Callable[[Mapping[str, str]], web.Application]


def _resolve(image: str) -> AppFactory:
    target = image[len("stub:"):] if image.startswith("stub:") else DEFAULT_FACTORY
    module_name, _, attr = target.partition(":")
    try:
        return cast(AppFactory, getattr(importlib.import_module(module_name), attr or "create_app"))
    except (ImportError, AttributeError) as exc:
        raise BackendError(f"stub image {image!r} cannot be loaded: {exc}") from None


class _Served(Protocol):
    async def cleanup(self) -> None: ...


class _GrpcServer:
    """The model service's V2 gRPC server (model_service/grpc_server.py), run in this process."""

    def __init__(self, server: Any) -> None:
        self.server = server

    async def cleanup(self) -> None:
        await self.server.stop(1.0)


def _grpc_wanted(spec: ContainerSpec) -> bool:
    return not spec.image.startswith("stub:") and spec.env.get("MODEL_SERVICE_PROTOCOL", "").strip().lower() == "grpc"


async def _start_grpc(env: Mapping[str, str]) -> tuple[_GrpcServer, int]:
    try:
        start = cast(Callable[..., Awaitable[tuple[Any, int]]],
                     importlib.import_module("model_service.grpc_server").start)
    except ImportError as exc:
        raise BackendError(f"the gRPC model service cannot be loaded: {exc}") from None
    server, port = await start("127.0.0.1", 0, env)
    return _GrpcServer(server), port


async def _start_http(factory: AppFactory, env: Mapping[str, str]) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(factory(env), handle_signals=False, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.SockSite(runner, listening_socket("127.0.0.1")).start()  # (below the ephemeral range: backends/ports.py)
    return runner, int(runner.addresses[0][1])


class StubBackend:
    name = "stub"

    def __init__(self) -> None:
        self._runners: dict[str, _Served] = {}
        self._ids = itertools.count(1)
        self.specs: dict[str, ContainerSpec] = {}  # the spec each key was last started with

    async def start(self, key: str, spec: ContainerSpec) -> Instance:
        phases = Phases()
        instance_id = f"stub-{key}-{next(self._ids)}"
        env = {**spec.env, "INSTANCE_ID": instance_id}
        try:
            served, port = await (_start_grpc(env) if _grpc_wanted(spec) else _start_http(_resolve(spec.image), env))
        except OSError as exc:
            raise BackendError(f"stub server failed to listen: {exc}") from None
        self._runners[instance_id] = served
        self.specs[key] = spec
        phases.mark("start")  # an in-process server has no create step or published port
        return phases.on(Instance(key=key, class_name=spec.name, host="127.0.0.1", port=port, id=instance_id))

    async def stop(self, instance: Instance) -> None:
        runner = self._runners.pop(instance.id, None)
        if runner is not None:
            await runner.cleanup()

    async def inspect(self, instance: Instance) -> InstanceState:
        return InstanceState.RUNNING if instance.id in self._runners else InstanceState.MISSING

    async def exit_reason(self, instance: Instance) -> str | None:
        return None  # an in-process server only stops when told to

    async def list_instances(self) -> list[Instance]:
        return []  # in-process servers die with the proxy: nothing to adopt

    async def cleanup_stopped(self) -> list[str]:
        return []  # a stopped in-process server leaves nothing behind

    async def close(self) -> None:
        for runner in list(self._runners.values()):
            await runner.cleanup()
        self._runners.clear()
