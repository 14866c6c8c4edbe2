"""Runtimes behind one `Backend` protocol: stub (in-process), process (child processes), docker, podman, swarm."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from backends.base import Backend

if TYPE_CHECKING:  # mypy proves every backend class satisfies the protocol; no runtime import (stays lazy)
    from backends.docker import DockerBackend
    from backends.podman import PodmanBackend
    from backends.process import ProcessBackend
    from backends.stub import StubBackend
    from backends.swarm import SwarmBackend

    _stub: type[Backend] = StubBackend
    _docker: type[Backend] = DockerBackend
    _podman: type[Backend] = PodmanBackend
    _process: type[Backend] = ProcessBackend
    _swarm: type[Backend] = SwarmBackend


def create_backend(kind: str, *, proxy_id: str = "default", **options: Any) -> Backend:
    """The backend named in config.yaml, built from its own config section (`backend.<kind>`).

    `options` are that section's fields (`socket`, `reuse_stopped`, ...), passed to the backend's
    constructor as is, so a new backend adds a section and a branch here, not shared fields.
    Imports lazily so the stub needs no Docker client.
    """
    if kind == "stub":
        from backends.stub import StubBackend

        return StubBackend(**options)
    if kind == "process":
        from backends.process import ProcessBackend

        return ProcessBackend(**options)
    if kind == "docker":
        from backends.docker import DockerBackend

        return DockerBackend(proxy_id=proxy_id, **options)
    if kind == "podman":
        from backends.podman import PodmanBackend

        return PodmanBackend(proxy_id=proxy_id, **options)
    if kind == "swarm":
        from backends.swarm import SwarmBackend

        return SwarmBackend(proxy_id=proxy_id, **options)
    raise ValueError(f"unknown backend {kind!r}")
