"""The dashboard tells the truth: a real Prometheus scrapes a live proxy every second, scripted traffic
makes a known number of cold starts over many keys, and each panel's PromQL (from
deploy/grafana-dashboard.json) is evaluated through Prometheus' HTTP API and compared with what the
proxy really did (its own lifecycle events).

Panels are evaluated at the timestamp of the last scrape, over a window that holds the whole run
(`$__range` and `$__rate_interval` both become that window, `$container_class` Grafana's "All"): then
`increase()` needs no extrapolation, and any difference is the metrics' fault, not the query's.
Skips without Debian's `prometheus`; fails under CI=true.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter

import pytest

from proxy.lifecycle.events import ColdWait, Event, Happening, State, Transition
from tests.support.prometheus import ROOT, START_DELAYS, Prometheus, binary, dashboard_targets, substitute

pytestmark = pytest.mark.slow

IMAGE = "stub:tests.support.prometheus:create_app"
READINESS = {"path": "/ready", "interval": "5ms", "timeout": "2s"}
CHURN_KEYS = 40  # keys started, idled out and started again each round
ROUNDS = 10
STEADY_KEYS = 7  # keys left running at the end
WARM_MISSES = 5  # warm-only requests to a cold key: 503, never a start
CONCURRENCY = 10  # cold starts at once (more, and one event loop's contention stretches every start)


@pytest.fixture
def backend_kind() -> str:
    return "stub"


def quantile(values: list[float], q: float) -> float:
    """The nearest-rank quantile: the smallest value with at least q of all values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def panel(title: str, ref: str = "A") -> str:
    found = [expr for t, r, expr in dashboard_targets() if t == title and r == ref]
    assert len(found) == 1, f"dashboard panel {title!r} {ref} not found"
    return found[0]


