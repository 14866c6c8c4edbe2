"""Readiness probing: is an instance answering its readiness path yet (and is it still alive)?"""

from __future__ import annotations

import asyncio

import aiohttp

from backends.base import Backend, BackendError, Instance, InstanceState
from proxy.config import Readiness

INSPECT_EVERY = 0.5  # while waiting: how often to ask the runtime whether the instance died


class Prober:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._session: aiohttp.ClientSession | None = None

    async def probe(self, instance: Instance, path: str, timeout: float) -> int:
        """One GET of `path` on the instance, on its own short-lived connection; the status code."""
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        async with self._session.get(instance.url + path, timeout=aiohttp.ClientTimeout(total=timeout),
                                     allow_redirects=False) as resp:
            return resp.status

    async def wait_ready(self, instance: Instance, readiness: Readiness) -> None:
        """Poll the readiness path until it answers 2xx; fail fast if the instance died meanwhile.

        The caller bounds the whole wait with start_timeout.
        """
        loop = asyncio.get_running_loop()
        next_inspect = loop.time() + INSPECT_EVERY
        while True:
            try:
                if 200 <= await self.probe(instance, readiness.path, readiness.timeout) < 300:
                    return
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                pass
            if loop.time() >= next_inspect:
                next_inspect = loop.time() + INSPECT_EVERY
                if await self.backend.inspect(instance) is not InstanceState.RUNNING:
                    why = await self.backend.exit_reason(instance)
                    raise BackendError(f"instance exited before it was ready ({instance.id[:12]}"
                                       + (f": {why})" if why else ")"))
            await asyncio.sleep(readiness.interval)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
