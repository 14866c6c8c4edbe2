"""A real etcd (one or three members on free 127.0.0.1 ports, in a temp dir) and proxy replicas joined to it.

Shared by tests/engines/test_cluster_etcd.py and bench/failover.py. etcd comes from Debian's etcd-server
(.ci/tools.sh installs it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from typing import Any

import aiodocker

from backends.base import LABEL_PROXY_ID
from bench.lib.common import (SEED_ENDPOINTS, Server, free_port, http_text, metric_sum, metrics_samples, module,
                           write_config)


def etcd_binary() -> str | None:
    return shutil.which("etcd")


class Etcd:
    """`members` etcd processes forming one cluster; `endpoints` are their client URLs."""

    def __init__(self, members: int = 1) -> None:
        binary = etcd_binary()
        if binary is None:
            raise RuntimeError("etcd is not installed (bash .ci/tools.sh)")
        self.dir = tempfile.mkdtemp(prefix="lazy-proxy-etcd-")
        ports = [(free_port(), free_port()) for _ in range(members)]
        self.endpoints = [f"http://127.0.0.1:{client}" for client, _ in ports]
        initial = ",".join(f"m{i}=http://127.0.0.1:{peer}" for i, (_, peer) in enumerate(ports))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.argvs: list[list[str]] = []
        for i, (_, peer) in enumerate(ports):
            argv = [binary, "--name", f"m{i}", "--data-dir", os.path.join(self.dir, f"m{i}"),
                    "--listen-client-urls", self.endpoints[i], "--advertise-client-urls", self.endpoints[i],
                    "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                    "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                    "--initial-cluster", initial, "--initial-cluster-state", "new",
                    "--initial-cluster-token", os.path.basename(self.dir)]
            self.argvs.append(argv)
            self.procs.append(self._launch(i))
        self.wait_healthy()

    def _launch(self, index: int) -> subprocess.Popen[bytes]:
        log = open(os.path.join(self.dir, f"m{index}.log"), "ab")
        return subprocess.Popen(self.argvs[index], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def restart(self, index: int) -> None:
        """Start a killed member again on its data dir (it rejoins with what it had)."""
        self.procs[index] = self._launch(index)
        self.wait_healthy()

    def wait_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        for endpoint, proc in zip(self.endpoints, self.procs):
            while proc.poll() is None:
                with contextlib.suppress(OSError):
                    with urllib.request.urlopen(endpoint + "/health", timeout=1) as resp:
                        if b'"true"' in resp.read():
                            break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"etcd at {endpoint} not healthy; see {self.dir}")
                time.sleep(0.1)

    def kill(self, index: int, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.procs[index].pid, sig)
        self.procs[index].wait(timeout=10)

    def stop(self) -> None:
        for i, proc in enumerate(self.procs):
            if proc.poll() is None:
                self.kill(i)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Etcd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def replica_config(base: dict[str, Any], endpoints: list[str], port: int, lease_ttl: float = 2.0) -> dict[str, Any]:
    """`base` joined to the etcd cluster as the replica listening on `port`."""
    admin = {**SEED_ENDPOINTS, "on_proxy_port": [*SEED_ENDPOINTS["on_proxy_port"], "ready"]}
    return {**base, "admin": admin, "cluster": {"store": "etcd", "endpoints": endpoints, "advertise": f"http://127.0.0.1:{port}",
                                "replica_id": f"r{port}", "lease_ttl": f"{lease_ttl}s"}}


def replica(base: dict[str, Any], endpoints: list[str], port: int, lease_ttl: float = 2.0,
            log: str | None = None) -> Server:
    """A real `python -m proxy` replica (its own endpoints on the proxied port)."""
    path = write_config(replica_config(base, endpoints, port, lease_ttl))
    try:
        return Server(module("proxy", "--config", path, "--port", str(port)), f"http://127.0.0.1:{port}/health",
                      log=log)
    finally:
        os.unlink(path)


class Replicas:
    """`count` replicas of `base` on one etcd, each logging to `logdir`."""

    def __init__(self, base: dict[str, Any], endpoints: list[str], count: int, lease_ttl: float,
                 logdir: str, endpoints_of: dict[int, list[str]] | None = None,
                 base_of: dict[int, dict[str, Any]] | None = None) -> None:
        """`endpoints_of`: other etcd endpoints for some replicas, by index (a relay a test can cut); `base_of`:
        another config for some replicas, by index (replicas in the middle of a config change)."""
        self.ports = [free_port() for _ in range(count)]
        self.servers: list[Server] = []
        try:
            for i, port in enumerate(self.ports):
                self.servers.append(replica((base_of or {}).get(i, base), (endpoints_of or {}).get(i, endpoints),
                                            port, lease_ttl, log=os.path.join(logdir, f"r{port}.log")))
            wait_members(self.ports, timeout=5 + 2 * lease_ttl)
        except BaseException:
            self.stop()
            raise

    def owner_of(self, key: str) -> int:
        """The index of the live replica whose instance of `key` runs."""
        found = [i for i, port in enumerate(self.ports) if self.servers[i].proc.poll() is None
                 and key in running_keys(port)]
        if len(found) != 1:
            raise AssertionError(f"{key} runs on replicas {found}")
        return found[0]

    def kill(self, index: int, sig: int = signal.SIGKILL) -> None:
        """SIGKILL: no drain, no lease revoke (its keys move when the lease expires); waits for the exit.
        SIGTERM: the replica drains and hands over (or stops) its keys; `exited` waits for that."""
        os.killpg(self.servers[index].pid, sig)
        if sig == signal.SIGKILL:
            self.servers[index].proc.wait(timeout=10)

    async def exited(self, index: int, timeout: float = 60.0) -> int:
        """The replica's exit code, waited for without blocking the event loop."""
        return await asyncio.to_thread(self.servers[index].proc.wait, timeout)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def wait_members(ports: list[int], timeout: float) -> None:
    """Until every replica has joined (holds its lease) and sees all of them as members (its /health): a replica
    answering /health may still have an older member list, refreshed every lease_ttl/3."""
    want = sorted(f"r{port}" for port in ports)
    deadline = time.monotonic() + timeout
    for port in ports:
        while True:
            with contextlib.suppress(OSError, ValueError):
                cluster = json.loads(http_text(f"http://127.0.0.1:{port}/health")).get("cluster", {})
                if cluster.get("joined") and sorted(cluster.get("members", ())) == want:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"replica r{port} did not see all of {want} within {timeout}s")
            time.sleep(0.05)


