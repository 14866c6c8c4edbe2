"""Cold start on a swarm: through the proxy (backend `swarm`) vs the raw swarm API, no proxy.

    python -m bench.cold_start --runtime swarm [--cycles 10] [--smoke]

Run from bench/cold_start/__main__.py (`run_one` hands `swarm` here); the results have the same shape as
that module's `run_runtime`, so its tables and SUMMARY read them unchanged. Needs an active swarm on dockerd
and the model-service image in the local registry (`python -m backends.image push --registry 127.0.0.1:5000`).

- **create** floor: `POST services/create` with the service spec SwarmBackend builds (`service_spec`, the
  image pinned to its registry digest by the backend's `_pinned`, done before the clock starts and timed
  apart as `floor pin`), labelled `lazy-proxy.bench=<bench id>` instead of `proxy.managed`; timed from the
  create call until the task runs with its published port ("started", the task polled every `--poll-ms`)
  and until `GET /v2/health/ready` answers 200 (polled every `--poll-ms`); then the service is removed and
  its container waited out. Proxy: a fresh key, its service removed afterwards.
- **restart** floor: a primed service scaled to 0, then `services/{id}/update` to 1 replica with
  ForceUpdate (the service inspected for its version before the clock starts), timed the same way; scaled
  back to 0 and waited until its task is gone after each cycle. Proxy: a fixed key after `sleep_after`.

A swarm start is always a new task (a new container), so there is no "reused same container" count. The
in-process backend breakdown (`diagnose`) is not run for swarm; the paired number (instance answers 200 ->
proxy client gets 200) is, on the task the proxy started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import time
from typing import Any

import aiodocker
import aiohttp

from backends.base import LABEL_KEY, LABEL_PROXY_ID, ContainerSpec, Resources
from backends.swarm import LIVE, SwarmBackend
from bench.cold_start import harness as cs
from bench.cold_start.proxied import ProxyUnderTest
from bench.cold_start.run import alternate, close_all, open_all, paired

REGISTRY = "127.0.0.1:5000"
IMAGE = f"{REGISTRY}/{cs.IMAGE}"
SERVICE_LABEL = "com.docker.swarm.service.id"  # on a task's container
GONE_WITHIN = 30.0  # s: a removed or scaled-down task's container must be gone by then


def _state(task: dict[str, Any]) -> str:
    return str((task.get("Status") or {}).get("State") or "")


async def _services(docker: aiodocker.Docker, label: str, value: str, prefix: bool = False) -> list[str]:
    """Ids of the services whose `label` is `value` (or starts with it)."""
    found = await docker.services.list(filters={"label": [label]})
    return [s["ID"] for s in found
            if (v := ((s.get("Spec") or {}).get("Labels") or {}).get(label, "")) == value
            or (prefix and v.startswith(value))]


async def _wait_containers_gone(docker: aiodocker.Docker, service_id: str, within: float = GONE_WITHIN) -> None:
    """Wait until no container of the service runs (swarm stops them itself after a remove/scale-down)."""
    filters = json.dumps({"label": [f"{SERVICE_LABEL}={service_id}"], "status": ["running", "created",
                                                                               "restarting", "removing"]})
    deadline = time.monotonic() + within
    while await docker.containers.list(all=True, filters=filters):
        if time.monotonic() > deadline:
            raise RuntimeError(f"service {service_id[:12]}: container still there {within:g}s after its stop")
        await asyncio.sleep(0.05)


async def _remove_service(docker: aiodocker.Docker, service_id: str) -> None:
    """Remove a service, wait out its container, and delete what swarm left of its containers."""
    with contextlib.suppress(aiodocker.DockerError):
        await docker.services.delete(service_id)
    await _wait_containers_gone(docker, service_id)
    for c in await docker.containers.list(all=True, filters=json.dumps({"label": [f"{SERVICE_LABEL}={service_id}"]})):
        with contextlib.suppress(aiodocker.DockerError):
            await c.delete(force=True, v=True)


# ---------------------------------------------------------------------------- floor


class SwarmFloor:
    """The swarm API directly (through SwarmBackend's thin `_get`/`_post` wrappers of it), no proxy."""

    def __init__(self, bench_id: str, poll: float) -> None:
        self.bench_id = bench_id
        self.poll = poll
        self.spec = ContainerSpec(name="bench", image=IMAGE, resources=Resources(cs.MEMORY, cs.CPUS))
        self.api = SwarmBackend(socket=cs._socket("swarm"), proxy_id=f"{bench_id}-floor")
        self.docker = aiodocker.Docker(url=self.api.socket)
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        self.n = 0
        self.restart_id: str | None = None
        self.pins: list[float] = []

    async def body(self, name: str) -> dict[str, Any]:
        body = self.api.service_spec("floor", self.spec, name)
        # Not proxy.managed: no proxy may adopt or touch it. Our own label, for clean-up.
        body["Labels"] = body["TaskTemplate"]["ContainerSpec"]["Labels"] = {cs.FLOOR_LABEL: self.bench_id}
        t = time.perf_counter()
        body["TaskTemplate"]["ContainerSpec"]["Image"] = await self.api._pinned(self.spec.image)
        self.pins.append(time.perf_counter() - t)
        return body

    async def _started_url(self, service_id: str, old: set[str], t0: float) -> str:
        """Poll the service's tasks until a new one runs with its published port; its readiness URL."""
        while time.perf_counter() < t0 + 60:
            for task in await self.api._get("tasks", filters={"service": [service_id],
                                                                "desired-state": ["running"]}):
                if task["ID"] in old:
                    continue
                if _state(task) not in LIVE:
                    raise RuntimeError(f"floor task {_state(task)}: {(task.get('Status') or {}).get('Err')}")
                if _state(task) == "running":
                    address = await self.api._address(task, self.spec.port)
                    if address is not None:
                        return f"http://{address[0]}:{address[1]}{cs.READY_PATH}"
            await asyncio.sleep(self.poll)
        raise RuntimeError(f"floor service {service_id[:12]}: no running task with a port within 60 s")

    async def _timed(self, t0: float, service_id: str, old: set[str]) -> dict[str, float]:
        url = await self._started_url(service_id, old, t0)
        t_started = time.perf_counter()
        await cs.poll_ready(self.session, url, self.poll, t0 + 60)
        t_ready = time.perf_counter()
        return {"total": t_ready - t0, "started": t_started - t0}

    async def create(self) -> dict[str, float]:
        self.n += 1
        body = await self.body(f"lpbench-{self.bench_id}-c{self.n}")
        t0 = time.perf_counter()
        service_id = str((await self.api._post("services/create", body))["ID"])
        try:
            return await self._timed(t0, service_id, set())
        finally:
            await _remove_service(self.docker, service_id)

    async def _scale(self, replicas: int, force: bool) -> None:
        assert self.restart_id is not None
        await self.api._scale(await self.api._get(f"services/{self.restart_id}"), replicas, force=force)

    async def _scale_down(self) -> None:
        """Scale to 0 and wait until the task is gone (its container stopped)."""
        assert self.restart_id is not None
        await self._scale(0, force=False)
        deadline = time.monotonic() + GONE_WITHIN
        while any(_state(t) in LIVE for t in await self.api._get("tasks", filters={"service": [self.restart_id]})):
            if time.monotonic() > deadline:
                raise RuntimeError("floor restart service: task still live after its scale to 0")
            await asyncio.sleep(0.05)
        await _wait_containers_gone(self.docker, self.restart_id)

    async def prime_restart(self) -> None:
        body = await self.body(f"lpbench-{self.bench_id}-r")
        t0 = time.perf_counter()
        self.restart_id = str((await self.api._post("services/create", body))["ID"])
        await self._timed(t0, self.restart_id, set())
        await self._scale_down()

    async def restart(self) -> dict[str, float]:
        assert self.restart_id is not None
        service = await self.api._get(f"services/{self.restart_id}")
        old = {t["ID"] for t in await self.api._get("tasks", filters={"service": [self.restart_id]})}
        t0 = time.perf_counter()
        await self.api._scale(service, 1, force=True)
        result = await self._timed(t0, self.restart_id, old)
        await self._scale_down()
        return result

    def host_config(self) -> dict[str, Any]:
        """What the floor and the proxy run: the task template's resources and restart policy."""
        task = self.api.service_spec("floor", self.spec, "x")["TaskTemplate"]
        return {"Resources": task["Resources"], "RestartPolicy": task["RestartPolicy"],
                "EndpointSpec": self.api.service_spec("floor", self.spec, "x").get("EndpointSpec")}

    async def close(self) -> None:
        await self.session.close()
        await self.docker.close()
        await self.api.close()


# ---------------------------------------------------------------------------- proxy


class SwarmProxy(ProxyUnderTest):
    """The proxy with backend `swarm` and the registry's image; a fresh key's service is removed after it."""

    def __init__(self, bench_id: str, interval_ms: float, sleep_after: float, logdir: str) -> None:
        super().__init__("swarm", bench_id, interval_ms, sleep_after, logdir)
        self.config["containers"]["svc"]["image"] = IMAGE  # type: ignore[index]

    async def _remove_key(self, key: str) -> None:
        assert self.docker is not None
        for service_id in await _services(self.docker, LABEL_PROXY_ID, self.proxy_id):
            service = await self.docker.services.inspect(service_id)
            if ((service.get("Spec") or {}).get("Labels") or {}).get(LABEL_KEY) == key:
                await _remove_service(self.docker, service_id)

    async def prime_restart(self) -> None:
        await self._get(self.restart_key)
        await self.wait_stopped(self.restart_key)

    async def restart(self) -> dict[str, float]:
        total = await self._get(self.restart_key)
        await self.wait_stopped(self.restart_key)
        return {"total": total, "key": self.restart_key}  # type: ignore[dict-item]


# ---------------------------------------------------------------------------- clean-up


async def cleanup(bench_id: str) -> int:
    """Remove every service and container carrying the bench id (floor label or proxy id prefix)."""
    docker = aiodocker.Docker(url=cs._socket("swarm"))
    removed = 0
    try:
        ids = await _services(docker, cs.FLOOR_LABEL, bench_id)
        ids += await _services(docker, LABEL_PROXY_ID, bench_id, prefix=True)
        for service_id in ids:
            with contextlib.suppress(aiodocker.DockerError):
                await docker.services.delete(service_id)
                removed += 1
        for service_id in ids:
            with contextlib.suppress(aiodocker.DockerError, RuntimeError):
                await _wait_containers_gone(docker, service_id, within=15)
    finally:
        await docker.close()
    return removed + await cs.cleanup("docker", bench_id)  # the tasks' containers, by the same labels


# ---------------------------------------------------------------------------- one run


async def run_runtime(args: argparse.Namespace, bench_id: str, logdir: str) -> dict[str, Any]:
    """bench.cold_start's run_runtime for swarm: same alternation, same result shape."""
    floor = SwarmFloor(bench_id, args.poll_ms / 1000.0)
    proxies = [SwarmProxy(bench_id, ms, args.sleep_after, logdir) for ms in args.intervals]
    paths = ["create", "restart"]
    extra: dict[str, Any] = {}
    try:
        await open_all(proxies)
        # Warm-up, discarded: sessions, the manager's and the registry's caches, the proxies' sessions.
        await floor.create()
        await floor.prime_restart()
        await floor.restart()
        for p in proxies:
            await p.create()
            await p.prime_restart()
            await p.restart()
        floor.pins.clear()
        samples = await alternate("swarm", floor, proxies, paths, args.cycles)
        extra["floor pin (registry digest lookup, before the clock) p50 ms"] = round(
            1000 * statistics.median(floor.pins), 1) if floor.pins else None
        if not args.no_diagnose:
            extra["paired"] = await paired(proxies, paths, floor.poll, args.cycles)
        extra["task_template"] = floor.host_config()
    finally:
        await close_all(floor, proxies)
        extra["removed"] = await cleanup(bench_id)
    return {"samples": samples, "extra": extra, "paths": paths,
            "proxies": [f"proxy@{p.label}" for p in proxies]}
