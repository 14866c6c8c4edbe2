"""Prometheus metrics, all prefixed `proxy_`, fed by lifecycle events and the request path.

Each app gets its own CollectorRegistry (tests build many apps). Three rules keep the numbers honest:

- **Every series a dashboard rates exists at zero before its first increment**, so `increase()` and
  `rate()` see the first 0 -> 1 (a series born at 1 loses it). All label values are known at
  start-up: per class (the configured classes), per key (`KeyLabels`: only keys config names), per
  stop reason, per route and the status codes the proxy itself answers (proxy/observe/request_metrics.py).
- **Per-key labels cannot be gamed by clients**: a key has its own `key` label only when config names
  it (routes' fixed keys, lb pool members `lb#N`, keepalive and cron keys, `metrics.key_labels`);
  every other key is `key="_other"`. Clients choose keys, so first-come label slots would let 100
  made-up keys take the labels of the real ones.
- **Label names survive Kubernetes scrape configs**: the class is `container_class`, never
  `container` (a target label there, which renames ours to `exported_container`).

Requests that match no route are counted as `route="_unmatched"` by `Metrics.unmatched_middleware`
(the application's first middleware). Buckets: see START_BUCKETS.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable, Mapping

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import (GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR, CollectorRegistry, Counter,
                               Gauge, Histogram, disable_created_metrics, generate_latest)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from proxy import __version__
from proxy.config.schema import Config, fixed_keys
from proxy.lifecycle.events import ColdWait, Event, Happening, State, StopReason, Transition
from proxy.lifecycle.registry import Registry
from proxy.observe.request_metrics import PROXY_CODES, UNMATCHED_CODES, RequestCollector, RouteStats

disable_created_metrics()  # type: ignore[no-untyped-call]  # `_created` series: double the count, no dashboard reads them
OTHER = "_other"  # the `key` label of every key config does not name (keys cannot start with `_`)
UNMATCHED = "_unmatched"  # the `route` label of requests that match no route (own endpoints excepted)
CLASS = "container_class"

# Start and cold-wait durations, 1 ms to 60 s. Bounds step by at most a third (1, 1.25, 1.5, 2, 2.5, 3, 4,
# 5, 6, 8 per decade), so a quantile interpolated inside a bucket is off by well under that, and more
# bounds sit where starts fall: in-process stub starts (2-10 ms), containers (docker/podman 0.2-1 s:
# every 50-100 ms), and a 1/16-vCPU instance importing its model (seconds).
START_BUCKETS = (
    0.001, 0.00125, 0.0015, 0.002, 0.0025, 0.003, 0.004, 0.005, 0.006, 0.008,
    0.01, 0.0125, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.06, 0.08,
    0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9,
    1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0,
    10.0, 12.5, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0, 60.0,
)

# The phases of a start, in order, as `phase` label values: what the backend did (`pull` of the image, only when
# one happened; `create`, or `restart` of a stopped container, or `unpause`; `start`; `port`: until the published
# port is known), then `ready` (the
# readiness probe's first 2xx). Together they are the start's duration. `first_byte` comes after it: ready ->
# the first byte of the response to a request that waited for the start.
START_PHASES = ("pull", "create", "restart", "unpause", "start", "port", "ready", "first_byte")


def named_keys(config: Config) -> dict[str, tuple[str, ...]]:
    """Per class, the keys config names, in config order: routes' fixed keys (lb pool members
    included), keepalive keys, cron keys, then `metrics.key_labels` (which applies to every class)."""
    named: dict[str, tuple[str, ...]] = {}
    for name, klass in config.containers.items():
        keys = list(fixed_keys(config, name))
        if klass.keepalive is not None:
            keys += klass.keepalive.keys
        keys += [job.key for job in klass.cron]
        keys += config.key_labels
        named[name] = tuple(dict.fromkeys(keys))
    return named


class KeyLabels:
    """The `key` label of (class, key): the key itself when config names it, else `_other`.

    A fixed set, decided at start-up: nothing a client sends can add a label or take one away.
    """

    def __init__(self, named: Mapping[str, Iterable[str]]) -> None:
        self._order = {class_name: (*dict.fromkeys(keys), OTHER) for class_name, keys in named.items()}
        self._named = {class_name: frozenset(keys) - {OTHER} for class_name, keys in self._order.items()}
        self.version = 0

    def renamed(self, config: Config) -> None:
        """A reload's named keys (classes and `metrics.key_labels` added or removed); `version` counts them,
        so a label kept by a caller (proxy/observe/tally.py) is looked up again."""
        version = self.version
        self.__init__(named_keys(config))  # type: ignore[misc]
        self.version = version + 1

    @classmethod
    def from_config(cls, config: Config) -> KeyLabels:
        return cls(named_keys(config))

    def __call__(self, class_name: str, key: str) -> str:
        named = self._named.get(class_name)
        return key if named is not None and key in named else OTHER

    def labels(self, class_name: str) -> tuple[str, ...]:
        """Every `key` label value of a class (its named keys, then `_other`)."""
        return self._order.get(class_name, (OTHER,))


def standard_series(r: CollectorRegistry) -> None:
    """What every Prometheus exporter shows: process_* (CPU, memory, open fds), python_gc_*, python_info
    (prometheus_client's default collectors, put on this registry too) and `lazy_proxy_build_info{version}`."""
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        r.register(collector)
    Gauge("lazy_proxy_build_info", "The running lazy-proxy's version (always 1).", ["version"],
          registry=r).labels(__version__).set(1)


class Metrics:
    def __init__(self, registry: Registry) -> None:
        config = registry.config
        self.prom = CollectorRegistry(auto_describe=True)
        self.key_label = KeyLabels.from_config(config)
        r = self.prom
        standard_series(r)
        self.requests = RequestCollector()
        r.register(self.requests)
        self.class_starts = Counter("proxy_container_class_starts", "Instances that became ready, per class.",
                                    [CLASS], registry=r)
        self.starts = Counter("proxy_container_starts", "Instances that became ready, per key config names "
                              "(others: key=\"_other\").", [CLASS, "key"], registry=r)
        self.start_failures = Counter("proxy_container_start_failures", "Starts that failed or timed out.",
                                      [CLASS], registry=r)
        self.start_duration = Histogram("proxy_container_start_duration_seconds",
                                        "Start requested -> instance ready.", [CLASS],
                                        buckets=START_BUCKETS, registry=r)
        self.stops = Counter("proxy_container_stops", "Instances stopped, by reason (idle, shutdown, error, admin, "
                             "unhealthy).",
                             [CLASS, "reason"], registry=r)
        self.running = Gauge("proxy_container_running_instances", "Instances currently running.", [CLASS],
                             registry=r)
        self.max_instances = Gauge("proxy_container_max_instances", "The class's max_instances (a constant).",
                                   [CLASS], registry=r)
        self.cold_wait = Histogram("proxy_cold_start_wait_seconds", "Time requests spent waiting for a start.",
                                   [CLASS], buckets=START_BUCKETS, registry=r)
        self.start_phase = Histogram("proxy_container_start_phase_seconds", "Each phase of a start (pull, create "
                                     "or restart or unpause, start, port, ready; then first_byte, after it).",
                                     [CLASS, "phase"], buckets=START_BUCKETS, registry=r)
        self._first_byte_due: dict[tuple[str, str], float] = {}  # started keys whose first answer is to come
        for name, klass in config.containers.items():  # every series at zero before its first increment
            self.class_starts.labels(name)
            self.start_failures.labels(name)
            for reason in StopReason:
                self.stops.labels(name, reason.value)
            self.start_duration.labels(name)
            self.cold_wait.labels(name)
            for phase in START_PHASES:
                self.start_phase.labels(name, phase)
            self.running.labels(name).set(0)
            self.max_instances.labels(name).set(klass.max_instances)
            for label in self.key_label.labels(name):
                self.starts.labels(name, label)
        r.register(_InFlightCollector(registry, self.key_label))
        self.unmatched_middleware = _unmatched_middleware(self.requests.route(UNMATCHED, UNMATCHED_CODES).observe)
        registry.services.bus.subscribe(self.on_event)

    def on_event(self, event: Event) -> None:
        if isinstance(event, ColdWait):
            self.cold_wait.labels(event.class_name).observe(event.seconds)
            return
        if not isinstance(event, Transition):
            return
        if event.new is State.RUNNING:
            self.running.labels(event.class_name).inc()
        elif event.old is State.RUNNING:
            self.running.labels(event.class_name).dec()
        happening = event.happening
        if happening in (Happening.STARTED, Happening.ADOPTED):  # adoption counts as a start, as its hook does
            self.class_starts.labels(event.class_name).inc()
            self.starts.labels(event.class_name, self.key_label(event.class_name, event.key)).inc()
            if happening is Happening.STARTED:
                self.start_duration.labels(event.class_name).observe(event.duration)
                for phase, seconds in event.phases:
                    self.start_phase.labels(event.class_name, phase).observe(seconds)
                self._first_byte_due[(event.class_name, event.key)] = time.monotonic()
        elif happening is Happening.START_FAILED:
            self.start_failures.labels(event.class_name).inc()
        elif event.stop_reason is not None:  # STOPPED or CRASHED
            self.stops.labels(event.class_name, event.stop_reason.value).inc()
            self._first_byte_due.pop((event.class_name, event.key), None)

    def first_byte(self, class_name: str, key: str) -> None:
        """A request that waited for a start got its first response byte: the start's `first_byte` phase, once."""
        ready = self._first_byte_due.pop((class_name, key), None)
        if ready is not None:
            self.start_phase.labels(class_name, "first_byte").observe(time.monotonic() - ready)

    def request_stats(self, route: str) -> RouteStats:
        """The route's counts (its proxied codes from zero): `observe(code, seconds, fast_path)` adds a few
        integers per request."""
        return self.requests.route(route, PROXY_CODES)

    def render(self) -> bytes:
        return generate_latest(self.prom)


def _unmatched_middleware(observe: Callable[[int, float, bool], None]) -> Middleware:
    """An aiohttp middleware counting requests that match no route as `route="_unmatched"` (404, 405).

    The proxy's own endpoints and the configured routes match, so they pass straight through; only
    unmatched requests pay for a clock read. Works outside or inside the JSON error middleware.
    """

    @web.middleware
    async def count_unmatched(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.match_info.http_exception is None:
            return await handler(request)
        began = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            observe(status, time.perf_counter() - began, False)

    return count_unmatched


class _InFlightCollector(Collector):
    """In-flight and per-state counts are read at scrape time, so the request path pays nothing for them."""

    def __init__(self, registry: Registry, key_label: KeyLabels) -> None:
        self.registry = registry
        self.key_label = key_label

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("proxy_container_in_flight", "Requests and WebSockets in flight per key.",
                              labels=[CLASS, "key"]),
            GaugeMetricFamily("proxy_container_managers", "Managers (keys) per lifecycle state.",
                              labels=[CLASS, "state"]),
            GaugeMetricFamily("proxy_container_breaker_open", "Keys whose crash-loop breaker is open (or half-open: "
                              "one start let through).", labels=[CLASS]),
        )

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return self._families()

    def collect(self) -> Iterable[GaugeMetricFamily]:
        in_flight, by_state, breaker_open = self._families()
        classes = self.registry.config.containers
        totals = {(name, label): 0 for name in classes for label in self.key_label.labels(name)}
        states = {(name, state.value): 0 for name in classes for state in State}
        open_breakers = dict.fromkeys(classes, 0)
        for manager in self.registry:
            name = manager.klass.name
            states[(name, manager.state.value)] += 1
            open_breakers[name] += manager.breaker.is_open
            if manager.in_flight:
                labels = (name, self.key_label(name, manager.key))
                totals[labels] = totals.get(labels, 0) + manager.in_flight
        for labels, value in totals.items():
            in_flight.add_metric(list(labels), value)
        for labels, value in states.items():
            by_state.add_metric(list(labels), value)
        for name, count in open_breakers.items():
            breaker_open.add_metric([name], count)
        return (in_flight, by_state, breaker_open)
