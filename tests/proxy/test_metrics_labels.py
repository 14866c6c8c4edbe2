"""Per-key metric labels a client cannot game, and usage state that stays bounded whatever keys arrive."""

from __future__ import annotations

import asyncio
from typing import Mapping

import pytest
from aiohttp import web

from proxy.config.schema import ConfigError, parse_config
from proxy.lifecycle.events import EventBus, Happening, State, StopReason, Transition
from proxy.observe.metrics import OTHER, KeyLabels, named_keys
from proxy.observe.usage import UsageMeter


@pytest.fixture
def backend_kind() -> str:
    return "stub"


def create_app(env: Mapping[str, str]) -> web.Application:
    """A stub instance that starts in about a millisecond (the model service would load its model)."""

    async def anything(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    return app


LIGHT = {"image": "stub:tests.proxy.test_metrics_labels:create_app", "readiness": {"path": "/ready", "interval": "2ms"},
         "max_instances": 2000}


def label_set(metrics: dict, name: str) -> set[str]:
    return {dict(labels)["key"] for (n, labels) in metrics if n == name}


async def test_a_thousand_made_up_keys_take_no_label_from_configured_ones(make_proxy):
    h = await make_proxy(svc={**LIGHT, "sleep_after": "0", "keepalive": {"schedule": "1h", "keys": ["warmed"]},
                              "cron": [{"schedule": "1h", "key": "nightly"}]},
                         config={"metrics": {"key_labels": ["vip"]}})
    named = {"shared", "lb#0", "lb#1", "lb#2", "warmed", "nightly", "vip"}
    made_up = [f"evil{i:04d}" for i in range(1000)]
    for batch in range(0, len(made_up), 100):  # hostile clients first: under first-come slots they would win
        codes = await asyncio.gather(*(h.client.get(f"/k/{key}/x") for key in made_up[batch:batch + 100]))
        assert {resp.status for resp in codes} == {200}
    for path in ("/k/vip/x", "/k/vip/y", "/api/x", "/lb/x"):
        assert (await h.client.get(path)).status == 200
    m = await h.metrics()
    svc = ("container_class", "svc")
    assert label_set(m, "proxy_container_starts_total") == named | {OTHER}
    assert label_set(m, "proxy_container_usage_running_seconds_total") == named | {OTHER}
    assert label_set(m, "proxy_container_in_flight") == named | {OTHER}
    assert m[("proxy_container_starts_total", (svc, ("key", OTHER)))] == 1000
    assert m[("proxy_container_starts_total", (svc, ("key", "vip")))] == 1
    assert m[("proxy_container_starts_total", (svc, ("key", "shared")))] == 1
    assert m[("proxy_container_starts_total", (svc, ("key", "lb#0")))] == 1
    assert m[("proxy_container_class_starts_total", (svc,))] == 1003
    assert m[("proxy_container_running_instances", (svc,))] == 1003
    # The per-key view stays complete where it belongs: /container-status (paged: 500 keys unless asked for more).
    status = await (await h.client.get("/container-status?limit=5000")).json()
    assert status["next"] is None
    assert {e["key"] for e in status["keys"]} >= set(made_up) | {"vip", "shared"}


def test_named_keys_come_from_config_only():
    config = parse_config({
        "metrics": {"key_labels": ["alice", "bob"]},
        "containers": {"w": {"image": "x", "keepalive": {"schedule": "30s", "keys": ["kept"]},
                             "cron": [{"schedule": "0 * * * *", "key": "batch"}]},
                       "v": {"image": "x"}},
        "routes": [{"path": "/a/{tail:.*}", "container": "w", "key": "shared"},
                   {"path": "/k/{id}/{tail:.*}", "container": "w", "key": "{id}"},
                   {"path": "/lb/{tail:.*}", "container": "v", "key": "pool", "mode": "lb", "instances": 2}],
    })
    assert named_keys(config) == {"w": ("shared", "kept", "batch", "alice", "bob"),
                                  "v": ("pool#0", "pool#1", "alice", "bob")}
    labels = KeyLabels.from_config(config)
    assert labels("w", "shared") == "shared" and labels("w", "alice") == "alice"
    assert labels("v", "shared") == OTHER  # a key belongs to its class
    assert labels("w", "anything") == OTHER and labels("nope", "shared") == OTHER
    assert labels.labels("v") == ("pool#0", "pool#1", "alice", "bob", OTHER)


def test_key_label_limit_caps_the_allowlist():
    base = {"containers": {"w": {"image": "x"}}, "routes": [{"path": "/a", "container": "w"}]}
    ok = parse_config({**base, "metrics": {"key_labels": ["a", "b"], "key_label_limit": 2}})
    assert ok.key_labels == ("a", "b")
    with pytest.raises(ConfigError) as caught:
        parse_config({**base, "metrics": {"key_labels": ["a", "b", "c"], "key_label_limit": 2}})
    assert caught.value.field == "metrics.key_labels"
    with pytest.raises(ConfigError) as caught:
        parse_config({**base, "metrics": {"key_labels": ["../etc"]}})
    assert caught.value.field.startswith("metrics.key_labels")


def _transition(key: str, happening: Happening, at: float) -> Transition:
    old, new = (State.STARTING, State.RUNNING) if happening is Happening.STARTED else (State.STOPPING, State.STOPPED)
    return Transition(key, "w", old, new, 0.0, happening=happening, timestamp=at,
                      stop_reason=None if happening is Happening.STARTED else StopReason.IDLE)


def _running_seconds(meter: UsageMeter) -> dict[str, float]:
    family = next(f for f in meter.collect() if f.name == "proxy_container_usage_running_seconds")
    return {s.labels["key"]: s.value for s in family.samples if s.name.endswith("_total")}


def test_usage_detail_expires_and_is_capped_while_counters_keep_counting():
    config = parse_config({"metrics": {"key_labels": ["vip"]}, "containers": {"w": {"image": "x"}},
                           "routes": [{"path": "/k/{id}", "container": "w", "key": "{id}"}]})
    bus = EventBus()
    now = [1000.0]
    meter = UsageMeter(config, bus, KeyLabels.from_config(config), retention=3600, max_stopped=100,
                       clock=lambda: now[0])
    assert _running_seconds(meter) == {"vip": 0.0, OTHER: 0.0}  # from zero, before any key ran
    for i in range(500):  # 500 keys, each runs 2 s
        bus.emit(_transition(f"k{i}", Happening.STARTED, now[0]))
        bus.emit(_transition(f"k{i}", Happening.STOPPED, now[0] + 2))
        now[0] += 3
    bus.emit(_transition("vip", Happening.STARTED, now[0]))
    now[0] += 10
    assert len(meter.stopped) == 100 and len(meter) == 101  # capped: the longest-stopped went first
    assert meter.report("w", "k0") is None and meter.report("w", "k499")["running_seconds"] == 2
    assert meter.report("w", "vip")["running_seconds"] == pytest.approx(10)  # running: never dropped
    before = _running_seconds(meter)
    assert before == {"vip": pytest.approx(10), OTHER: pytest.approx(1000)}  # dropped detail is still counted
    now[0] += 7200  # past the retention: every stopped key's detail goes, the counters stay
    after = _running_seconds(meter)
    assert len(meter.stopped) == 0 and meter.report("w", "k499") is None
    assert after[OTHER] == pytest.approx(1000) and after["vip"] == pytest.approx(7210)
    bus.emit(_transition("k0", Happening.STARTED, now[0]))  # an expired key comes back: counts on from there
    bus.emit(_transition("k0", Happening.STOPPED, now[0] + 5))
    assert meter.report("w", "k0")["running_seconds"] == 5
    assert _running_seconds(meter)[OTHER] == pytest.approx(1005)


def test_a_paused_instance_is_billed_for_memory_but_not_cpu():
    config = parse_config({"containers": {"w": {"image": "x", "instance_type": "basic"}},
                           "routes": [{"path": "/k/{id}", "container": "w", "key": "{id}"}]})
    bus = EventBus()
    now = [1000.0]
    meter = UsageMeter(config, bus, KeyLabels.from_config(config), clock=lambda: now[0])

    def pause(paused: bool, at: float) -> None:
        old, new = (State.RUNNING, State.PAUSED) if paused else (State.PAUSED, State.RUNNING)
        bus.emit(Transition("k", "w", old, new, 0.0, timestamp=at))

    bus.emit(_transition("k", Happening.STARTED, 1000.0))
    pause(True, 1010.0)
    now[0] = 1040.0  # paused for 30 s so far: the open period is billed up to now
    open_period = meter.report("w", "k")
    assert open_period["running_seconds"] == 40 and open_period["paused_seconds"] == 30
    assert open_period["vcpu_seconds"] == pytest.approx(10 * 0.25)
    assert open_period["memory_gib_seconds"] == pytest.approx(40 * 1.0)
    pause(False, 1050.0)
    bus.emit(_transition("k", Happening.STOPPED, 1060.0))  # 60 s running, 40 of them paused
    now[0] = 2000.0
    closed = meter.report("w", "k")
    assert closed["running_seconds"] == 60 and closed["paused_seconds"] == 40
    assert closed["vcpu_seconds"] == pytest.approx(20 * 0.25)
    family = next(f for f in meter.collect() if f.name == "proxy_container_usage_vcpu_seconds")
    assert sum(s.value for s in family.samples if s.name.endswith("_total")) == pytest.approx(20 * 0.25)
