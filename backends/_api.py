"""One Docker-API socket as this proxy uses it: the aiodocker client, the one mapping of its failures to
BackendError, the labels that mark what this proxy owns, and the events after which an owned container may
have left `running`.

Shared by the container engines (backends/_engine.py: dockerd, podman) and the swarm backend
(backends/swarm.py), so a daemon outage reads the same, and ownership means the same, on every one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from typing import Any, AsyncIterator, Mapping

import aiodocker
import aiohttp

from backends.options import EngineOptions
from backends.base import (
    LABEL_CONTAINER,
    LABEL_KEY,
    LABEL_MANAGED,
    LABEL_OWNER,
    LABEL_PORT,
    LABEL_PROXY_ID,
    LABEL_SPEC,
    BackendError,
    BackendUnavailable,
    ContainerSpec,
)

def owner() -> str:
    """The `proxy.owner` label of what this process creates: `<hostname>:<pid>`."""
    return f"{socket.gethostname()}:{os.getpid()}"


def held_elsewhere(labels: Mapping[str, str]) -> bool:
    """Whether the object's `proxy.owner` names another process of this host that is alive: two proxies with one
    proxy id (two deployments sharing a daemon) would adopt and stop each other's instances."""
    host, _, pid = labels.get(LABEL_OWNER, "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


# Events after which an instance may have left `running` (podman's names beside docker's).
WATCHED_EVENTS = ("die", "died", "stop", "kill", "oom", "destroy", "remove", "cleanup")


# What an unreachable socket's error text says, in the words an operator acts on.
_REASONS = (("Permission denied", "permission denied (is this user allowed to use the socket?)"),
            ("No such file or directory", "no such socket"), ("Connection refused", "connection refused"),
            ("Connect call failed", "connection refused"), ("timed out", "timed out"))


def _short_reason(text: str) -> str:
    return next((short for words, short in _REASONS if words in text), text)


class ApiClient:
    """A lazily made aiodocker client on `socket`, dropped after a transport failure so the next call
    reconnects by itself when the daemon is back; and what `proxy_id` owns there."""

    default_socket = "unix:///var/run/docker.sock"
    daemon_label = "docker daemon"

    def __init__(self, options: EngineOptions | None = None, **fields: Any) -> None:
        """`options` (backends/options.py), or its fields as keywords (`socket=`, `proxy_id=`, ...)."""
        self.options = options = EngineOptions.of(options, **fields)
        self.socket = options.socket or self._default_socket()
        self.proxy_id = options.proxy_id
        self._timeout = aiohttp.ClientTimeout(total=options.request_timeout, sock_connect=options.connect_timeout)
        self._docker: aiodocker.Docker | None = None
        self._lock = asyncio.Lock()

    def _default_socket(self) -> str:
        return self.default_socket

    async def _client(self) -> aiodocker.Docker:
        if self._docker is None:
            async with self._lock:
                if self._docker is None:
                    self._docker = aiodocker.Docker(url=self.socket, timeout=self._timeout)
        return self._docker

    async def _reset_client(self) -> None:
        docker, self._docker = self._docker, None
        if docker is not None:
            with contextlib.suppress(Exception):
                await docker.close()

    def _unavailable(self, detail: str) -> BackendUnavailable:
        return BackendUnavailable(f"{self.daemon_label} unreachable at {self.socket}: {detail}", retry_after=2)

    @contextlib.asynccontextmanager
    async def _errors(self) -> AsyncIterator[None]:
        """Map aiodocker/aiohttp failures to BackendError/BackendUnavailable."""
        try:
            yield
        except BackendError:
            raise
        except aiodocker.DockerError as e:
            if e.status == 900:  # aiodocker's "Cannot connect to Docker Engine"
                await self._reset_client()
                raise self._unavailable(e.message) from e
            raise BackendError(e.message or str(e)) from e
        except asyncio.TimeoutError as e:
            await self._reset_client()
            raise self._unavailable("request timed out") from e
        except (aiohttp.ClientConnectionError, ConnectionError, FileNotFoundError, OSError) as e:
            await self._reset_client()
            raise self._unavailable(f"{type(e).__name__}: {e}") from e

    async def ping(self, timeout: float = 2.0) -> None:
        """`GET /_ping`: returns when the daemon answers, else BackendUnavailable saying why (no socket,
        permission denied, timed out). For the start-up line, `--check` and `/ready`."""
        try:
            async with self._errors():
                docker = await self._client()
                async with docker._query("_ping", timeout=aiohttp.ClientTimeout(total=timeout),
                                         versioned_api=False) as response:
                    await response.read()
        except BackendUnavailable as exc:
            raise self._unavailable(_short_reason(str(exc))) from exc

    async def exposed_ports(self, ref: str) -> list[str] | None:
        """The ports image `ref` EXPOSEs (`8080/tcp`), or None when the daemon lacks it (`--check` reports
        both; nothing is pulled here)."""
        async with self._errors():
            docker = await self._client()
            try:
                info = await docker.images.inspect(ref)
            except aiodocker.DockerError as e:
                if e.status == 404:
                    return None
                raise
        return sorted(((info or {}).get("Config") or {}).get("ExposedPorts") or {})

    # ------------------------------------------------------------------ ownership

    def owner_filter(self) -> list[str]:
        """The API's label filter for what this proxy owns (never trusted alone: see `owns`)."""
        return [f"{LABEL_MANAGED}=true", f"{LABEL_PROXY_ID}={self.proxy_id}"]

    def owns(self, labels: Mapping[str, str]) -> bool:
        """Whether an object with these labels is ours: nothing else is ever stopped, removed or adopted."""
        return labels.get(LABEL_MANAGED) == "true" and labels.get(LABEL_PROXY_ID) == self.proxy_id

    def labels_for(self, key: str, spec: ContainerSpec, spec_hash: str) -> dict[str, str]:
        """The labels of the instance of (key, spec); `spec_hash` decides whether a stopped one may be reused."""
        return {**spec.labels, LABEL_MANAGED: "true", LABEL_KEY: key, LABEL_CONTAINER: spec.name,
                LABEL_PROXY_ID: self.proxy_id, LABEL_SPEC: spec_hash, LABEL_PORT: str(spec.port), LABEL_OWNER: owner()}

    async def _deaths(self) -> AsyncIterator[dict[str, Any]]:
        """The runtime's events after which one of our containers may have left `running`, on a client of
        its own. Ends when the stream breaks (daemon down); the caller reconnects."""
        filters = json.dumps({"type": ["container"], "event": list(WATCHED_EVENTS), "label": self.owner_filter()})
        docker = aiodocker.Docker(url=self.socket)
        try:
            subscriber = docker.events.subscribe(create_task=False)  # type: ignore[no-untyped-call]
            stream = asyncio.ensure_future(docker.events.run(filters=filters))
            try:
                while (event := await subscriber.get()) is not None:
                    yield event
            finally:
                stream.cancel()
                await asyncio.gather(stream, return_exceptions=True)
        finally:
            await docker.close()

    async def close(self) -> None:
        """Release the API connection (not the instances)."""
        await self._reset_client()
