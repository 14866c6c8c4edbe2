"""The usage meter: what the seed's platform bills by, per key, from running time and instance type.

Running time counts from ready (or adopted) until stopped. Counters are computed at scrape time,
so an instance that is still running is billed up to the second.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from proxy.config import Config
from proxy.events import Event, EventBus, Happening, Transition
from proxy.metrics import KeyLabels


@dataclass(slots=True)
class Usage:
    container: str
    seconds: float = 0.0
    running_since: float | None = None

    def total(self, now: float) -> float:
        return self.seconds + (now - self.running_since if self.running_since is not None else 0.0)


# /container-status reports the seed's billing units (GiB-s, GB-s); Prometheus wants base units (bytes).
_TO_BASE_UNITS = {"memory_gib_seconds": 2.0**30, "disk_gb_seconds": 1e9}


class UsageMeter(Collector):
    def __init__(self, config: Config, bus: EventBus, key_label: KeyLabels) -> None:
        self.config = config
        self.key_label = key_label
        self.usage: dict[tuple[str, str], Usage] = {}  # (container class, key)
        bus.subscribe(self._on_event)

    def _on_event(self, event: Event) -> None:
        if not isinstance(event, Transition) or event.happening is None:
            return
        usage = self.usage.setdefault((event.container, event.key), Usage(event.container))
        if event.happening in (Happening.STARTED, Happening.ADOPTED) and usage.running_since is None:
            usage.running_since = event.timestamp
        elif event.happening in (Happening.STOPPED, Happening.CRASHED) and usage.running_since is not None:
            usage.seconds += event.timestamp - usage.running_since
            usage.running_since = None

    def report(self, container: str, key: str, now: float | None = None) -> dict[str, float] | None:
        usage = self.usage.get((container, key))
        if usage is None:
            return None
        cls = self.config.containers[usage.container]
        prices = self.config.pricing
        seconds = usage.total(time.time() if now is None else now)
        memory = seconds * cls.spec.resources.memory_gib
        vcpu = seconds * cls.spec.resources.cpus
        disk = seconds * cls.disk_gb
        cost = memory * prices.memory_gib_second + vcpu * prices.vcpu_second + disk * prices.disk_gb_second
        return {"running_seconds": seconds, "memory_gib_seconds": memory, "vcpu_seconds": vcpu,
                "disk_gb_seconds": disk, "estimated_cost_usd": cost}

    def describe(self) -> Iterable[CounterMetricFamily]:
        return list(self._families().values())

    def collect(self) -> Iterable[CounterMetricFamily]:
        families = self._families()
        now = time.time()
        totals: dict[tuple[str, str], dict[str, float]] = {}
        for (container, key), usage in list(self.usage.items()):
            report = self.report(container, key, now)
            assert report is not None
            row = totals.setdefault((usage.container, self.key_label(key)), dict.fromkeys(families, 0.0))
            for field in families:
                row[field] += report[field]
        for labels, row in totals.items():
            for field, family in families.items():
                family.add_metric(list(labels), row[field] * _TO_BASE_UNITS.get(field, 1.0))
        return families.values()

    @staticmethod
    def _families() -> dict[str, CounterMetricFamily]:
        def counter(name: str, doc: str) -> CounterMetricFamily:
            return CounterMetricFamily(f"proxy_container_usage_{name}", doc, labels=["container", "key"])

        return {
            "running_seconds": counter("running_seconds", "Seconds instances ran."),
            "memory_gib_seconds": counter("memory_byte_seconds", "Memory billed, byte-seconds."),
            "vcpu_seconds": counter("vcpu_seconds", "CPU billed, vCPU-seconds."),
            "disk_gb_seconds": counter("disk_byte_seconds", "Disk billed, byte-seconds."),
            "estimated_cost_usd": counter("estimated_cost_usd", "Estimated cost at the configured prices."),
        }
