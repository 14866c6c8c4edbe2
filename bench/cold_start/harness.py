"""Cold start through the proxy vs the raw runtime floor, on docker and podman (stub as a reference).

    python -m bench.cold_start [--cycles 10] [--quick | --smoke] [--runtime docker podman stub]
                               [--readiness tcp http flat] [--intervals 5] [--poll-ms 5] [--sleep-after 0.5]
    python -m bench.cold_start --boost [--cycles 5] [--runtime docker podman] [--types dev basic standard]
    python -m bench.cold_start --pause [--cycles 10] [--runtime docker podman]
    python -m bench.cold_start --runtime swarm [docker]   (one service per key: bench/cold_start/swarm.py)

`--boost` times the startup CPU boost instead: with and without it, per instance type (see
bench/cold_start/boost.py). `--pause` times a wake from pause next to restart and create, and the
runtime's own unpause as its floor (bench/cold_start/pause.py).

Two paths, each against its own floor, measured in the same run with floor and proxy cycles alternated:

- **create**: no container exists. Floor = aiodocker `create` + `start` + one inspect (the published
  port is ephemeral) + poll `GET /v2/health/ready` every `--poll-ms` until 200, timed from `create`.
  Proxy = client `GET /k/<fresh key>/api/health` until its 200 (the proxy looks the name up, creates,
  starts, inspects, polls readiness every `readiness.interval`, forwards).
- **restart**: the container exists, stopped (the backend's default `reuse_stopped=True`). Floor =
  `start` + inspect + poll until 200. Proxy = the same fixed key after the manager stopped it on
  `sleep_after` (the bench waits until `/container-status` says `stopped`).

Both floor and proxy run the instance with the HostConfig the backend builds (its create config: Init,
127.0.0.1 ephemeral port, limits) with a custom instance type of 1 CPU / 512 MiB, so that CPU
throttling (the `dev` type has 1/16 vCPU) is not what is measured. The proxy runs as a subprocess
(`python -m bench.lib.launcher`, the same as `python -m proxy`, uvloop if installed); the client runs
here. One proxy per readiness kind in `--readiness` and interval in `--intervals` runs side by side,
interleaved: `tcp` (the default kind: the port accepts), `http` (GET /v2/health/ready answers 2xx), `flat`
(http polled every interval without backoff, as before readiness backed off); `ratio` lines compare their
medians. The proxy's own log gives its server-side start duration (starting -> running), which splits the
difference into "start + readiness" and "the rest".

Every container carries `proxy.instance=<bench id>` (proxy ones) or `lazy-proxy.bench=<bench id>`
(floor ones, named `lpbench-<bench id>-...`) and is removed at the end, also on Ctrl-C or an error.

Not a test: it prints medians and differences measured in the same run, and one SUMMARY JSON line.
`--smoke` (CI: does it still run?): 2 cycles, a tcp and an http proxy at 5 ms, sleep_after 0.2 s,
no diagnosis; use it with `--runtime stub` where no daemon runs.
"""


from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import time
from typing import Any, AsyncIterator, Awaitable, Callable

import aiodocker
import aiohttp

from backends.base import ContainerSpec, Resources

IMAGE = "lazy-proxy/model-service:latest"
READY_PATH = "/v2/health/ready"
MEMORY = 512 * 2**20
CPUS = 1.0
GOAL_MS = 25.0
FLOOR_LABEL = "lazy-proxy.bench"


def _socket(kind: str) -> str:
    from backends.docker import default_docker_socket
    from backends.podman import DEFAULT_SOCKET as PODMAN_SOCKET

    return default_docker_socket() if kind in ("docker", "swarm") else os.environ.get("PODMAN_HOST") or PODMAN_SOCKET


def _engine_backend(kind: str, proxy_id: str) -> Any:
    from backends.docker import DockerBackend
    from backends.podman import PodmanBackend

    cls = DockerBackend if kind == "docker" else PodmanBackend
    return cls(socket=_socket(kind), proxy_id=proxy_id)


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def _create_config(backend: Any, key: str, spec: ContainerSpec) -> dict[str, Any]:
    """The container config the backend would create for (key, spec)."""
    return dict(backend.create_config(key, spec))


