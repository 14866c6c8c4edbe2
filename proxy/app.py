"""Wiring: config -> backend, registry, metrics, hooks, schedules, routes -> an aiohttp Application.

`create_app` is also the library entry point for people embedding the proxy.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import aiohttp
import structlog
from aiohttp import web

from backends import create_backend
from backends.base import Backend, Instance, Owned
from proxy.config.schema import Config, ContainerClass
from proxy.config.admin import SeedRoute
from proxy.config.routes import Route
from proxy.errors import DETAIL, json_errors
from proxy.scale.adaptive import AdaptivePrewarm
from proxy.scale.autoscale import ScaleCollector
from proxy.lifecycle.capacity import Capacity
from proxy.cluster.metrics import ClusterCollector
from proxy.cluster.node import join
from proxy.lifecycle.events import Event, EventBus, State, StopReason, Transition
from proxy.http.fastpath import FastPath
from proxy.http.server import SERVED
from proxy.observe.hooks import Hooks
from proxy.lifecycle.manager import Manager, Services
from proxy.observe.metrics import Metrics
from proxy.wire.pools import Pools
from proxy.observe.listing import Query, bounded, encode, in_slices, parse_query, select
from proxy.observe.logs import resolve_format
from proxy.observe.looplag import LoopLag
from proxy.scale.prewarm import schedule_prewarm
from proxy.lifecycle.readiness import ReadinessProber
from proxy.scale.rollout import RolloutCollector, Rollouts
from proxy.observe.ready import BackendCheck, readiness
from proxy.lifecycle.reconcile import Reconciler
from proxy.lifecycle.registry import Registry
from proxy.http.watch import ExchangeWatch
from proxy.http.retry_after import RetryAdvisor
from proxy.observe.request_log import RequestLog
from proxy.http.route_table import RouteTable
from proxy.http.routes import RouteHandler
from proxy.face.waiting import WaitingPages
from proxy.scale.schedule import Clock, Scheduler
from proxy.observe.usage import UsageMeter

log = structlog.get_logger("proxy")


class Proxy:
    """Everything one proxy process holds; stored on the app as `app[PROXY]`."""

    def __init__(self, config: Config, backend: Backend, clock: Clock = time.time) -> None:
        self.config = config
        self.backend = backend
        self.bus = EventBus()
        self.pools = Pools(config.connect_timeout)
        self.prober = ReadinessProber(backend)
        self.capacity = Capacity({name: c.max_instances for name, c in config.containers.items()})
        self.registry = Registry(config, Services(backend, self.bus, self.capacity, self.prober, self.pools))
        self.node = join(config, self.registry, backend)  # None unless `cluster.store` names a store
        self.metrics = Metrics(self.registry)
        self.loop_lag = LoopLag(self.metrics.prom)  # proxy_event_loop_lag_seconds: any stall of the data path
        self.usage = UsageMeter(config, self.bus, self.metrics.key_label)
        self.metrics.prom.register(self.usage)
        self.hooks = Hooks(self.bus, config.webhooks)
        self.scheduler = Scheduler(clock)
        self.reconciler = Reconciler(self.registry, backend)
        # The request line is an info line: `logging.level: warning` (or `logging.requests: false`) turns it off.
        self.reqlog = RequestLog(console=resolve_format(config.log_format) == "console") \
            if config.log_requests and config.log_level in ("debug", "info") else None
        self.backend_check = BackendCheck(backend)  # /ready and the start-up line: a cached ping
        self.exchanges = ExchangeWatch(config.max_body_size, config.upstream_timeout)
        warms = schedule_prewarm(self.scheduler, config, self.registry,
                                 self.node.ownership.runs_here if self.node else None)
        self.retry_advisor = RetryAdvisor(self.registry, self.bus, warms, clock)
        self.waiting = WaitingPages(self.bus, self.registry, config.errors.detail) \
            if any(route.waiting_page is not None for route in config.routes) else None
        self.handlers = [self.make_handler(route, config) for route in config.routes]
        self.scalers = [handler.scaler for handler in self.handlers if handler.scaler is not None]
        self.adaptive = AdaptivePrewarm(config, self.registry, clock,
                                        self.node.ownership.runs_here if self.node else None)
        self.metrics.prom.register(ScaleCollector(self.scalers))
        if self.node is not None:
            self.metrics.prom.register(ClusterCollector(self.node.ownership))
        self.background: set[asyncio.Task[None]] = set()  # a reload's stops of a removed class's keys
        self.retired: list[RouteHandler] = []  # routes a reload removed (their WebSockets close at shutdown)
        self.started_tasks = False
        self.config_path: Path | None = None  # the file a reload reads again (proxy/reload.py); set by __main__
        self.overrides: Callable[[Config], Config] = lambda config: config  # the command line's, by __main__
        self.rollouts = Rollouts(self.registry, self, config.upstream_timeout, self.adopt_class, self.hooks.emit)
        self.metrics.prom.register(RolloutCollector(self.rollouts))
        self.hooks.generation = self.generation
        self.route_table = RouteTable()  # the proxied paths' resources; a reload changes them (proxy/reload.py)
        self.started = time.time()
        self.bus.subscribe(_log_transition)

    async def startup(self) -> None:
        self.loop_lag.start()
        if self.node is not None:
            await self.node.start()  # before adoption: clustered, only keys owned here are adopted
        try:
            if self.node is None and isinstance(self.backend, Owned):  # replicas of a cluster share ids by design
                if shared := await self.backend.claimed_elsewhere():
                    log.warning("proxy_id_shared", proxy_id=self.config.backend.proxy_id, containers=shared,
                                hint="another live proxy on this host created these; give each deployment its "
                                     "own backend.proxy_id")
            adopted = await self.registry.adopt_running()
            if adopted:
                log.info("adopted", count=adopted)
        except Exception as exc:  # noqa: BLE001 - a daemon that is down now may be up by the first request
            log.warning("adopt_failed", error=f"{type(exc).__name__}: {exc}")
        check = getattr(self.backend, "missing_images", None)  # docker/podman: `pull: never` images not there
        for name, image in await check(c.spec for c in self.config.containers.values()) if check else []:
            log.warning("image_missing", container_class=name, image=image, pull="never")
        self.scheduler.start()
        self.started_tasks = True
        self.reconciler.start()
        for scaler in self.scalers:
            scaler.start()
        self.adaptive.start()

    def add_routes(self, app: web.Application) -> None:
        """Register each configured path once (the fast path resolves against the same resources); routes that
        share a path (with different hosts) share its resource, and the Host picks one (proxy/wire/route_match.py)."""
        self.route_table.register(app, self.handlers)

    def fast_path(self, app: web.Application) -> FastPath:
        fast = FastPath(app, self.route_table.groups, self.exchanges, self.node.ownership if self.node else None,
                        self.config.max_concurrent_streams)
        self.route_table.fast_routers.append(fast.router)  # a reload re-indexes it (proxy/http/route_table.py)
        return fast

    async def close_websockets(self) -> None:
        """On SIGTERM: open WebSockets get 1001 (going away) rather than holding the drain open."""
        sockets = [ws for handler in self.handlers + self.retired for ws in list(handler.websockets)]
        sockets += self.pools.all_sockets()
        if self.waiting is not None:  # one a reload added has no on_shutdown of its own (the app is frozen)
            await self.waiting.close()
        await asyncio.gather(*(ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"proxy shutting down")
                               for ws in sockets), return_exceptions=True)

    # ---------------------------------------------------------------- what rollouts need (proxy/scale/rollout.py)

    def in_use(self, instance: Instance) -> int:
        return self.pools.in_use(instance)

    async def close_sockets(self, instance: Instance, code: int, message: bytes) -> int:
        sockets = list(self.pools.sockets(instance))
        await asyncio.gather(*(ws.close(code=code, message=message) for ws in sockets), return_exceptions=True)
        return len(sockets)

    def adopt_class(self, klass: ContainerClass) -> None:
        """Make `klass` the configured one of its name: keys used from now on start with it."""
        self.config = replace(self.config, containers={**self.config.containers, klass.name: klass})
        self.registry.config = self.config

    def generation(self, class_name: str, key: str) -> int:
        """The spec generation `key` runs (or will start with)."""
        manager = self.registry.peek(key, class_name)
        klass = manager.klass if manager is not None else self.config.containers.get(class_name)
        return klass.spec.generation if klass is not None else 0

    async def shutdown(self) -> None:
        self.loop_lag.stop()
        await self.rollouts.close()
        for scaler in self.scalers:
            scaler.stop()
        self.adaptive.stop()
        await self.scheduler.stop()
        await self.reconciler.stop()
        if self.node is not None:
            await self.node.hand_over()  # clustered: running keys go to the peers, not stopped (if any is alive)
        for manager in self.registry:  # the drain is over: a start nobody waits for is given up, not waited out
            manager.cancel_start()
        await self.registry.stop_all(StopReason.SHUTDOWN)
        if self.node is not None:
            await self.node.close()
        await self.hooks.close()
        await self.prober.close()
        await self.pools.close()
        await self.backend.close()
        if self.reqlog is not None:
            self.reqlog.flush()

    def make_handler(self, route: Route, config: Config) -> RouteHandler:
        """One route's handler wired to this proxy's parts: at start-up, and for a route a reload adds."""
        handler = RouteHandler(route, config, self.registry, self.metrics, self.pools, self.exchanges,
                               self.reqlog, self.retry_advisor, self.usage)
        handler.cluster = self.node.forwarder if self.node else None
        handler.waiting = self.waiting  # None until a route has a waiting page (at start-up or a reload)
        if handler.scaler is not None:
            handler.scaler.owns = self.node.ownership.owns_instance if self.node else None
        return handler

    def key_status(self, manager: Manager) -> dict[str, Any]:
        """One key's status with its usage: an entry of /container-status and the admin API's answer."""
        entry = manager.status()
        entry["usage"] = self.usage.report(manager.klass.name, manager.key)
        entry["generation"] = manager.klass.spec.generation
        return entry

    async def status(self, query: Query) -> tuple[list[Manager], list[dict[str, Any]], str | None]:
        """One page of the key listing (proxy/observe/listing.py): its managers, their entries, the next cursor."""
        managers, after = await select(self.registry, query)
        return managers, await in_slices(managers, self.key_status), after

    def generations(self) -> dict[str, dict[str, int]]:
        """Per class, its keys with an instance by spec generation (a rollout's progress at a glance)."""
        counts: dict[str, dict[str, int]] = {}
        for manager in self.registry:
            if manager.state is not State.STOPPED:
                per = counts.setdefault(manager.klass.name, {})
                generation = str(manager.klass.spec.generation)
                per[generation] = per.get(generation, 0) + 1
        return counts


PROXY = web.AppKey("proxy", Proxy)


def _log_transition(event: Event) -> None:
    if not isinstance(event, Transition):
        return
    # A failed start is something to look at; every other transition is routine.
    emit = log.warning if event.new is State.FAILED else log.info
    emit("state", key=event.key, container=event.class_name, **{"from": event.old.value},
         to=event.new.value, duration=round(event.duration, 4), reason=event.reason)


async def health(request: web.Request) -> web.Response:
    node = request.app[PROXY].node
    return web.json_response({"status": "ok"} if node is None else {"status": "ok", "cluster": node.status()})


async def ready(request: web.Request) -> web.Response:
    """Readiness (compose healthchecks, Kubernetes probes): 503 while the backend does not answer (a ping
    cached for a second or two) or, clustered, before this replica has joined; /health stays liveness."""
    proxy = request.app[PROXY]
    ok, body = await readiness(proxy.backend_check, proxy.node)
    return web.json_response(body, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    body = request.app[PROXY].metrics.render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def container_status(request: web.Request) -> web.Response:
    """A page of keys (`limit`, `cursor`, `class`, `state`: proxy/observe/listing.py), each running one
    probed live; `next` is the next page's cursor (null: the last)."""
    proxy = request.app[PROXY]
    managers, entries, after = await proxy.status(parse_query(request.query, proxy.config.containers))
    live = [(entry, m, m.instance) for entry, m in zip(entries, managers, strict=True) if m.instance is not None]
    probes = await bounded([partial(_probe, proxy, m, instance) for _, m, instance in live])
    for (entry, _, _), found in zip(live, probes, strict=True):
        entry["health"] = found
    body = await encode({"backend": proxy.backend.name, "next": after, "generations": proxy.generations()}, entries)
    return web.Response(body=body, content_type="application/json")


async def _probe(proxy: Proxy, manager: Manager, instance: Instance) -> dict[str, Any]:
    """A live probe of a running instance with its class's readiness check, like the seed's status page."""
    began = time.perf_counter()
    check = await proxy.prober.check(instance, manager.klass.readiness, timeout=1.0)
    out: dict[str, Any] = {"ok": check.ok, "check": manager.klass.readiness.describe(), "seen": check.what}
    if check.status is not None:
        out["status"] = check.status
    return {**out, "ms": round((time.perf_counter() - began) * 1000, 2)}


async def info(request: web.Request) -> web.Response:
    proxy = request.app[PROXY]
    config = proxy.config
    return web.json_response({
        "service": "lazy-proxy",
        "backend": proxy.backend.name,
        "uptime_seconds": round(time.time() - proxy.started, 3),
        "endpoints": [f"/{name}" for name in config.admin.on_proxy_port],
        "routes": [{"path": r.path, "container": r.container, "key": r.key, "mode": r.mode,
                    "upstream_path": r.upstream_path, "instances": r.instances} for r in config.routes],
        "containers": {name: {"image": c.spec.image, "port": c.spec.port, "instance_type": c.instance_type,
                              "memory_bytes": c.spec.resources.memory_bytes, "cpus": c.spec.resources.cpus,
                              "sleep_after": c.sleep_after, "start_timeout": c.start_timeout,
                              "max_instances": c.max_instances, "readiness": c.readiness.describe(),
                              "keepalive": bool(c.keepalive), "cron_jobs": len(c.cron)}
                       for name, c in config.containers.items()},
        "max_body_size": config.max_body_size,
        **({"cluster": proxy.node.info()} if proxy.node is not None else {}),
    })


SEED_HANDLERS = {"health": health, "ready": ready, "metrics": metrics, "container-status": container_status,
                 "info": info}


def add_seed_routes(app: web.Application, names: tuple[SeedRoute, ...]) -> None:
    """The seed's own endpoints (`GET /health` ...): always on the admin listener, on the proxied port
    only those `admin.on_proxy_port` lists (there they shadow the upstream's paths)."""
    for name in names:
        app.router.add_get(f"/{name}", SEED_HANDLERS[name])


def create_app(config: Config, backend: Backend | None = None, *, clock: Clock = time.time) -> web.Application:
    backend = backend or create_backend(config.backend.type, proxy_id=config.backend.proxy_id,
                                        **config.backend.options)
    proxy = Proxy(config, backend, clock)
    app = web.Application(middlewares=[proxy.metrics.unmatched_middleware, json_errors],
                          client_max_size=config.max_body_size)
    app[PROXY] = proxy
    app[SERVED] = proxy  # what serving needs of it (proxy/http/server.py)
    app[DETAIL] = config.errors.detail  # the admin listener's app has none: it answers operators in full
    add_seed_routes(app, config.admin.on_proxy_port)
    if proxy.waiting is not None:
        proxy.waiting.add_routes(app)  # /.lazy-proxy/wait/...: before the configured routes (a catch-all)
    proxy.add_routes(app)

    async def lifecycle(app: web.Application):  # type: ignore[no-untyped-def]
        await proxy.startup()
        yield
        await proxy.shutdown()

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(lambda app: proxy.close_websockets())
    return app
