"""Prometheus metrics, all prefixed `proxy_`, fed by lifecycle events and the request path.

Each app gets its own CollectorRegistry (tests build many apps). Per-key labels are bounded by
`metrics.key_label_limit`: the first N keys keep their name, the rest share the label `_other`.
"""

from __future__ import annotations

from typing import Callable, Iterable

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics,
                               generate_latest)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from proxy.events import ColdWait, Event, Happening, State
from proxy.registry import Registry
from proxy.request_metrics import RequestCollector

disable_created_metrics()  # type: ignore[no-untyped-call]  # `_created` series: double the count, no dashboard reads them
OTHER = "_other"
START_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class KeyLabels:
    """Bounded cardinality: remember up to `limit` keys, fold the rest into `_other`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()

    def __call__(self, key: str) -> str:
        if key in self._seen:
            return key
        if len(self._seen) < self.limit:
            self._seen.add(key)
            return key
        return OTHER


class Metrics:
    def __init__(self, registry: Registry, key_label_limit: int) -> None:
        self.prom = CollectorRegistry(auto_describe=True)
        self.key_label = KeyLabels(key_label_limit)
        r = self.prom
        self.requests = RequestCollector()
        r.register(self.requests)
        self.starts = Counter("proxy_container_starts", "Instances that became ready.", ["container", "key"],
                              registry=r)
        self.start_failures = Counter("proxy_container_start_failures", "Starts that failed or timed out.",
                                      ["container"], registry=r)
        self.start_duration = Histogram("proxy_container_start_duration_seconds",
                                        "Start requested -> instance ready.", ["container"],
                                        buckets=START_BUCKETS, registry=r)
        self.stops = Counter("proxy_container_stops", "Instances stopped, by reason (idle, shutdown, error).",
                             ["container", "reason"], registry=r)
        self.running = Gauge("proxy_containers_running", "Instances currently running.", ["container"], registry=r)
        self.cold_wait = Histogram("proxy_cold_start_wait_seconds", "Time requests spent waiting for a start.",
                                   ["container"], buckets=START_BUCKETS, registry=r)
        for name in registry.config.containers:
            self.running.labels(name).set(0)
        r.register(_InFlightCollector(registry, self.key_label))
        registry.services.bus.subscribe(self.on_event)

    def on_event(self, event: Event) -> None:
        if isinstance(event, ColdWait):
            self.cold_wait.labels(event.container).observe(event.seconds)
            return
        if event.new is State.RUNNING:
            self.running.labels(event.container).inc()
        elif event.old is State.RUNNING:
            self.running.labels(event.container).dec()
        happening = event.happening
        if happening in (Happening.STARTED, Happening.ADOPTED):  # adoption counts as a start, as its hook does
            self.starts.labels(event.container, self.key_label(event.key)).inc()
            if happening is Happening.STARTED:
                self.start_duration.labels(event.container).observe(event.duration)
        elif happening is Happening.START_FAILED:
            self.start_failures.labels(event.container).inc()
        elif event.stop_reason is not None:  # STOPPED or CRASHED
            self.stops.labels(event.container, event.stop_reason.value).inc()

    def request_observer(self, route: str) -> Callable[[int, float, bool], None]:
        """The route's recorder: `observe(code, seconds, fast_path)`, a few integer additions per request."""
        return self.requests.route(route).observe

    def render(self) -> bytes:
        return generate_latest(self.prom)


class _InFlightCollector(Collector):
    """In-flight and per-state counts are read at scrape time, so the request path pays nothing for them."""

    def __init__(self, registry: Registry, key_label: KeyLabels) -> None:
        self.registry = registry
        self.key_label = key_label

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("proxy_container_in_flight", "Requests and WebSockets in flight per key.",
                              labels=["container", "key"]),
            GaugeMetricFamily("proxy_container_managers", "Managers (keys) per lifecycle state.",
                              labels=["container", "state"]),
        )

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return self._families()

    def collect(self) -> Iterable[GaugeMetricFamily]:
        in_flight, by_state = self._families()
        totals: dict[tuple[str, str], int] = {}
        states = {(name, state.value): 0 for name in self.registry.config.containers for state in State}
        for manager in self.registry:
            states[(manager.klass.name, manager.state.value)] += 1
            if manager.in_flight or manager.state is not State.STOPPED:
                labels = (manager.klass.name, self.key_label(manager.key))
                totals[labels] = totals.get(labels, 0) + manager.in_flight
        for labels, value in totals.items():
            in_flight.add_metric(list(labels), value)
        for labels, value in states.items():
            by_state.add_metric(list(labels), value)
        return (in_flight, by_state)
