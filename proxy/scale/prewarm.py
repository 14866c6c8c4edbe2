"""What the schedules warm: each class's keepalive (by default the keys its routes name literally,
lb pool members included) and its cron jobs (with their entrypoint/command/env overrides)."""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Awaitable, Callable

from backends.base import ContainerSpec
from proxy.config.schema import Config, ContainerClass, fixed_keys
from proxy.lifecycle.registry import Registry
from proxy.scale.schedule import Job, Scheduler

Gate = Callable[[str, str], Awaitable[bool]]  # (class, key) -> run here?


def schedule_prewarm(scheduler: Scheduler, config: Config, registry: Registry,
                     gate: Gate | None = None) -> dict[tuple[str, str], list[Job]]:
    """Add each class's keepalive and cron jobs; which jobs start each (class, key) (for Retry-After).

    `gate`: in a cluster, whether a key's job runs on this replica (its owner's only: once per cluster)."""
    warms: dict[tuple[str, str], list[Job]] = {}
    for klass in config.containers.values():
        if klass.keepalive is not None:
            keys = klass.keepalive.keys or fixed_keys(config, klass.name)
            added = scheduler.add(f"keepalive:{klass.name}", klass.keepalive.schedule,
                                  partial(keepalive, registry, klass, keys, gate))
            for key in keys:
                warms.setdefault((klass.name, key), []).append(added)
        for i, job in enumerate(klass.cron):
            spec = klass.spec.with_overrides(env=job.env, entrypoint=job.entrypoint, command=job.command)
            added = scheduler.add(f"cron:{klass.name}:{i}", job.schedule,
                                  partial(prewarm, registry, klass, job.key, spec, gate=gate))
            warms.setdefault((klass.name, job.key), []).append(added)
    return warms


async def keepalive(registry: Registry, klass: ContainerClass, keys: tuple[str, ...], gate: Gate | None = None) -> None:
    await asyncio.gather(*(prewarm(registry, klass, key, None, "keepalive", gate) for key in keys))


async def prewarm(registry: Registry, klass: ContainerClass, key: str, spec: ContainerSpec | None,
                  reason: str = "cron", gate: Gate | None = None) -> None:
    if gate is not None and not await gate(klass.name, key):
        return
    manager = registry.get(key, klass.name)
    await manager.ensure_running(reason=reason, spec=spec)
    manager.touch()
