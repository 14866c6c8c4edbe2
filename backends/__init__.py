"""Runtimes behind one `Backend` protocol: stub (in-process), docker, podman."""

from __future__ import annotations

from backends.base import Backend


def create_backend(kind: str, *, socket: str | None = None, proxy_id: str = "default",
                   reuse_stopped: bool = True) -> Backend:
    """The backend named in config.yaml. Imports lazily so the stub needs no Docker client."""
    if kind == "stub":
        from backends.stub import StubBackend

        return StubBackend()
    if kind == "docker":
        from backends.docker import DockerBackend

        return DockerBackend(socket=socket, proxy_id=proxy_id, reuse_stopped=reuse_stopped)
    if kind == "podman":
        from backends.podman import PodmanBackend

        return PodmanBackend(socket=socket, proxy_id=proxy_id, reuse_stopped=reuse_stopped)
    raise ValueError(f"unknown backend {kind!r}")
