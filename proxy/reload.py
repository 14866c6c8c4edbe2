"""Live reload (SIGHUP, `POST /admin/config/reload`, `ctl reload`): read the config file again and apply it.

The whole file is validated by the loader start-up uses; a bad one changes nothing and the answer says why
(the field named, as at start-up). A good one is applied at once, without awaiting in between (no request
sees half of it): container classes added, changed and removed (a removed class's keys drain and stop; a
class whose spec hash changed rolls out, proxy/scale/rollout.py), routes, new paths too, matched as after a
restart (a request in flight finishes on the route it matched; proxy/http/route_table.py), schedules, hooks,
capacity. What a running process cannot change (listen addresses, the backend, the cluster, the admin
listener, logging) keeps its running value and is named in the answer as needing a restart.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from backends._engine import spec_hash
from proxy.app import Proxy
from proxy.config.schema import Config, ConfigError, ContainerClass, load_config
from proxy.face.waiting import WaitingPages
from proxy.lifecycle.events import StopReason
from proxy.scale.prewarm import schedule_prewarm

log = structlog.get_logger("proxy.reload")

# Fields a running process keeps (config name -> the running Config's attribute): they need a restart.
RESTART_ONLY = {"server.host": "host", "server.port": "port", "backend": "backend", "cluster": "cluster",
                "admin": "admin", "logging.level": "log_level", "logging.format": "log_format"}


@dataclass
class Reloaded:
    """A reload's answer: applied or not (and why), what changed, what needs a restart."""

    applied: bool
    error: str | None = None
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # classes whose policy changed (not their spec)
    rollouts: list[str] = field(default_factory=list)  # classes whose spec changed: rolled out
    routes: int = 0
    restart_needed: list[str] = field(default_factory=list)

    def body(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def spec_changed(old: ContainerClass, new: ContainerClass) -> bool:
    """What adoption compares (the spec hash label): image, command, env, resources, volumes, ports..."""
    return spec_hash(old.spec) != spec_hash(new.spec)


def reload(proxy: Proxy) -> Reloaded:
    """Read `proxy.config_path` again; apply it, or keep the running config and say why."""
    if proxy.config_path is None:
        return Reloaded(False, "config: the proxy was not started from a config file")
    try:
        new = proxy.overrides(load_config(proxy.config_path))  # --port and the like still win
    except ConfigError as exc:
        log.warning("reload_refused", error=str(exc))
        return Reloaded(False, f"config error: {exc}")
    outcome = apply(proxy, new)
    log.info("reloaded", **{k: v for k, v in outcome.body().items() if v and k != "applied"})
    return outcome


def apply(proxy: Proxy, new: Config) -> Reloaded:
    """Apply a validated config to a running proxy (no await: all of it at once)."""
    old = proxy.config
    outcome = Reloaded(True)
    kept = {}
    for name, attr in RESTART_ONLY.items():
        if getattr(new, attr) != getattr(old, attr):
            outcome.restart_needed.append(name)
        kept[attr] = getattr(old, attr)
    classes: dict[str, ContainerClass] = {}
    rolls: list[tuple[ContainerClass, ContainerClass]] = []
    for name, klass in new.containers.items():
        before = old.containers.get(name)
        if before is None:
            outcome.added.append(name)
        elif spec_changed(before, klass):
            klass = replace(klass, spec=replace(klass.spec, generation=before.spec.generation + 1))
            rolls.append((before, klass))
            outcome.rollouts.append(name)
        else:
            klass = replace(klass, spec=replace(klass.spec, generation=before.spec.generation))
            if klass != before:
                outcome.changed.append(name)
        classes[name] = klass
    outcome.removed = [name for name in old.containers if name not in classes]
    config = replace(new, containers=classes, **kept)
    proxy.config = proxy.registry.config = proxy.usage.config = config
    proxy.capacity.resize({name: c.max_instances for name, c in classes.items()})
    for manager in proxy.registry:
        if manager.klass.name in outcome.changed:
            manager.klass = classes[manager.klass.name]  # a policy change (sleep_after, readiness...) at once
    for before, klass in rolls:
        proxy.rollouts.begin(before, klass)
    _stop_removed(proxy, outcome.removed)
    outcome.routes = _routes(proxy, config)
    _schedules(proxy, config)
    proxy.hooks.webhooks = config.webhooks
    proxy.metrics.key_label.renamed(config)
    return outcome


def _stop_removed(proxy: Proxy, removed: list[str]) -> None:
    """A removed class's keys drain (server.drain_timeout) and stop; their managers are forgotten."""
    for name in removed:
        for manager in [m for m in proxy.registry if m.klass.name == name]:
            proxy.registry.managers.pop((name, manager.key), None)
            task = asyncio.get_running_loop().create_task(manager.stop(StopReason.ROLLOUT, proxy.config.drain_timeout))
            proxy.background.add(task)
            task.add_done_callback(proxy.background.discard)


def _routes(proxy: Proxy, config: Config) -> int:
    """The routes change at once, new paths too: the route table re-indexes aiohttp's frozen router and the
    fast path's in the new config's order (proxy/http/route_table.py), so they match as after a restart.
    The first waiting page brings the waiting pages' own endpoints, as at start-up."""
    if proxy.waiting is None and any(route.waiting_page is not None for route in config.routes):
        proxy.waiting = WaitingPages(proxy.bus, proxy.registry, config.errors.detail)  # the first waiting page
        proxy.route_table.serve_first(proxy.waiting.resources())
    reuse = {handler.route: handler for handler in proxy.handlers}
    handlers = [reuse.get(route) or proxy.make_handler(route, config) for route in config.routes]
    for handler in handlers:
        handler.waiting = proxy.waiting
    proxy.route_table.update(handlers)
    for handler in proxy.handlers:
        if handler not in handlers and handler.scaler is not None:
            handler.scaler.stop()
    for handler in handlers:
        if handler not in proxy.handlers and handler.scaler is not None:
            handler.scaler.start()
    proxy.retired += [h for h in proxy.handlers if h not in handlers]
    proxy.handlers = handlers
    proxy.scalers = [h.scaler for h in handlers if h.scaler is not None]
    return len(handlers)


def _schedules(proxy: Proxy, config: Config) -> None:
    """Keepalive and cron jobs as the new config says (each job's next time from now)."""
    proxy.scheduler.clear()
    warms = schedule_prewarm(proxy.scheduler, config, proxy.registry,
                             proxy.node.ownership.runs_here if proxy.node else None)
    proxy.retry_advisor.warms = warms
    if proxy.started_tasks:
        proxy.scheduler.start()
