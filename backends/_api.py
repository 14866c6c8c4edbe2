"""One Docker-API socket: the aiodocker client, and the one mapping of its failures to BackendError.

Shared by the container engines (backends/_engine.py: dockerd, podman) and the swarm backend
(backends/swarm.py), so a daemon outage reads the same and recovers the same on every one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator

import aiodocker
import aiohttp

from backends.base import BackendError, BackendUnavailable


class ApiClient:
    """A lazily made aiodocker client on `socket`, dropped after a transport failure so the next call
    reconnects by itself when the daemon is back."""

    default_socket = "unix:///var/run/docker.sock"
    daemon_label = "docker daemon"

    def __init__(self, socket: str | None, request_timeout: float, connect_timeout: float) -> None:
        self.socket = socket or self._default_socket()
        self._timeout = aiohttp.ClientTimeout(total=request_timeout, sock_connect=connect_timeout)
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

    async def close(self) -> None:
        """Release the API connection (not the instances)."""
        await self._reset_client()
