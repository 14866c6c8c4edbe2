"""Docker backend: dockerd through its API socket (aiodocker).

All lifecycle logic is in _engine, pause/remove/exec in _engine_ops, the CPU boost in _engine_boost."""

from __future__ import annotations

import os

from backends._engine_boost import EngineBoost

DEFAULT_SOCKET = "unix:///var/run/docker.sock"


def default_docker_socket() -> str:
    """`DOCKER_HOST` if set, else the standard socket."""
    return os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET


class DockerBackend(EngineBoost):
    name = "docker"
    default_socket = DEFAULT_SOCKET
    daemon_label = "docker daemon"

    def _default_socket(self) -> str:
        return default_docker_socket()
