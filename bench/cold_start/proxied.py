"""The proxy under test (one subprocess per readiness kind and interval) and the in-process breakdown
of backend.start, for the cold-start benchmark (bench/cold_start/harness.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import time
from typing import Any

import aiodocker
import aiohttp

from backends.base import ContainerSpec, Resources
from bench.lib import common
from bench.cold_start.harness import (CPUS, IMAGE, MEMORY, READY_PATH, _engine_backend, _host_port, _listed, _socket,
                                      poll_ready, remove_labelled)


# ---------------------------------------------------------------------------- proxy (subprocess)


def readiness_config(mode: str, interval_ms: float) -> dict[str, Any]:
    """`containers.svc.readiness` for a `--readiness` mode: `tcp` (the default kind), `http` (the model's path),
    `flat` (http polled every `interval`, no backoff: the proxy before readiness backed off)."""
    out: dict[str, Any] = {"interval": f"{interval_ms:g}ms", "timeout": "2s"}
    if mode in ("http", "flat"):
        out["path"] = READY_PATH
    if mode == "flat":
        out["max_interval"] = out["interval"]
    return out


class ProxyUnderTest:
    def __init__(self, kind: str, bench_id: str, interval_ms: float, sleep_after: float, logdir: str,
                 readiness: str = "http") -> None:
        self.kind = kind
        self.interval_ms = interval_ms
        self.readiness = readiness
        self.label = f"{readiness}/{interval_ms:g}ms"  # `proxy@<label>` in tables and the summary
        self.proxy_id = f"{bench_id}-{readiness}{interval_ms:g}".replace(".", "_")
        self.port = common.free_port()
        self.log = os.path.join(logdir, f"proxy-{kind}-{readiness}-{interval_ms:g}ms.log")
        svc: dict[str, Any] = {
            "image": IMAGE if kind != "stub" else "model_service",
            "port": 8080,
            "readiness": readiness_config(readiness, interval_ms),
            "sleep_after": f"{sleep_after:g}s",
            "start_timeout": "60s",
            "max_instances": 100,
            "instance_type": {"memory": "512MiB", "cpus": CPUS},
        }
        self.config = {
            "backend": {"type": kind, "proxy_id": self.proxy_id,
                        **({kind: {"socket": _socket(kind)}} if kind != "stub" else {})},
            "logging": {"level": "info"},
            "containers": {"svc": svc},
            "routes": [{"path": "/k/{id}/{tail:.*}", "container": "svc", "key": "{id}", "upstream_path": "/{tail}"}],
        }
        self.server: common.Server | None = None
        self.base = f"http://127.0.0.1:{self.port}"
        self.n = 0
        self.session: aiohttp.ClientSession | None = None
        self.restart_key = "warm"
        self.restart_cid: str | None = None
        self.reused = 0
        self.docker: aiodocker.Docker | None = None

    def start(self) -> None:
        uv = True
        try:
            import uvloop  # noqa: F401
        except ImportError:
            uv = False
        self.server = common.proxy(self.config, self.port, uvloop=uv, log=self.log)

    async def open(self) -> None:
        # A kept-alive client connection to the proxy, as a real client of a long-running proxy has.
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        if self.kind != "stub":
            self.docker = aiodocker.Docker(url=_socket(self.kind))

    async def _get(self, key: str) -> float:
        t0, t1 = await self._get_times(key)
        return t1 - t0

    async def _get_times(self, key: str) -> tuple[float, float]:
        assert self.session is not None
        t0 = time.perf_counter()
        async with self.session.get(f"{self.base}/k/{key}/api/health",
                                    timeout=aiohttp.ClientTimeout(total=90)) as resp:
            body = await resp.read()
            t1 = time.perf_counter()
        if resp.status != 200:
            raise RuntimeError(f"proxy {self.kind}: {resp.status} {body[:200]!r}")
        return t0, t1

    async def _state(self, key: str) -> str | None:
        assert self.session is not None
        async with self.session.get(f"{self.base}/container-status") as resp:
            data = await resp.json()
        for entry in data["keys"]:
            if entry["key"] == key:
                return str(entry["state"])
        return None

    async def wait_stopped(self, key: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while (state := await self._state(key)) != "stopped":
            if time.monotonic() > deadline:
                raise RuntimeError(f"{key} still {state} after {timeout}s")
            await asyncio.sleep(0.05)

    async def _containers(self, key: str) -> list[Any]:
        assert self.docker is not None
        filters = json.dumps({"label": [f"proxy.instance={self.proxy_id}", f"proxy.key={key}"]})
        return await self.docker.containers.list(all=True, filters=filters)

    async def _remove_key(self, key: str) -> None:
        """Keep the host tidy: a fresh key leaves a stopped container (swarm: a service) behind."""
        for c in await self._containers(key):
            with contextlib.suppress(aiodocker.DockerError):
                await c.delete(force=True, v=True)

    async def create(self) -> dict[str, float]:
        self.n += 1
        key = f"c{self.n}"
        total = await self._get(key)
        await self.wait_stopped(key)
        if self.docker is not None:
            await self._remove_key(key)
        return {"total": total, "key": key}  # type: ignore[dict-item]

    async def prime_restart(self) -> None:
        await self._get(self.restart_key)
        await self.wait_stopped(self.restart_key)
        if self.docker is not None:
            ids = [c.id for c in await self._containers(self.restart_key)]
            self.restart_cid = ids[0] if len(ids) == 1 else None

    async def restart(self) -> dict[str, float]:
        total = await self._get(self.restart_key)
        if self.docker is not None:
            ids = [c.id for c in await self._containers(self.restart_key)]
            if ids == [self.restart_cid]:
                self.reused += 1
        await self.wait_stopped(self.restart_key)
        return {"total": total, "key": self.restart_key}  # type: ignore[dict-item]

    async def paired(self, path: str, poll: float) -> float:
        """One cold request while this process watches the same container become ready (polling its
        port every `poll`, like the floor): seconds from "the instance answers 200" to "the proxy's
        client got its 200". A paired number, free of the start-to-start noise. Diagnosis only."""
        assert self.docker is not None and self.session is not None
        if path == "create":
            self.n += 1
            key = f"p{self.n}"
        else:
            key = self.restart_key
        request = asyncio.create_task(self._get_times(key))
        observer = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        try:
            port = None
            deadline = time.perf_counter() + 60
            while port is None:
                for c in await self._containers(key):
                    if _listed(c, "State") == "running":
                        port = _host_port(await c.show())
                if port is None:
                    if time.perf_counter() > deadline or request.done():
                        raise RuntimeError(f"observer never saw {key} running with a port")
                    await asyncio.sleep(poll)
            await poll_ready(observer, f"http://127.0.0.1:{port}{READY_PATH}", poll, deadline)
            t_ready = time.perf_counter()
            _, t1 = await request
        finally:
            await observer.close()
            if not request.done():
                request.cancel()
        await self.wait_stopped(key)
        if path == "create":
            await self._remove_key(key)
        return t1 - t_ready

    def server_start_durations(self) -> dict[str, list[float]]:
        """starting -> running durations from the proxy's JSON log, per key (in order)."""
        out: dict[str, list[float]] = {}
        with contextlib.suppress(OSError), open(self.log) as f:
            for line in f:
                if not line.startswith("{"):
                    continue
                with contextlib.suppress(ValueError):
                    ev = json.loads(line)
                    if ev.get("event") == "state" and ev.get("from") == "starting" and ev.get("to") == "running":
                        out.setdefault(ev["key"], []).append(float(ev["duration"]))
        return out

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
        if self.docker is not None:
            await self.docker.close()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


# ---------------------------------------------------------------------------- diagnosis (in-process backend)


async def diagnose(kind: str, bench_id: str, rounds: int) -> dict[str, float]:
    """Where the backend's `start` spends its time: the real backend class with its container inspect
    calls timed (wrapping the backend object's inspect-JSON method; no code is changed). Median ms per phase."""
    backend = _engine_backend(kind, f"{bench_id}-diag")
    spec = ContainerSpec(name="bench", image=IMAGE, resources=Resources(MEMORY, CPUS))
    shows: list[float] = []
    # `show(ref)` is the one method the backend's start/stop/inspect use for inspect JSON.
    original = backend.show

    async def timed_show(ref: str) -> Any:
        t = time.perf_counter()
        try:
            return await original(ref)
        finally:
            shows.append(time.perf_counter() - t)

    backend.show = timed_show
    res: dict[str, list[float]] = {"create_start": [], "create_shows": [], "create_n_shows": [],
                                   "restart_start": [], "restart_shows": [], "restart_n_shows": [],
                                   "stop": []}
    try:
        for i in range(rounds):
            for path in ("create", "restart"):
                key = f"d{i}" if path == "create" else "dr"
                if path == "restart" and i == 0:  # prime the stopped container
                    inst = await backend.start(key, spec)
                    await backend.stop(inst)
                shows.clear()
                t0 = time.perf_counter()
                inst = await backend.start(key, spec)
                res[f"{path}_start"].append(time.perf_counter() - t0)
                res[f"{path}_shows"].append(sum(shows))
                res[f"{path}_n_shows"].append(len(shows))
                t0 = time.perf_counter()
                await backend.stop(inst)
                res["stop"].append(time.perf_counter() - t0)
    finally:
        await remove_labelled(kind, "proxy.instance", f"{bench_id}-diag")
        await backend.close()
    return {k: (statistics.median(v) * (1 if "n_shows" in k else 1000.0)) for k, v in res.items() if v}

