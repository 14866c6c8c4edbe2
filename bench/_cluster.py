"""A real etcd (one or three members on free 127.0.0.1 ports, in a temp dir) and proxy replicas joined to it.

Shared by tests/test_cluster_etcd.py and bench/failover.py. etcd comes from Debian's etcd-server (.ci/etcd.sh).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from typing import Any

from bench._common import SEED_ENDPOINTS, Server, free_port, module, write_config


def etcd_binary() -> str | None:
    return shutil.which("etcd")


class Etcd:
    """`members` etcd processes forming one cluster; `endpoints` are their client URLs."""

    def __init__(self, members: int = 1) -> None:
        binary = etcd_binary()
        if binary is None:
            raise RuntimeError("etcd is not installed (bash .ci/etcd.sh)")
        self.dir = tempfile.mkdtemp(prefix="lazy-proxy-etcd-")
        ports = [(free_port(), free_port()) for _ in range(members)]
        self.endpoints = [f"http://127.0.0.1:{client}" for client, _ in ports]
        initial = ",".join(f"m{i}=http://127.0.0.1:{peer}" for i, (_, peer) in enumerate(ports))
        self.procs: list[subprocess.Popen[bytes]] = []
        for i, (_, peer) in enumerate(ports):
            argv = [binary, "--name", f"m{i}", "--data-dir", os.path.join(self.dir, f"m{i}"),
                    "--listen-client-urls", self.endpoints[i], "--advertise-client-urls", self.endpoints[i],
                    "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                    "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                    "--initial-cluster", initial, "--initial-cluster-state", "new",
                    "--initial-cluster-token", os.path.basename(self.dir)]
            log = open(os.path.join(self.dir, f"m{i}.log"), "wb")
            self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
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
    return {**base, "admin": SEED_ENDPOINTS, "cluster": {"store": "etcd", "endpoints": endpoints, "advertise": f"http://127.0.0.1:{port}",
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