async def test_dashboard_panels_match_the_truth(make_proxy, tmp_path):
    binary("prometheus")
    h = await make_proxy(config={
        "metrics": {"key_labels": ["c00", "c01"]},
        "containers": {
            "churn": {"image": IMAGE, "readiness": READINESS, "sleep_after": "200ms", "max_instances": 100},
            "steady": {"image": IMAGE, "readiness": READINESS, "env": {"READY_DELAY_MS": "1"}, "sleep_after": "0"},
        },
        "routes": [
            {"name": "churn", "path": "/c/{id}/{tail:.*}", "container": "churn", "key": "{id}"},
            {"name": "steady", "path": "/s/{id}/{tail:.*}", "container": "steady", "key": "{id}"},
            {"name": "warm", "path": "/w/{tail:.*}", "container": "churn", "key": "cold", "mode": "warm"},
        ],
    })
    durations: dict[str, list[float]] = {"churn": [], "steady": []}
    waits: list[float] = []

    def truth(event: Event) -> None:
        if isinstance(event, ColdWait) and event.class_name == "churn":
            waits.append(event.seconds)
        elif isinstance(event, Transition) and event.happening is Happening.STARTED:
            durations[event.class_name].append(event.duration)

    h.proxy.bus.subscribe(truth)
    prometheus = Prometheus(tmp_path, f"127.0.0.1:{h.client.server.port}", rule_files=(ROOT / "deploy" / "rules.yml",))
    began = time.time()
    await prometheus.start()
    try:
        # The zero of every series is scraped before the first start: that is what makes increase() exact.
        await prometheus.wait_for_scrape_after("up", time.time())
        traffic_began = time.monotonic()
        sent: Counter[tuple[str, int]] = Counter()
        gate = asyncio.Semaphore(CONCURRENCY)

        async def churn_request(key: str) -> int:
            async with gate:
                return (await h.client.get(f"/c/{key}/work")).status

        for _ in range(ROUNDS):
            codes = await asyncio.gather(*(churn_request(f"c{i:02d}") for i in range(CHURN_KEYS)))
            sent.update(("churn", code) for code in codes)
            churn = [m for m in h.proxy.registry if m.klass.name == "churn"]
            await h.wait_for(lambda churn=churn: all(m.state is State.STOPPED for m in churn), timeout=15)
        for i in range(STEADY_KEYS):
            for _ in range(3):  # one cold start, then warm requests (the fast path)
                sent[("steady", (await h.client.get(f"/s/s{i}/work")).status)] += 1
        for _ in range(WARM_MISSES):
            sent[("warm", (await h.client.get("/w/x")).status)] += 1
        traffic_seconds = time.monotonic() - traffic_began
        at = await prometheus.wait_for_scrape_after("up", time.time())
        window = at - began + 5  # from before Prometheus' first scrape to the last one

        async def evaluate(expr: str, **labels: str) -> float:
            return await prometheus.value(substitute(expr, window), at, **labels)

        seconds = int(window) + 1  # the window substitute() wrote, in whole seconds
        true_starts = sum(len(d) for d in durations.values())
        results = {
            "cold_starts": await evaluate(panel("Cold starts")),
            "starts_by_class": {c: await evaluate(panel("Cold starts / s"), container_class=c) * seconds
                                for c in ("churn", "steady")},
            "p50": await evaluate(panel("Start duration (start requested -> ready)", "A"), container_class="churn"),
            "p99": await evaluate(panel("Start duration (start requested -> ready)", "C"), container_class="churn"),
            "wait_p50": await evaluate(panel("Cold-start wait seen by requests", "A"), container_class="churn"),
            "phase_stack": sum([await evaluate(panel("Start phases (mean seconds per start, stacked)"), phase=p)
                                for p in ("start", "ready")]),  # the stub's phases
            "running": await evaluate(panel("Running instances")),
            "running_by_class": {c: await evaluate(panel("Running instances by class", "A"), container_class=c)
                                 for c in ("churn", "steady")},
            "max_instances": await evaluate(panel("Running instances by class", "B"), container_class="churn"),
            "in_flight": await evaluate(panel("In flight")),
            "requests_200": await evaluate(panel("Request rate by code"), code="200") * seconds,
            "requests_503": await evaluate(panel("Request rate by code"), code="503") * seconds,
            "requests_by_route": {r: await evaluate(panel("Request rate by route"), route=r) * seconds
                                  for r in ("churn", "steady", "warm")},
            "warm_5xx_ratio": await evaluate(panel("Error ratio (5xx, and 4xx) by route"), route="warm"),
            "churn_5xx_ratio": await evaluate(panel("Error ratio (5xx, and 4xx) by route"), route="churn"),
            "idle_stops": await evaluate(panel("Stops by reason / s"), container_class="churn",
                                         reason="idle") * seconds,
        }
        true = {
            "cold_starts": true_starts,
            "p50": quantile(durations["churn"], 0.5), "p99": quantile(durations["churn"], 0.99),
            "wait_p50": quantile(waits, 0.5),
        }
        print(f"\ntraffic {traffic_seconds:.1f}s, window {seconds}s; readiness delays {START_DELAYS[0]}-"
              f"{START_DELAYS[-1]} ms, measured starts {min(durations['churn']) * 1000:.1f}-"
              f"{max(durations['churn']) * 1000:.1f} ms")
        print(f"panels: {results}\ntruth:  {true}")

        # Every panel's query is valid PromQL on a real Prometheus and shows data; the rules load and record.
        empty = [(title, ref) for title, ref, expr in dashboard_targets()
                 if not await prometheus.query(substitute(expr, window), at)]
        assert not empty, f"panels without data: {empty}"
        assert await prometheus.query("container_class:proxy_container_class_starts:rate5m", at)

        assert sent == {("churn", 200): ROUNDS * CHURN_KEYS, ("steady", 200): 3 * STEADY_KEYS,
                        ("warm", 503): WARM_MISSES}
        assert true_starts == ROUNDS * CHURN_KEYS + STEADY_KEYS  # the known number of cold starts
        assert results["cold_starts"] == pytest.approx(true_starts, rel=0.02)
        assert results["starts_by_class"]["churn"] == pytest.approx(ROUNDS * CHURN_KEYS, rel=0.02)
        assert results["starts_by_class"]["steady"] == pytest.approx(STEADY_KEYS, rel=0.02)
        assert results["p50"] == pytest.approx(true["p50"], rel=0.2)
        assert results["p99"] == pytest.approx(true["p99"], rel=0.2)
        all_starts = durations["churn"] + durations["steady"]
        assert results["phase_stack"] == pytest.approx(sum(all_starts) / len(all_starts), rel=0.001)
        assert results["running"] == STEADY_KEYS
        assert results["running_by_class"] == {"churn": 0, "steady": STEADY_KEYS} and results["max_instances"] == 100
        assert results["in_flight"] == 0
        assert results["requests_200"] == pytest.approx(ROUNDS * CHURN_KEYS + 3 * STEADY_KEYS, rel=0.02)
        assert results["requests_503"] == pytest.approx(WARM_MISSES, rel=0.02)
        assert results["requests_by_route"] == {
            "churn": pytest.approx(ROUNDS * CHURN_KEYS, rel=0.02), "steady": pytest.approx(3 * STEADY_KEYS, rel=0.02),
            "warm": pytest.approx(WARM_MISSES, rel=0.02)}
        assert results["warm_5xx_ratio"] == 1 and results["churn_5xx_ratio"] == 0
        assert results["idle_stops"] == pytest.approx(ROUNDS * CHURN_KEYS, rel=0.02)
    finally:
        await prometheus.stop()
