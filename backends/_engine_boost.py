"""Startup CPU boost for Docker-API engines (backends/control.py `Boostable`, `startup_limit`).

A cold start is CPU-bound (Python imports, loading a model): at the `dev` type's 1/16 vCPU it takes
~10x longer than unlimited. So a container is created with its type's limit (what `inspect` shows at
rest, and what the spec hash covers), raised to the class's boost just around `start`, and lowered back
by `settle` once the proxy has seen it ready. Both create and warm restart go through `_start`, so a
restarted container, which comes back with its settled limit, is boosted again.

docker: `POST /containers/{id}/update {"NanoCpus"}`, applied before `start` (it is kept in the
container's config, stopped or not). NanoCpus 0 there means "unchanged", so "unlimited" is all the
daemon's CPUs (the most it accepts).
podman 4.3: its compat API has no update; `POST /libpod/containers/{id}/update` takes OCI LinuxResources
but runs `runc update`, so only on a running container (right after `start`), and does not keep the
change: inspect keeps showing the limit the container was created with, and a restart returns to it.
"""

from __future__ import annotations

import logging

import aiodocker

from backends._engine_ops import EngineOps
from backends.base import ContainerSpec, Instance
from backends.control import startup_limit

log = logging.getLogger(__name__)


class EngineBoost(EngineOps):
    """An EngineOps that is also Boostable."""

    # The update needs a running container (podman), else it is made before start (docker).
    boost_after_start = False
    _host_cpus: float | None = None

    async def host_cpus(self) -> float:
        """The daemon's CPU count: the highest limit it accepts, and what "unlimited" means here."""
        if self._host_cpus is None:
            info = await (await self._client()).system.info()
            self._host_cpus = float(info.get("NCPU") or 1)
        return self._host_cpus

    async def _update_cpus(self, cid: str, nano_cpus: int) -> None:
        await (await self._client())._query_json(f"containers/{cid}/update", "POST", data={"NanoCpus": nano_cpus})

    async def set_cpus(self, cid: str, cpus: float) -> None:
        """Set a container's CPU limit (at most the host's CPUs)."""
        await self._update_cpus(cid, int(round(min(cpus, await self.host_cpus()) * 1e9)))

    async def _start(self, cid: str, spec: ContainerSpec) -> None:
        boost = startup_limit(spec, await self.host_cpus())
        if boost is not None and not self.boost_after_start:
            await self._boost(cid, boost)
        await super()._start(cid, spec)
        if boost is not None and self.boost_after_start:
            await self._boost(cid, boost)

    async def _boost(self, cid: str, cpus: float) -> None:
        try:
            await self.set_cpus(cid, cpus)
        except aiodocker.DockerError as e:  # a slower start, not a failed one
            log.warning("startup CPU boost of %s failed: %s", cid[:12], e.message or e)

    async def settle(self, instance: Instance, spec: ContainerSpec) -> None:
        async with self._errors():
            info = await self._own(instance.id)
            await self.set_cpus(info["Id"], spec.resources.cpus)