def running_keys(port: int) -> set[str]:
    status = json.loads(http_text(f"http://127.0.0.1:{port}/container-status"))
    return {entry["key"] for entry in status["keys"] if entry["state"] == "running"}


def starts(ports: list[int], metric: str = "proxy_container_starts_total") -> float:
    """Summed over the replicas' /metrics (starts_total counts adoptions too; start_duration_seconds_count not)."""
    return sum(metric_sum(metrics_samples(http_text(f"http://127.0.0.1:{p}/metrics")), metric) for p in ports)


async def running_containers(socket: str, proxy_id: str) -> list[str]:
    """Ids of the running containers labelled with `proxy_id`."""
    docker = aiodocker.Docker(url=socket)
    try:
        listed = await docker.containers.list(filters=json.dumps({"label": [f"{LABEL_PROXY_ID}={proxy_id}"]}))
        return sorted(c.id for c in listed)
    finally:
        await docker.close()


async def remove_containers(socket: str, proxy_id: str) -> None:
    """Remove every container labelled with `proxy_id`, running or not (the proxy only stops them)."""
    docker = aiodocker.Docker(url=socket)
    try:
        for container in await docker.containers.list(
                all=True, filters=json.dumps({"label": [f"{LABEL_PROXY_ID}={proxy_id}"]})):
            await container.delete(force=True)
    finally:
        await docker.close()
