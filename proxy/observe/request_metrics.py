"""Per-route request metrics with a hot path of a few integer additions, exported at scrape time.

prometheus_client's Counter and Histogram take a lock on every update; at tens of thousands of
requests a second that is a measurable share of a request's CPU. Each route keeps plain counts
here (the event loop is single-threaded) and `RequestCollector` turns them into the usual families
when Prometheus scrapes.

Every route's series exist from start-up: its latency histogram, its fast-path count, and a zero
count for 200 and each status the proxy answers by itself (400 invalid key/path, 413, 499 client
gone, 500, 502/504 upstream errors, 503 not warm/start failed/capacity), so `increase()` sees a
route's first error. Other codes an instance sends appear at their first request.
"""

from __future__ import annotations

from typing import Iterable

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

# Request latency through the proxy: from 50 us (a warm fast-path hop) to a minute (cold starts, streams).
# (typed as a tuple of any length: a compiled build keeps it one Python object, not 19 floats boxed per call)
REQUEST_BUCKETS: tuple[float, ...] = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                      0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Status codes counted from zero on every proxied route: success, and what the proxy itself answers.
PROXY_CODES = (200, 400, 413, 499, 500, 502, 503, 504)
# Requests that match no route: not found, or a path whose methods do not include the request's.
UNMATCHED_CODES = (404, 405)


class RouteStats:
    """Counts for one route: by status code, a latency histogram, and how many took the fast path."""

    __slots__ = ("route", "codes", "buckets", "total_seconds", "fast")

    def __init__(self, route: str, codes: Iterable[int] = ()) -> None:
        self.route = route
        self.codes: dict[int, int] = dict.fromkeys(codes, 0)
        self.buckets = [0] * (len(REQUEST_BUCKETS) + 1)  # the last one is +Inf
        self.total_seconds = 0.0
        self.fast = 0

    def observe(self, code: int, seconds: float, fast_path: bool) -> None:
        codes = self.codes
        codes[code] = codes.get(code, 0) + 1
        index = 0  # bisect_left's, found from the low end: most answers are in the first few buckets (a compiled
        for bound in REQUEST_BUCKETS:  # build makes this a native loop, where bisect_left is a call through Python)
            if seconds <= bound:
                break
            index += 1
        self.buckets[index] += 1
        self.total_seconds += seconds
        if fast_path:
            self.fast += 1


class RequestCollector(Collector):
    def __init__(self) -> None:
        self.routes: dict[str, RouteStats] = {}

    def route(self, name: str, codes: Iterable[int] = ()) -> RouteStats:
        """The stats of route `name` (routes sharing a name share them), with `codes` counted from zero."""
        stats = self.routes.get(name)
        if stats is None:
            stats = self.routes[name] = RouteStats(name)
        for code in codes:
            stats.codes.setdefault(code, 0)
        return stats

    def describe(self) -> Iterable[CounterMetricFamily | HistogramMetricFamily]:
        return self._families()

    def _families(self) -> tuple[CounterMetricFamily, HistogramMetricFamily, CounterMetricFamily]:
        return (
            CounterMetricFamily("proxy_requests", "Proxied requests by route and status code.",
                                labels=["route", "code"]),
            HistogramMetricFamily("proxy_request_duration_seconds", "Time to answer a proxied request.",
                                  labels=["route"]),
            CounterMetricFamily("proxy_fast_path_requests", "Proxied requests served by the fast path.",
                                labels=["route"]),
        )

    def collect(self) -> Iterable[CounterMetricFamily | HistogramMetricFamily]:
        requests, duration, fast = self._families()
        for stats in list(self.routes.values()):
            for code, count in sorted(stats.codes.items()):
                requests.add_metric([stats.route, str(code)], count)
            cumulative, buckets = 0, []
            for bound, count in zip((*REQUEST_BUCKETS, float("inf")), stats.buckets, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            duration.add_metric([stats.route], buckets, stats.total_seconds)
            fast.add_metric([stats.route], stats.fast)
        return (requests, duration, fast)