def _listed(container: Any, field: str) -> Any:
    """A field of a container as `containers.list` returned it (aiodocker's public item access)."""
    try:
        return container[field]
    except KeyError:
        return None


# ---------------------------------------------------------------------------- readiness poll (floor)


async def poll_ready(session: aiohttp.ClientSession, url: str, interval: float, deadline: float) -> None:
    """GET url every `interval` until a 200 (connection errors are "not yet")."""
    timeout = aiohttp.ClientTimeout(total=2)
    while True:
        try:
            async with session.get(url, timeout=timeout, allow_redirects=False) as resp:
                await resp.read()
                if resp.status == 200:
                    return
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            pass
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{url} not ready")
        await asyncio.sleep(interval)


def _host_port(info: dict[str, Any], port: int = 8080) -> int | None:
    for b in ((info.get("NetworkSettings") or {}).get("Ports") or {}).get(f"{port}/tcp") or []:
        hp = b.get("HostPort")
        if hp and str(hp).isdigit() and int(hp) > 0:
            return int(hp)
    return None


# ---------------------------------------------------------------------------- floors


class EngineFloor:
    """aiodocker directly, no proxy; the container config is the backend's own `_create_config`."""

    def __init__(self, kind: str, bench_id: str, poll: float) -> None:
        self.kind = kind
        self.bench_id = bench_id
        self.poll = poll
        self.spec = ContainerSpec(name="bench", image=IMAGE, resources=Resources(MEMORY, CPUS))
        self.docker = aiodocker.Docker(url=_socket(kind))
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        self.n = 0
        self.restart_id: str | None = None

    def config(self) -> dict[str, Any]:
        config = _create_config(_engine_backend(self.kind, f"{self.bench_id}-floor"), "floor", self.spec)
        # Not proxy.managed: no proxy may adopt or touch it. Our own label, for clean-up.
        config["Labels"] = {FLOOR_LABEL: self.bench_id}
        return config

    def host_config(self) -> dict[str, Any]:
        return self.config()["HostConfig"]

    async def _started_port(self, cid: str) -> int:
        for _ in range(200):
            info = await self.docker.containers.container(cid).show()
            port = _host_port(info)
            if port is not None:
                return port
            await asyncio.sleep(0.005)
        raise RuntimeError(f"floor container {cid[:12]} has no published port")

    async def create(self) -> dict[str, float]:
        self.n += 1
        name = f"lpbench-{self.bench_id}-c{self.n}"
        t0 = time.perf_counter()
        container = await self.docker.containers.create(self.config(), name=name)
        await container.start()
        port = await self._started_port(container.id)
        t_started = time.perf_counter()
        await poll_ready(self.session, f"http://127.0.0.1:{port}{READY_PATH}", self.poll, t0 + 60)
        t_ready = time.perf_counter()
        await container.delete(force=True, v=True)
        return {"total": t_ready - t0, "started": t_started - t0}

    async def prime_restart(self) -> None:
        container = await self.docker.containers.create(self.config(), name=f"lpbench-{self.bench_id}-r")
        self.restart_id = container.id
        await container.start()
        await poll_ready(self.session, f"http://127.0.0.1:{await self._started_port(container.id)}{READY_PATH}",
                         self.poll, time.perf_counter() + 60)
        await container.stop(t=5)

    async def restart(self) -> dict[str, float]:
        assert self.restart_id is not None
        container = self.docker.containers.container(self.restart_id)
        t0 = time.perf_counter()
        await container.start()
        port = await self._started_port(self.restart_id)
        t_started = time.perf_counter()
        await poll_ready(self.session, f"http://127.0.0.1:{port}{READY_PATH}", self.poll, t0 + 60)
        t_ready = time.perf_counter()
        await container.stop(t=5)  # the backend's STOP_TIMEOUT_S
        return {"total": t_ready - t0, "started": t_started - t0}

    async def close(self) -> None:
        await self.session.close()
        await self.docker.close()


