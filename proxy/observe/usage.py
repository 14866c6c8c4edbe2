"""The usage meter: what the seed's platform bills by, per key, from running time and instance type.

Running time counts from ready (or adopted) until stopped; egress is the response bytes sent to
clients (`egress`, once per finished request, from the exchange). Counters are computed at scrape time,
so an instance that is still running is billed up to the second. A paused instance (frozen: memory
kept, no CPU) is billed for memory and disk but not for CPU while it is paused.

State is bounded whatever keys clients invent:

- Prometheus counters are kept per (class, `key` label), and labels are a fixed set (`KeyLabels`:
  keys config names, the rest `_other`), all exported from zero at start-up. A key's time moves into
  its label's total when it stops, so the counters never go down, even when per-key detail is dropped.
- Per-key detail (for /container-status) is kept while the key runs, and after its last stop for
  `retention` seconds (24 h), for at most `max_stopped` stopped keys (10,000; the longest stopped
  go first). A key past that reports `usage: null`; its time is still in the counters.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterable

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from proxy.config.schema import Config
from proxy.lifecycle.events import Event, EventBus, Happening, State, Transition
from proxy.observe.metrics import CLASS, KeyLabels

USAGE_RETENTION = 24 * 3600.0  # seconds per-key detail outlives the key's last stop
USAGE_MAX_STOPPED = 10_000  # stopped keys with per-key detail, at most


@dataclass(slots=True)
class Usage:
    """One key's running time: closed periods, plus the open one while it runs."""

    seconds: float = 0.0
    running_since: float | None = None
    stopped_at: float = 0.0
    paused: float = 0.0  # closed paused seconds, within `seconds`
    paused_since: float | None = None
    egress: int = 0  # response bytes sent to clients

    def total(self, now: float) -> float:
        return self.seconds + (now - self.running_since if self.running_since is not None else 0.0)

    def paused_total(self, now: float) -> float:
        return self.paused + (now - self.paused_since if self.paused_since is not None else 0.0)

    def pause(self, at: float) -> None:
        if self.running_since is not None and self.paused_since is None:
            self.paused_since = at

    def unpause(self, at: float) -> float:
        """Close the paused period; its length."""
        since, self.paused_since = self.paused_since, None
        ran = at - since if since is not None else 0.0
        self.paused += ran
        return ran


# /container-status reports the seed's billing units (GiB-s, GB-s); Prometheus wants base units (bytes).
_TO_BASE_UNITS = {"memory_gib_seconds": 2.0**30, "disk_gb_seconds": 1e9}


