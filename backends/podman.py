"""Podman backend: the same engine logic over Podman's Docker-compatible API socket.

Start the socket with `podman system service --time=0 unix:///run/podman/podman.sock`
(see .ci/daemons.sh). Compat-API differences handled here are listed on `PodmanBackend`.
"""

from __future__ import annotations

import os

from backends._engine_ops import EngineOps

DEFAULT_SOCKET = "unix:///run/podman/podman.sock"


class PodmanBackend(EngineOps):
    name = "podman"
    default_socket = DEFAULT_SOCKET
    daemon_label = "podman service"

    def _default_socket(self) -> str:
        return os.environ.get("PODMAN_HOST") or DEFAULT_SOCKET