class StubFloor:
    """The stub backend's start (an in-process model service on an ephemeral port) in this process."""

    def __init__(self, poll: float) -> None:
        from backends.stub import StubBackend

        self.backend = StubBackend()
        self.poll = poll
        self.spec = ContainerSpec(name="bench", image="model_service")
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        self.n = 0

    async def create(self) -> dict[str, float]:
        self.n += 1
        t0 = time.perf_counter()
        instance = await self.backend.start(f"floor{self.n}", self.spec)
        t_started = time.perf_counter()
        await poll_ready(self.session, instance.url + READY_PATH, self.poll, t0 + 60)
        t_ready = time.perf_counter()
        await self.backend.stop(instance)
        return {"total": t_ready - t0, "started": t_started - t0}

    async def close(self) -> None:
        await self.session.close()
        await self.backend.close()


# ---------------------------------------------------------------------------- clean-up


async def remove_labelled(kind: str, label: str, value: str, prefix: bool = False) -> int:
    docker = aiodocker.Docker(url=_socket(kind))
    removed = 0
    try:
        filters = json.dumps({"label": [label]})
        for c in await docker.containers.list(all=True, filters=filters):
            labels = _listed(c, "Labels") or {}
            v = labels.get(label, "")
            if v == value or (prefix and v.startswith(value)):
                with contextlib.suppress(aiodocker.DockerError):
                    await c.delete(force=True, v=True)
                    removed += 1
        # Floor containers also by name, in case a create succeeded but labels were not listed yet.
        for c in await docker.containers.list(all=True, filters=json.dumps({"name": [f"lpbench-{value}"]})):
            with contextlib.suppress(aiodocker.DockerError):
                await c.delete(force=True, v=True)
                removed += 1
    finally:
        await docker.close()
    return removed


async def cleanup(kind: str, bench_id: str) -> int:
    if kind == "stub":
        return 0
    n = await remove_labelled(kind, "proxy.instance", bench_id, prefix=True)
    n += await remove_labelled(kind, FLOOR_LABEL, bench_id)
    return n


# ---------------------------------------------------------------------------- main


def _med(values: list[float]) -> float:
    return _ms(statistics.median(values)) if values else float("nan")


def _diff_ci(floor: list[float], proxy: list[float], n: int = 4000) -> tuple[float, float]:
    """95% bootstrap interval (ms) of median(proxy) - median(floor): how much the run's noise allows."""
    import random

    rng = random.Random(1)
    diffs = sorted(statistics.median(rng.choices(proxy, k=len(proxy)))
                   - statistics.median(rng.choices(floor, k=len(floor))) for _ in range(n))
    return _ms(diffs[int(0.025 * n)]), _ms(diffs[int(0.975 * n) - 1])


async def each_runtime(kinds: list[str], run: Callable[[str], Awaitable[Any]],
                       results: list[dict[str, Any]]) -> AsyncIterator[tuple[str, Any]]:
    """Each runtime's result in turn. One that fails is reported (printed, and an `error` row in `results`)
    and the next one runs: the cold_start modes (plain, --boost, --pause) all go through here."""
    for kind in kinds:
        print(f"\n== {kind}", flush=True)
        try:
            res = await run(kind)
        except Exception as exc:  # noqa: BLE001 - report and go on with the next runtime
            print(f"{kind}: FAILED {type(exc).__name__}: {exc}", flush=True)
            results.append({"runtime": kind, "error": f"{type(exc).__name__}: {exc}"})
            continue
        yield kind, res


RATIOS = (("tcp", "http"), ("http", "flat"), ("tcp", "flat"))  # readiness modes compared, when both ran


def readiness_ratios(results: list[dict[str, Any]]) -> list[str]:
    """One line per runtime, path and interval: the proxy's median cold start of one readiness mode over
    another's, measured in the same interleaved run (`tcp/http = 0.98`: TCP readiness 2 % faster)."""
    by: dict[tuple[str, str, float], dict[str, float]] = {}
    for r in results:
        if "readiness" in r:
            by.setdefault((r["runtime"], r["path"], r["readiness_interval_ms"]), {})[r["readiness"]] = r["proxy_p50_ms"]
    lines = []
    for (kind, path, interval), medians in by.items():
        for a, b in RATIOS:
            if a in medians and b in medians and medians[b] > 0:
                lines.append(f"ratio {kind} {path} @{interval:g}ms: {a}/{b} = {medians[a] / medians[b]:.3f} "
                             f"({medians[a]:.1f} / {medians[b]:.1f} ms, medians of the same run)")
    return lines