class UsageMeter(Collector):
    def __init__(self, config: Config, bus: EventBus, key_label: KeyLabels, *,
                 retention: float = USAGE_RETENTION, max_stopped: int = USAGE_MAX_STOPPED,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.key_label = key_label
        self.retention = retention
        self.max_stopped = max_stopped
        self.clock = clock
        self.running: dict[tuple[str, str], Usage] = {}  # (container class, key), while running
        self.stopped: OrderedDict[tuple[str, str], Usage] = OrderedDict()  # in the order they stopped
        # Closed running seconds per (class, key label): what the counters export, with the open periods;
        # `paused_totals` likewise for the paused seconds within them (no CPU billed).
        self.totals: dict[tuple[str, str], float] = {
            (name, label): 0.0 for name in config.containers for label in key_label.labels(name)}
        self.paused_totals: dict[tuple[str, str], float] = dict.fromkeys(self.totals, 0.0)
        self.egress_totals: dict[tuple[str, str], int] = dict.fromkeys(self.totals, 0)
        self.moves = 0  # bumped whenever a key's detail is made, moved or dropped (`detail` may be kept until then)
        bus.subscribe(self._on_event)

    def _on_event(self, event: Event) -> None:
        if not isinstance(event, Transition):
            return
        at = (event.class_name, event.key)
        if event.new is State.PAUSED and (usage := self.running.get(at)) is not None:
            usage.pause(event.timestamp)
        elif event.old is State.PAUSED and (usage := self.running.get(at)) is not None:
            self._unpause(event.class_name, event.key, usage, event.timestamp)
        if event.happening is None:
            return
        if event.happening in (Happening.STARTED, Happening.ADOPTED):
            self.moves += 1
            usage = self.running.get(at) or self.stopped.pop(at, Usage())
            if usage.running_since is None:
                usage.running_since = event.timestamp
            self.running[at] = usage
        elif event.happening in (Happening.STOPPED, Happening.CRASHED):
            self.moves += 1
            ended = self.running.pop(at, None)
            if ended is None or ended.running_since is None:
                return
            self._unpause(event.class_name, event.key, ended, event.timestamp)
            ran = event.timestamp - ended.running_since
            ended.seconds += ran
            ended.running_since = None
            ended.stopped_at = event.timestamp
            label = (event.class_name, self.key_label(event.class_name, event.key))
            self.totals[label] = self.totals.get(label, 0.0) + ran
            self.stopped[at] = ended
            self._expire(event.timestamp)

    def egress(self, class_name: str, key: str, nbytes: int) -> None:
        """Response bytes one request sent to its client (called once per request: a few dict operations)."""
        self.add_egress(self.detail((class_name, key)), (class_name, self.key_label(class_name, key)), nbytes)

    def detail(self, at: tuple[str, str]) -> Usage | None:
        """The per-key detail of (class, key) `at`, if kept: the same object until `moves` changes (a caller may
        keep it: proxy/observe/tally.py)."""
        return self.running.get(at) or self.stopped.get(at)

    def add_egress(self, usage: Usage | None, label: tuple[str, str], nbytes: int) -> None:
        """`egress` of a key whose `detail` and (class, `key` label) the caller knows."""
        if usage is not None:
            usage.egress += nbytes
        totals = self.egress_totals
        totals[label] = totals.get(label, 0) + nbytes

    def _unpause(self, class_name: str, key: str, usage: Usage, at: float) -> None:
        label = (class_name, self.key_label(class_name, key))
        self.paused_totals[label] = self.paused_totals.get(label, 0.0) + usage.unpause(at)

    def _expire(self, now: float) -> None:
        """Drop per-key detail past its retention, and the longest-stopped keys beyond the cap."""
        stopped = self.stopped
        while stopped:
            oldest = next(iter(stopped.values()))
            if len(stopped) <= self.max_stopped and oldest.stopped_at >= now - self.retention:
                break
            stopped.popitem(last=False)
            self.moves += 1

    def __len__(self) -> int:
        """Keys with per-key detail (running, or stopped within the retention and the cap)."""
        return len(self.running) + len(self.stopped)

    def report(self, class_name: str, key: str, now: float | None = None) -> dict[str, float] | None:
        usage = self.running.get((class_name, key)) or self.stopped.get((class_name, key))
        if usage is None:
            return None
        now = self.clock() if now is None else now
        return self._bill(class_name, usage.total(now), usage.paused_total(now), usage.egress)

    def _bill(self, class_name: str, seconds: float, paused: float = 0.0, egress: int = 0) -> dict[str, float]:
        cls = self.config.containers[class_name]
        prices = self.config.pricing
        memory = seconds * cls.spec.resources.memory_gib
        vcpu = (seconds - paused) * cls.spec.resources.cpus
        disk = seconds * cls.disk_gb
        cost = (memory * prices.memory_gib_second + vcpu * prices.vcpu_second + disk * prices.disk_gb_second
                + egress / 1e9 * prices.egress_per_gb)
        return {"running_seconds": seconds, "paused_seconds": paused, "memory_gib_seconds": memory,
                "vcpu_seconds": vcpu, "disk_gb_seconds": disk, "egress_bytes": egress, "estimated_cost_usd": cost}

    def describe(self) -> Iterable[CounterMetricFamily]:
        return list(self._families().values())

    def collect(self) -> Iterable[CounterMetricFamily]:
        families = self._families()
        now = self.clock()
        self._expire(now)
        seconds, paused = dict(self.totals), dict(self.paused_totals)
        for (class_name, key), usage in list(self.running.items()):  # the open periods; closed ones are in totals
            at = (class_name, self.key_label(class_name, key))
            if usage.running_since is not None:
                seconds[at] = seconds.get(at, 0.0) + max(0.0, now - usage.running_since)
            if usage.paused_since is not None:
                paused[at] = paused.get(at, 0.0) + max(0.0, now - usage.paused_since)
        for (class_name, label), value in seconds.items():
            if class_name not in self.config.containers:
                continue
            row = self._bill(class_name, value, paused.get((class_name, label), 0.0),
                             self.egress_totals.get((class_name, label), 0))
            for field, family in families.items():
                family.add_metric([class_name, label], row[field] * _TO_BASE_UNITS.get(field, 1.0))
        return families.values()

    @staticmethod
    def _families() -> dict[str, CounterMetricFamily]:
        def counter(name: str, doc: str, prefix: str = "proxy_container_usage_") -> CounterMetricFamily:
            return CounterMetricFamily(prefix + name, doc, labels=[CLASS, "key"])

        return {
            "running_seconds": counter("running_seconds", "Seconds instances ran (paused or not)."),
            "paused_seconds": counter("paused_seconds", "Seconds instances were paused (no CPU billed)."),
            "memory_gib_seconds": counter("memory_byte_seconds", "Memory billed, byte-seconds."),
            "vcpu_seconds": counter("vcpu_seconds", "CPU billed, vCPU-seconds."),
            "disk_gb_seconds": counter("disk_byte_seconds", "Disk billed, byte-seconds."),
            "egress_bytes": counter("egress_bytes", "Response bytes sent to clients.", "proxy_container_"),
            "estimated_cost_usd": counter("estimated_cost_usd", "Estimated cost at the configured prices."),
        }
