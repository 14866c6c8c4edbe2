"""Podman backend: the same engine logic over Podman's Docker-compatible API socket.

Start the socket with `podman system service --time=0 unix:///run/podman/podman.sock`
(see .ci/daemons.sh). Compat-API differences handled here are listed on `PodmanBackend`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from backends._engine_boost import EngineBoost

DEFAULT_SOCKET = "unix:///run/podman/podman.sock"
LIBPOD = "v4.0.0/libpod"  # podman's own API, on the same socket
CPU_PERIOD_US = 100_000


def podman_socket(environ: Mapping[str, str], euid: int) -> str:
    """Where podman's API is, as podman itself says: `$PODMAN_HOST`, `$CONTAINER_HOST` (podman-remote's; a
    unix socket only), else root's socket or another user's rootless one (`systemctl --user start
    podman.socket`), which the proxy otherwise never found."""
    remote = environ.get("CONTAINER_HOST", "")
    if found := environ.get("PODMAN_HOST") or (remote if remote.startswith("unix://") else ""):
        return found
    if euid == 0:
        return DEFAULT_SOCKET
    return f"unix://{environ.get('XDG_RUNTIME_DIR') or f'/run/user/{euid}'}/podman/podman.sock"


class PodmanBackend(EngineBoost):
    """Differences from dockerd: the CPU limit is changed through libpod, on a running container only; images
    are pulled through libpod (backends/_pull.py)."""

    name = "podman"
    default_socket = DEFAULT_SOCKET
    daemon_label = "podman service"
    boost_after_start = True  # see backends/_engine_boost.py
    oom_reported = False  # OOMKilled stayed false on an OOM kill (podman 4.3.1, runc, cgroup v1)
    libpod_pull = True  # its compat pull ignores tlsVerify, so a loopback (plain HTTP) registry fails there

    def _default_socket(self) -> str:
        return podman_socket(os.environ, os.geteuid())

    async def _update_cpus(self, cid: str, nano_cpus: int) -> None:
        resources = {"cpu": {"quota": nano_cpus // 10_000, "period": CPU_PERIOD_US}}
        await (await self._client())._query_json(f"{LIBPOD}/containers/{cid}/update", "POST", data=resources,
                                                 versioned_api=False)
