"""Shared fixtures: a proxy on a chosen backend (stub, docker, podman) with the model service behind it.

Lifecycle tests take `backend_kind` and so run on every backend; docker/podman params carry marks
(`-m docker`, `-m podman`) and fail, not skip, when their daemon is missing under CI=true.
"""

from __future__ import annotations

import asyncio
import copy
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import aiohttp
import pytest
from aiohttp.test_utils import BaseTestServer, TestClient, TestServer
from aiohttp.web_runner import BaseRunner
from prometheus_client.parser import text_string_to_metric_families

from backends.base import Backend
from proxy.app import PROXY, Proxy, create_app
from proxy.config.schema import parse_config
from proxy.lifecycle.manager import Manager
from proxy.http.server import ProxyRunner

BACKEND_PARAMS = [
    pytest.param("stub", id="stub"),
    pytest.param("docker", id="docker", marks=pytest.mark.docker),
    pytest.param("podman", id="podman", marks=pytest.mark.podman),
]


@pytest.fixture(params=BACKEND_PARAMS)
def backend_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# The seed's endpoints stay on the proxied port in tests (as in the shipped config.yaml): tests read /metrics there.
SEED_ON_PROXY_PORT = {"on_proxy_port": ["health", "info", "container-status", "metrics"]}


def base_config(kind: str, image: str) -> dict[str, Any]:
    """A small config: one class `svc` running the model service with its debug routes."""
    return {
        "server": {"max_body_size": "1MiB", "upstream_timeout": "20s", "connect_timeout": "2s"},
        "admin": dict(SEED_ON_PROXY_PORT),
        "metrics": {"key_label_limit": 1000},
        "containers": {
            "svc": {
                "image": image,
                "port": 8080,
                "env": {"MODEL_SERVICE_DEBUG_ROUTES": "1", "API_TITLE": "test"},
                "readiness": {"path": "/v2/health/ready", "interval": "20ms", "timeout": "1s"},
                "sleep_after": "60s",
                "start_timeout": "10s" if kind == "stub" else "20s" if kind == "process" else "40s",
                "max_instances": 50,
                # Containers get a whole CPU so the model service imports quickly; limits are tested elsewhere.
                **({} if kind == "stub" else {"instance_type": {"memory": "512MiB", "cpus": 1.0}}),
            }
        },
        "routes": [
            {"path": "/api/{tail:.*}", "container": "svc", "key": "shared"},
            {"path": "/s/{tail:.*}", "container": "svc", "key": "shared", "upstream_path": "/{tail}"},
            {"path": "/warm/{tail:.*}", "container": "svc", "key": "shared", "mode": "warm",
             "upstream_path": "/{tail}"},
            {"path": "/k/{id}/{tail:.*}", "container": "svc", "key": "{id}", "upstream_path": "/{tail}"},
            {"path": "/lb/{tail:.*}", "container": "svc", "key": "lb", "mode": "lb", "instances": 3,
             "upstream_path": "/{tail}"},
        ],
    }


@dataclass
class Harness:
    client: TestClient
    proxy: Proxy
    backend: Backend

    def manager(self, key: str, container: str | None = None) -> Manager:
        """The manager of `key` (of `container`, or of the only class that has that key)."""
        found = [m for (c, k), m in self.proxy.registry.managers.items() if k == key and container in (None, c)]
        if len(found) != 1:
            raise KeyError(f"{len(found)} managers for key {key!r}")
        return found[0]

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of /metrics, keyed by (name, sorted labels)."""
        text = await (await self.client.get("/metrics")).text()
        out = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return out

    async def metric(self, name: str, **labels: str) -> float:
        return (await self.metrics()).get((name, tuple(sorted(labels.items()))), 0.0)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError("condition not met in time")
            await asyncio.sleep(0.02)


MakeProxy = Callable[..., Awaitable[Harness]]
ENGINE_PARAMS = [p for p in BACKEND_PARAMS if p.id != "stub"]  # real daemons only
# Lifecycle and contract tests also run on the process backend (modules opt in by overriding `backend_kind`).
WITH_PROCESS_PARAMS = [BACKEND_PARAMS[0], pytest.param("process", id="process"), *ENGINE_PARAMS]
# The backend contract and the lifecycle tests also run on a real single-node swarm (one service per key).
SWARM_PARAM = pytest.param("swarm", id="swarm", marks=pytest.mark.swarm)
LIFECYCLE_PARAMS = [*WITH_PROCESS_PARAMS, SWARM_PARAM]


def with_misbehaving_upstream(upstream_timeout: str, broken: bool = False) -> dict[str, Any]:
    """Root config for `make_proxy(config=...)`: the usual `svc` routes plus `/bad/...` on tests/support/upstreams.py's
    misbehaving app (and `/broken/...`, a class whose image cannot load, when asked)."""
    svc = base_config("stub", "model_service")
    containers: dict[str, Any] = {
        "svc": svc["containers"]["svc"],
        "bad": {"image": "stub:tests.support.upstreams:create_app", "readiness": {"path": "/v2/health/ready"}},
    }
    routes = svc["routes"] + [{"path": "/bad/{tail:.*}", "container": "bad", "key": "bad", "upstream_path": "/{tail}"}]
    if broken:
        containers["broken"] = {"image": "stub:no_such_module:create_app"}
        routes.append({"path": "/broken/{tail:.*}", "container": "broken", "key": "broken", "upstream_path": "/{tail}"})
    return {"containers": containers, "routes": routes, "admin": dict(SEED_ON_PROXY_PORT),
            "server": {"upstream_timeout": upstream_timeout, "max_body_size": "1MiB"}}


class ProxyTestServer(TestServer):
    """A TestServer served as `python -m proxy` serves: connections take the fast path when they can."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        return ProxyRunner(self.app, **kwargs)


