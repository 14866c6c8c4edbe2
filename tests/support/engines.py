"""Real-daemon plumbing for the proxy-level tests: image, backend, clean-up (no mocks).

A daemon that does not answer skips the test locally and fails it under CI=true.
"""

from __future__ import annotations

import asyncio
import json
import os

import aiodocker
import aiohttp
import pytest

from backends._engine import delete_container
from backends.base import LABEL_PROXY_ID, Backend
from backends.docker import DockerBackend, default_docker_socket
from backends.image.build import DEFAULT_TAG, ensure_image as build_image, push_image
from backends.podman import DEFAULT_SOCKET as PODMAN_SOCKET, PodmanBackend
from backends.swarm import SwarmBackend

# The registry a swarm starts its images from (.ci/daemons.sh runs Debian's docker-registry there).
REGISTRY = os.environ.get("LAZY_PROXY_REGISTRY", "127.0.0.1:5000")

_built: set[str] = set()


def socket_for(kind: str) -> str:
    return os.environ.get("PODMAN_HOST") or PODMAN_SOCKET if kind == "podman" else default_docker_socket()


async def _reachable(kind: str) -> str | None:
    docker = aiodocker.Docker(url=socket_for(kind), timeout=aiohttp.ClientTimeout(total=5))
    try:
        await docker.version()
        if kind == "swarm":
            state = ((await docker.system.info()).get("Swarm") or {}).get("LocalNodeState")
            if state != "active":
                return f"swarm mode is {state!r} (docker swarm init --advertise-addr 127.0.0.1)"
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means "not usable here"
        return f"{type(exc).__name__}: {exc}"
    finally:
        await docker.close()


async def ensure_image(kind: str) -> str:
    """The model-service image tag, built once per test session (cached by content hash); for swarm the name
    it has in the local registry, pushed there once per session."""
    if kind not in _built:
        error = await _reachable(kind)
        if error is not None:
            message = f"{kind} daemon not reachable at {socket_for(kind)} ({error}); run: bash .ci/daemons.sh up"
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(message)
            pytest.skip(message)
        if kind == "swarm":
            await push_image(REGISTRY, socket=socket_for(kind), verbose=False)
        else:
            await build_image(kind, socket=socket_for(kind))
        _built.add(kind)
    return f"{REGISTRY}/{DEFAULT_TAG}" if kind == "swarm" else DEFAULT_TAG


def make_backend(kind: str, proxy_id: str) -> Backend:
    cls = {"docker": DockerBackend, "podman": PodmanBackend, "swarm": SwarmBackend}[kind]
    return cls(socket=socket_for(kind), proxy_id=proxy_id)


async def remove_all(backend: Backend) -> None:
    """Remove every service and container carrying this backend's proxy id (the proxy only stops them)."""
    socket = backend.socket  # type: ignore[attr-defined]  # docker/podman/swarm backends only
    docker = aiodocker.Docker(url=socket)
    try:
        filters = json.dumps({"label": [f"{LABEL_PROXY_ID}={backend.proxy_id}"]})
        if isinstance(backend, SwarmBackend):
            for service in await docker.services.list(filters={"label": f"{LABEL_PROXY_ID}={backend.proxy_id}"}):
                await docker.services.delete(service["ID"])
        for container in await docker.containers.list(all=True, filters=filters):
            await delete_container(docker, container.id)
    finally:
        await docker.close()


async def remove_network(docker: aiodocker.Docker, name: str) -> None:
    """Remove a test's network once what ran on it is gone (a service's tasks leave it a moment later)."""
    for _ in range(50):
        try:
            await (await docker.networks.get(name)).delete()
            return
        except aiodocker.DockerError as e:
            if e.status == 404:
                return
            await asyncio.sleep(0.2)
