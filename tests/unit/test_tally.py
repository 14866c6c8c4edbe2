"""A request's end in one call (proxy/observe/tally.py): the same counts, egress and access line as the three
separate records, and a key label renamed by a reload is honoured from the next request."""

from __future__ import annotations

import io

from proxy.config.schema import parse_config
from proxy.lifecycle.events import EventBus, Happening, State, Transition
from proxy.observe.metrics import OTHER, KeyLabels
from proxy.observe.request_log import RequestLog
from proxy.observe.request_metrics import PROXY_CODES, RouteStats
from proxy.observe.tally import Tally
from proxy.observe.usage import UsageMeter

ROUTE = {"path": "/k/{id}", "container": "w", "key": "{id}"}


def _meter(key_labels: list[str]) -> tuple[UsageMeter, EventBus]:
    config = parse_config({"metrics": {"key_labels": key_labels}, "containers": {"w": {"image": "x"}},
                           "routes": [ROUTE]})
    bus = EventBus()
    meter = UsageMeter(config, bus, KeyLabels.from_config(config))
    bus.emit(Transition("k1", "w", State.STARTING, State.RUNNING, 0.0, happening=Happening.STARTED, timestamp=1.0))
    return meter, bus


async def test_a_tally_records_what_the_three_records_did() -> None:
    meter, _ = _meter([])
    twin, _ = _meter([])
    out, twin_out = io.StringIO(), io.StringIO()
    log, twin_log = RequestLog(out), RequestLog(twin_out)
    stats, twin_stats = RouteStats("/k/{id}", PROXY_CODES), RouteStats("/k/{id}", PROXY_CODES)
    prefix = RequestLog.prefix("/k/{id}", "k1")
    tally = Tally("k1", stats, prefix, log, meter, "w", "k1")
    ends = [(200, 0.001, "GET", "/k/k1", "127.0.0.1", "r1", 15, 0, 120),
            (502, 0.2, "POST", "/k/k1", "::1", "r2", 9, 4, 0), (404, 3.5, "GET", "/k/k1/x", "10.0.0.1", "r3", 0, 0, 77)]
    for end in ends:
        tally.end(*end)
        status, seconds, method, path, client, rid, sent, received, egress = end
        twin_stats.observe(status, seconds, True)
        if egress:
            twin.egress("w", "k1", egress)
        twin_log.request(prefix, method, path, status, seconds, client, rid, sent, received)
    log.flush()
    twin_log.flush()
    assert (stats.codes, stats.buckets, stats.total_seconds, stats.fast) == \
        (twin_stats.codes, twin_stats.buckets, twin_stats.total_seconds, twin_stats.fast) and stats.fast == 3
    assert meter.egress_totals == twin.egress_totals and meter.egress_totals[("w", OTHER)] == 197
    assert meter.report("w", "k1")["egress_bytes"] == twin.report("w", "k1")["egress_bytes"] == 197
    assert [line.split('"timestamp"')[0] for line in out.getvalue().splitlines()] == \
        [line.split('"timestamp"')[0] for line in twin_out.getvalue().splitlines()]


def test_a_key_label_a_reload_names_takes_the_egress_from_the_next_request() -> None:
    meter, _ = _meter([])
    tally = Tally("k1", RouteStats("r"), "", None, meter, "w", "k1")
    tally.end(200, 0.001, "GET", "/k/k1", "", "", 5, 0, 100)
    assert meter.egress_totals[("w", OTHER)] == 100
    meter.key_label.renamed(parse_config({"metrics": {"key_labels": ["k1"]}, "containers": {"w": {"image": "x"}},
                                          "routes": [ROUTE]}))
    tally.end(200, 0.001, "GET", "/k/k1", "", "", 5, 0, 30)
    assert meter.egress_totals[("w", "k1")] == 30 and meter.egress_totals[("w", OTHER)] == 100
    assert meter.report("w", "k1")["egress_bytes"] == 130  # the key's own detail counts both


def test_a_kept_usage_detail_follows_the_key_through_stops_restarts_and_expiry() -> None:
    """The tally keeps the key's usage detail between requests: each end counts where the meter's own `egress`
    would, whatever the meter did with the key in between (stopped, started again, its detail dropped)."""
    meter, bus = _meter([])
    twin, twin_bus = _meter([])
    tally = Tally("k1", RouteStats("r"), "", None, meter, "w", "k1")

    def both(nbytes: int) -> None:
        tally.end(200, 0.001, "GET", "/k/k1", "", "", 5, 0, nbytes)
        twin.egress("w", "k1", nbytes)
        assert meter.report("w", "k1", 50.0) == twin.report("w", "k1", 50.0)
        assert meter.egress_totals == twin.egress_totals

    def emit(old: State, new: State, happening: Happening, at: float) -> None:
        for b in (bus, twin_bus):
            b.emit(Transition("k1", "w", old, new, 0.0, happening=happening, timestamp=at))

    both(10)
    emit(State.RUNNING, State.STOPPED, Happening.STOPPED, 2.0)  # the detail moves to the stopped keys
    both(20)
    emit(State.STOPPED, State.RUNNING, Happening.STARTED, 3.0)  # and back
    both(40)
    assert meter.report("w", "k1", 50.0)["egress_bytes"] == 70
    emit(State.RUNNING, State.STOPPED, Happening.STOPPED, 4.0)
    for m in (meter, twin):
        m.retention = 0.0
        m._expire(10.0)  # noqa: SLF001 - its detail dropped, as after the retention
    assert meter.report("w", "k1") is None
    both(80)  # counted in the label's total only
    assert meter.report("w", "k1") is None and meter.egress_totals[("w", OTHER)] == 150
    emit(State.STOPPED, State.RUNNING, Happening.STARTED, 11.0)  # a fresh detail
    both(160)
    assert meter.report("w", "k1", 50.0)["egress_bytes"] == 160


def test_a_latency_lands_in_the_bucket_bisect_left_picks() -> None:
    """RouteStats.observe finds the bucket by a loop from the low end: the same one as bisect_left, at the bounds,
    between them and past the last (the +Inf bucket)."""
    from bisect import bisect_left

    from proxy.observe.request_metrics import REQUEST_BUCKETS

    edges = [b * f for b in REQUEST_BUCKETS for f in (0.999999, 1.0, 1.000001)]
    for seconds in [0.0, 1e-9, 1e9, *edges, *(i / 997 for i in range(0, 70_000, 7))]:
        stats = RouteStats("r")
        stats.observe(200, seconds, True)
        assert stats.buckets.index(1) == bisect_left(REQUEST_BUCKETS, seconds), seconds
