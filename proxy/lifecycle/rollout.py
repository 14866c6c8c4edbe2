"""One key's move to its class's new spec (a reload changed what the spec hash covers): `surge` or `replace`.

`surge`: the new instance is started beside the old one (its container name carries the generation), waited
for until ready, then takes the key's new requests in one step (no await between the check and the switch);
the old one's requests in flight finish, its WebSockets get `active_grace_period` and then 1012 ("service
restart"), and it is stopped (SIGTERM, stop_timeout, SIGKILL) and removed. A start that fails or is not ready
in start_timeout is stopped and raises `RolloutFailed`: the old instance never stopped serving.
`replace`: the key is stopped (its requests in flight drain) and started again with the new spec; requests
that come meanwhile wait as for any cold start. Which keys, how many at once and when to halt is the
planner's (proxy/scale/rollout.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from backends.base import Instance
from backends.control import Removable
from proxy.config.schema import ContainerClass
from proxy.lifecycle.boost import settle
from proxy.lifecycle.events import State, StopReason
from proxy.lifecycle.manager import Manager
from proxy.lifecycle.readiness import LastSeen

log = structlog.get_logger("proxy.rollout")
POLL = 0.05  # seconds between looks at an old instance's connections while it drains
QUIET = 2  # looks in a row with nothing in flight before the old instance is stopped
SERVICE_RESTART = 1012  # the WebSocket close code (RFC 6455 registry): the service is restarting
DRAIN_AT_LEAST = 5.0  # seconds an old instance's requests get at least, whatever upstream_timeout says


class RolloutFailed(Exception):
    """The key's new instance did not become ready; the old one still serves."""


class Draining(Protocol):
    """What a drain needs to know of an instance's traffic (the app's connection pools and WebSockets)."""

    def in_use(self, instance: Instance) -> int:
        """Requests and WebSockets on `instance` now (its connections in use)."""
        ...

    async def close_sockets(self, instance: Instance, code: int, message: bytes) -> int:
        """Close the proxied WebSockets on `instance`; how many there were."""
        ...


@dataclass
class Swapped:
    """What one key's surge did, for the planner's books and the hooks."""

    key: str
    old: Instance | None
    new: Instance | None
    seconds: float = 0.0
    closed_sockets: int = 0
    notes: list[str] = field(default_factory=list)


async def surge(manager: Manager, klass: ContainerClass, draining: Draining, drain_timeout: float) -> Swapped:
    """Start `klass`'s instance for the key beside the running one, switch, drain and stop the old one."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    old, services = manager.instance, manager.services
    if manager.state is not State.RUNNING or old is None:
        return Swapped(manager.key, None, None, notes=["not running: its next start takes the new spec"])
    if services.fence is not None and not services.fence.holds(manager):  # clustered: its owner rolls it
        return Swapped(manager.key, None, None, notes=["not certainly this replica's key"])
    new: Instance | None = None
    seen = LastSeen()
    try:
        async with asyncio.timeout(klass.start_timeout):
            new = await services.backend.start(manager.key, klass.spec)
            await services.prober.wait_ready(new, klass.readiness, seen)
        await settle(services.backend, new, klass.spec)  # the startup CPU boost ends at ready
    except (Exception, asyncio.CancelledError) as exc:
        why = f"not ready within start_timeout={klass.start_timeout:g}s" if isinstance(exc, TimeoutError) \
            else f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
        if seen.what:
            why += f": {seen.what}"
        if new is not None:
            await _stop_quietly(manager, new, klass)
        if isinstance(exc, asyncio.CancelledError):
            raise
        raise RolloutFailed(why) from None
    assert new is not None
    if manager.state is not State.RUNNING or manager.instance is not old:  # stopped or crashed meanwhile
        await _stop_quietly(manager, new, klass)
        if manager.state in (State.STOPPED, State.FAILED):
            manager.klass = klass
        return Swapped(manager.key, None, None, notes=["the key changed meanwhile: its next start takes the new spec"])
    if not await manager.confirmed():  # clustered: the key moved to another replica meanwhile
        await _stop_quietly(manager, new, klass)
        return Swapped(manager.key, None, None, notes=["the key is another replica's now"])
    if manager.state is not State.RUNNING or manager.instance is not old:
        await _stop_quietly(manager, new, klass)
        return Swapped(manager.key, None, None, notes=["the key changed meanwhile"])
    old_klass = manager.klass
    manager.instance, manager.klass = new, klass  # the switch: new requests go to `new` from here on
    manager.touch()
    closed = await drain(old, klass.rollout.active_grace_period, draining, drain_timeout)
    await _stop_quietly(manager, old, old_klass)
    return Swapped(manager.key, old, new, loop.time() - began, closed)


async def replace(manager: Manager, klass: ContainerClass, drain_timeout: float) -> Swapped:
    """Stop the key (its requests in flight drain), then start it with `klass`; requests meanwhile wait."""
    loop = asyncio.get_running_loop()
    began, old, old_klass = loop.time(), manager.instance, manager.klass
    was_live = manager.state in (State.RUNNING, State.PAUSED)
    manager.klass = klass  # whatever starts next starts the new spec
    await manager.stop(StopReason.ROLLOUT, drain_timeout)
    await _remove(manager, old_klass)
    if not was_live:
        return Swapped(manager.key, old, None, notes=["not running: its next start takes the new spec"])
    try:
        await manager.ensure_running(reason="rollout")
    except Exception as exc:  # noqa: BLE001 - any failure of the new start halts the rollout
        raise RolloutFailed(f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}") from None
    return Swapped(manager.key, old, manager.instance, loop.time() - began)


async def drain(old: Instance, grace: float, draining: Draining, timeout: float) -> int:
    """Wait for `old`'s requests and WebSockets (up to `grace`), close the WebSockets left with 1012, then wait
    (up to `timeout`) until nothing is in flight on it for QUIET looks in a row; the WebSockets closed."""
    loop = asyncio.get_running_loop()
    end = loop.time() + grace
    while loop.time() < end and draining.in_use(old) > 0:
        await asyncio.sleep(POLL)
    closed = await draining.close_sockets(old, SERVICE_RESTART, b"service restart")
    end, quiet = loop.time() + max(timeout, DRAIN_AT_LEAST), 0
    while loop.time() < end and quiet < QUIET:
        quiet = quiet + 1 if draining.in_use(old) == 0 else 0
        await asyncio.sleep(POLL)
    return closed


async def _stop_quietly(manager: Manager, instance: Instance, klass: ContainerClass) -> None:
    """Stop an instance the manager does not hold (SIGTERM, stop_timeout, SIGKILL), then remove its container:
    an old generation's stopped container is of no use as a warm restart."""
    services = manager.services
    try:
        await asyncio.wait_for(services.backend.stop(instance), timeout=klass.spec.stop_timeout + 10)
    except Exception as exc:  # noqa: BLE001 - reported; the reconciler sees a container left running
        log.warning("rollout_stop_failed", key=manager.key, container=klass.name, error=f"{type(exc).__name__}: {exc}")
    services.pools.forget(instance)
    await _remove(manager, klass)


async def _remove(manager: Manager, klass: ContainerClass) -> None:
    """Remove the key's stopped container of `klass`'s generation (best effort; a later start replaces it)."""
    backend = manager.services.backend
    if isinstance(backend, Removable) and manager.klass is not klass:
        with contextlib.suppress(Exception):
            await backend.remove(manager.key, klass.spec)
