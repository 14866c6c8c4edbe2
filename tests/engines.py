"""Real-daemon plumbing for the proxy-level tests: image, backend, clean-up (no mocks).

A daemon that does not answer skips the test locally and fails it under CI=true.
"""

from __future__ import annotations

import json
import os

import aiodocker
import aiohttp
import pytest

from backends.base import LABEL_PROXY_ID, Backend
from backends.docker import DockerBackend, default_docker_socket
from backends.image import DEFAULT_TAG, ensure_image as build_image
from backends.podman import DEFAULT_SOCKET as PODMAN_SOCKET, PodmanBackend

_built: set[str] = set()


def socket_for(kind: str) -> str:
    return default_docker_socket() if kind == "docker" else os.environ.get("PODMAN_HOST") or PODMAN_SOCKET


async def _reachable(kind: str) -> str | None:
    docker = aiodocker.Docker(url=socket_for(kind), timeout=aiohttp.ClientTimeout(total=5))
    try:
        await docker.version()
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means "not usable here"
        return f"{type(exc).__name__}: {exc}"
    finally:
        await docker.close()


async def ensure_image(kind: str) -> str:
    """The model-service image tag, built once per test session (cached by content hash)."""
    if kind not in _built:
        error = await _reachable(kind)
        if error is not None:
            message = f"{kind} daemon not reachable at {socket_for(kind)} ({error}); run: bash .ci/daemons.sh up"
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(message)
            pytest.skip(message)
        await build_image(kind, socket=socket_for(kind))
        _built.add(kind)
    return DEFAULT_TAG


def make_backend(kind: str, proxy_id: str) -> Backend:
    cls = DockerBackend if kind == "docker" else PodmanBackend
    return cls(socket=socket_for(kind), proxy_id=proxy_id)


async def remove_all(backend: Backend) -> None:
    """Remove every container carrying this backend's proxy id (the proxy only stops them)."""
    socket = backend.socket  # type: ignore[attr-defined]  # docker/podman backends only
    docker = aiodocker.Docker(url=socket)
    try:
        filters = json.dumps({"label": [f"{LABEL_PROXY_ID}={backend.proxy_id}"]})
        for container in await docker.containers.list(all=True, filters=filters):
            await container.delete(force=True)
    finally:
        await docker.close()