def proxy_server(app: Any) -> BaseTestServer:
    return ProxyTestServer(app, handler_cancellation=True)


@pytest.fixture
async def make_proxy(aiohttp_client: Any, backend_kind: str, request: pytest.FixtureRequest) -> Any:
    """Build a proxy on `backend_kind`. Keyword `svc={...}` merges into the class, `config={...}` into the root."""
    if backend_kind == "stub":
        from backends.stub import StubBackend

        image = "model_service"
        make_backend: Callable[[], Backend] = StubBackend
    elif backend_kind == "process":
        from backends.process import ProcessBackend

        image = "model_service"  # not used: the child runs `python -m model_service`
        make_backend = ProcessBackend
    else:
        from tests.support import engines

        image = await engines.ensure_image(backend_kind)
        make_backend = lambda: engines.make_backend(backend_kind, proxy_id=f"t{uuid.uuid4().hex[:10]}")  # noqa: E731
    made: list[Backend] = []

    async def factory(svc: dict[str, Any] | None = None, config: dict[str, Any] | None = None,
                      clock: Callable[[], float] = time.time, backend: Backend | None = None) -> Harness:
        raw = base_config(backend_kind, image)
        raw["containers"]["svc"].update(copy.deepcopy(svc or {}))
        for key, value in (config or {}).items():
            if isinstance(value, dict) and isinstance(raw.get(key), dict):
                raw[key].update(value)
            else:
                raw[key] = value
        backend = backend or make_backend()
        made.append(backend)
        app = create_app(parse_config(raw), backend, clock=clock)
        # No client-side connection cap: 200 concurrent requests really are concurrent.
        client = await aiohttp_client(proxy_server(app), connector=aiohttp.TCPConnector(limit=0))
        return Harness(client, app[PROXY], backend)

    yield factory
    if backend_kind not in ("stub", "process"):
        from tests.support import engines

        for backend in made:
            await engines.remove_all(backend)


@pytest.fixture
async def make_admin(make_proxy: Any, aiohttp_client: Any) -> Any:
    """`make_admin(admin={...}, ...)`: make_proxy's proxy (with a token unless `admin` says otherwise) and an
    admin listener on the same Proxy, on an ephemeral loopback port (tests/support/admin.py)."""
    from proxy.admin.api import create_admin_app
    from tests.support.admin import TOKEN, Admin

    async def factory(admin: dict[str, Any] | None = None, config: dict[str, Any] | None = None,
                      **kw: Any) -> Admin:
        config = dict(config or {})
        config["admin"] = {"token": TOKEN, **(admin or {})}
        h = await make_proxy(config=config, **kw)
        client = await aiohttp_client(TestServer(create_admin_app(h.proxy)))
        return Admin(h, client, str(client.make_url("")).rstrip("/"))

    return factory


@pytest.fixture
async def raw(backend_kind: str) -> Any:
    """The daemon's own API client (for faults injected from outside the proxy)."""
    import aiodocker

    from tests.support import engines

    await engines.ensure_image(backend_kind)
    docker = aiodocker.Docker(url=engines.socket_for(backend_kind))
    yield docker
    await docker.close()


def ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"
