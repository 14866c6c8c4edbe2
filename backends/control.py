"""Optional capabilities a backend may have beyond the `Backend` protocol: pause, remove, exec, CPU boost,
the image's own HEALTHCHECK, the container's own address.

Each is a small protocol of its own, checked with `isinstance`, so a backend that cannot (the stub
cannot freeze an in-process server) simply does not have it and the core protocol stays the same for
everyone. The admin API (proxy/admin/api.py) answers 409 "not supported by backend X" when one is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable, Protocol, Sequence, runtime_checkable

from backends.base import ContainerSpec, Instance

# Receives each piece of an exec's output as it comes: ("stdout" | "stderr", bytes).
OutputSink = Callable[[str, bytes], Awaitable[None]]


@runtime_checkable
class Pausable(Protocol):
    """Freeze and thaw a running instance (memory kept, no CPU), as `docker pause`/`unpause` do."""

    async def pause(self, instance: Instance) -> None: ...

    async def resume(self, instance: Instance) -> None: ...


@runtime_checkable
class Removable(Protocol):
    """Remove a key's container whether running or stopped: what a warm restart would reuse is gone."""

    async def remove(self, key: str, spec: ContainerSpec) -> bool:
        """True when there was one to remove."""
        ...


@runtime_checkable
class Generational(Protocol):
    """Names a key's instance by its spec's generation, so a surge rollout runs the old and the new one side by
    side, each its own container (docker, podman; a swarm service is one per key whatever its generation)."""

    def name_for(self, key: str, spec: ContainerSpec) -> str: ...


@runtime_checkable
class SpecHashed(Protocol):
    """Labels each instance with a hash of the spec it was started with (`Instance.spec`), so a proxy restarted on a
    changed config tells which running instances are not what the config says (docker, podman)."""

    def spec_hash(self, spec: ContainerSpec) -> str: ...


@runtime_checkable
class ServicePerKey(Protocol):
    """Runs a key as one service whatever its spec (swarm): a new spec replaces the serving instance, so a key's
    two generations never run side by side and a `surge` rollout runs as `replace` there."""

    def service_for(self, key: str, spec: ContainerSpec) -> str: ...


@runtime_checkable
class Executable(Protocol):
    """Run a command inside a running instance."""

    async def exec(self, instance: Instance, command: Sequence[str], output: OutputSink) -> int | None:
        """Run `command`, passing its output to `output` as it comes; its exit code (None if unknown).

        The caller bounds it with a timeout (cancellation ends the wait and the stream)."""
        ...


def startup_limit(spec: ContainerSpec, host_cpus: float) -> float | None:
    """The CPU limit while `spec` starts on a host with `host_cpus` CPUs, or None for no boost: the class's
    `startup_cpu_boost` (inf: the whole host) when it is above the instance type's."""
    boost = min(spec.startup_cpus, host_cpus)
    return boost if boost > spec.resources.cpus else None


@runtime_checkable
class Boostable(Protocol):
    """Starts instances above their type's CPU limit (`startup_limit`) and can lower it once they are ready:
    a cold start is CPU-bound (imports, loading a model), a served request mostly not."""

    async def settle(self, instance: Instance, spec: ContainerSpec) -> None:
        """Set the running instance's CPU limit to its instance type's (idempotent)."""
        ...


@dataclass(frozen=True)
class Health:
    """What the runtime says of an instance's HEALTHCHECK: `starting`, `healthy` or `unhealthy`, and the last
    check's output; `status` None when the image (or its container) has no HEALTHCHECK at all."""

    status: str | None
    output: str = ""


@runtime_checkable
class HealthReporting(Protocol):
    """Reports the image's own HEALTHCHECK as the runtime runs it (`readiness: healthcheck`)."""

    async def health(self, instance: Instance) -> Health: ...


@runtime_checkable
class DirectlyReachable(Protocol):
    """Knows where an instance's port is inside the runtime's network (the container's own IP and port), for a
    TCP readiness probe that a port forwarder in front (docker-proxy accepts for a port nothing listens on
    yet) must not answer."""

    async def direct_address(self, instance: Instance) -> tuple[str, int] | None:
        """(host, port) of the container itself, or None when unknown or no different from the instance's."""
        ...
