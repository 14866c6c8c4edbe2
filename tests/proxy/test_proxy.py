"""The proxy surface on the stub backend: keys, limits, headers, own endpoints, streaming bodies."""

from __future__ import annotations

import hashlib
import resource

import pytest
from yarl import URL

from proxy.lifecycle.events import State


@pytest.fixture
def backend_kind() -> str:
    return "stub"


@pytest.mark.parametrize(
    "path",
    [
        "/k/..%2F..%2Fetc/api/health",
        "/k/%2e%2e/api/health",
        "/k/..hidden/api/health",
        "/k/a%00b/api/health",
        "/k/" + "a" * 300 + "/api/health",
        "/k/caf%C3%A9/api/health",
        "/k/-leading-dash/api/health",
        "/k/sp%20ace/api/health",
    ],
)
async def test_hostile_keys_get_400_and_never_reach_a_backend(make_proxy, path):
    h = await make_proxy()
    resp = await h.client.get(URL(path, encoded=True))  # sent as written, no client-side normalising
    body = await resp.json()
    assert resp.status == 400, body
    assert body["error"] == "invalid key" and body["reason"]
    assert h.proxy.registry.managers == {}  # no manager, so no backend call
    assert h.backend.specs == {}


async def test_body_over_limit_gets_413_by_header_and_by_stream(make_proxy):
    h = await make_proxy()  # max_body_size 1MiB
    resp = await h.client.post("/s/debug/echo", data=b"x" * (2 * 2**20))
    body = await resp.json()
    assert resp.status == 413 and body["error"] == "request body too large"
    assert h.proxy.registry.managers == {}  # refused before waking anything

    async def chunked():  # no Content-Length: caught while streaming
        for _ in range(40):
            yield b"y" * 65536

    resp = await h.client.post("/s/debug/echo", data=chunked())
    assert resp.status == 413
    resp = await h.client.post("/s/debug/echo", data=b"z" * 1000)
    assert resp.status == 200 and (await resp.json())["bytes"] == 1000
    assert h.manager("shared").in_flight == 0


async def test_200mb_upload_streams_in_bounded_memory(make_proxy):
    h = await make_proxy(config={"server": {"max_body_size": "300MiB"}})
    assert (await h.client.get("/s/v2/health/ready")).status == 200
    block = bytes(range(256)) * 4096  # 1 MiB
    digest = hashlib.sha256()
    total = 200

    async def body():
        for _ in range(total):
            digest.update(block)
            yield block

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    resp = await h.client.post("/s/debug/echo", data=body())
    result = await resp.json()
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert resp.status == 200
    assert result == {"bytes": total * 2**20, "sha256": digest.hexdigest()}
    assert grown_mib < 100, f"peak RSS grew {grown_mib:.0f} MiB for a 200 MiB body"


async def test_forwarded_and_hop_by_hop_headers(make_proxy):
    h = await make_proxy()
    resp = await h.client.get("/s/debug/headers?x=1", headers={
        "X-Custom": "kept", "Connection": "keep-alive, X-Drop-Me", "X-Drop-Me": "gone",
        "Proxy-Authorization": "Basic abc", "X-Forwarded-For": "10.1.1.1",
    })
    body = await resp.json()
    seen = {k.lower(): v for k, v in body["headers"].items()}
    assert seen["x-custom"] == "kept"
    assert "x-drop-me" not in seen and "proxy-authorization" not in seen
    assert seen["x-forwarded-for"] == "10.1.1.1, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"].startswith("127.0.0.1:")
    assert body["path"] == "/debug/headers?x=1"  # prefix stripped, query kept


async def test_upstream_slower_than_timeout_gives_504(make_proxy):
    h = await make_proxy(config={"server": {"upstream_timeout": "500ms"}})
    resp = await h.client.get("/s/debug/sleep?seconds=3")
    body = await resp.json()
    assert resp.status == 504 and body["error"] == "upstream error"
    assert h.manager("shared").state is State.RUNNING  # a slow answer is not a dead instance
    assert (await h.client.get("/s/api/health")).status == 200


async def test_own_endpoints(make_proxy):
    h = await make_proxy()
    assert (await (await h.client.get("/health")).json()) == {"status": "ok"}
    await h.client.get("/k/alpha/api/health")
    status = await (await h.client.get("/container-status")).json()
    entry = next(e for e in status["keys"] if e["key"] == "alpha")
    assert entry["state"] == "running" and entry["in_flight"] == 0 and entry["start_count"] == 1
    assert entry["address"].startswith("http://127.0.0.1:") and entry["last_activity"] > 0
    assert entry["health"]["ok"] is True
    info = await (await h.client.get("/info")).json()
    assert info["backend"] == "stub" and {r["path"] for r in info["routes"]} >= {"/api/{tail:.*}"}
    resp = await h.client.get("/nowhere")
    assert resp.status == 404 and (await resp.json())["error"] == "not found"


async def test_metrics_match_what_happened(make_proxy):
    h = await make_proxy(svc={"sleep_after": "300ms"}, config={"metrics": {"key_labels": ["m1"]}})
    for key in ("m1", "m2"):
        assert (await h.client.get(f"/k/{key}/api/health")).status == 200
    assert (await h.client.get("/k/m1/debug/status?code=500")).status == 500
    assert (await h.client.get("/k/bad..key/api/health")).status == 400
    await h.wait_for(lambda: all(m.state is State.STOPPED for m in h.proxy.registry), timeout=10)
    route = "/k/{id}/{tail:.*}"
    svc = ("container_class", "svc")
    m = await h.metrics()
    assert m[("proxy_requests_total", (("code", "200"), ("route", route)))] == 2
    assert m[("proxy_requests_total", (("code", "500"), ("route", route)))] == 1
    assert m[("proxy_requests_total", (("code", "400"), ("route", route)))] == 1
    assert m[("proxy_request_duration_seconds_count", (("route", route),))] == 4
    assert m[("proxy_container_class_starts_total", (svc,))] == 2
    assert m[("proxy_container_starts_total", (svc, ("key", "m1")))] == 1  # named in metrics.key_labels
    assert m[("proxy_container_starts_total", (svc, ("key", "_other")))] == 1  # m2: named nowhere
    assert m[("proxy_container_start_duration_seconds_count", (svc,))] == 2
    assert m[("proxy_container_stops_total", (svc, ("reason", "idle")))] == 2
    assert m[("proxy_container_running_instances", (svc,))] == 0
    assert m[("proxy_container_max_instances", (svc,))] == 50
    assert m[("proxy_cold_start_wait_seconds_count", (svc,))] == 2
    assert m[("proxy_container_managers", (svc, ("state", "stopped")))] == 2
    assert m[("proxy_container_managers", (svc, ("state", "running")))] == 0
    usage = m[("proxy_container_usage_running_seconds_total", (svc, ("key", "m1")))]
    assert 0.25 < usage < 5
    assert not any(name == "container" for (_, labels) in m for name, _ in labels)  # k8s would rename it


async def test_series_exist_at_zero_before_anything_happens(make_proxy):
    """increase() only sees a first 0 -> 1 if the 0 was scraped: every rated series starts at zero."""
    h = await make_proxy(config={"metrics": {"key_labels": ["vip"]}})
    m = await h.metrics()
    svc = ("container_class", "svc")
    zero = [("proxy_container_class_starts_total", (svc,)),
            ("proxy_container_start_failures_total", (svc,)),
            ("proxy_container_start_duration_seconds_count", (svc,)),
            ("proxy_container_start_duration_seconds_bucket", (svc, ("le", "0.005"))),
            ("proxy_cold_start_wait_seconds_count", (svc,)),
            ("proxy_container_running_instances", (svc,))]
    zero += [("proxy_container_stops_total", (svc, ("reason", r))) for r in ("idle", "shutdown", "error", "admin")]
    # Per key: the keys config names (fixed route keys, lb members, the allowlist) and `_other`.
    for key in ("shared", "lb#0", "lb#1", "lb#2", "vip", "_other"):
        zero += [(name, (svc, ("key", key))) for name in (
            "proxy_container_starts_total", "proxy_container_in_flight", "proxy_container_usage_running_seconds_total",
            "proxy_container_usage_estimated_cost_usd_total")]
    for route in ("/api/{tail:.*}", "/k/{id}/{tail:.*}"):
        zero += [("proxy_requests_total", (("code", code), ("route", route))) for code in ("200", "503", "504")]
        zero += [("proxy_request_duration_seconds_count", (("route", route),)),
                 ("proxy_fast_path_requests_total", (("route", route),))]
    zero += [("proxy_requests_total", (("code", "404"), ("route", "_unmatched")))]
    missing = [series for series in zero if series not in m]
    assert not missing
    assert all(m[series] == 0 for series in zero)
    keys = {dict(labels)["key"] for (name, labels) in m if name == "proxy_container_starts_total"}
    assert keys == {"shared", "lb#0", "lb#1", "lb#2", "vip", "_other"}


async def test_unmatched_requests_are_counted_under_their_own_route(make_proxy):
    h = await make_proxy()
    for path in ("/nowhere", "/nowhere/else", "/k"):
        assert (await h.client.get(path)).status == 404
    assert (await h.client.post("/health")).status == 405  # an own endpoint's path, not its method
    assert (await h.client.get("/health")).status == 200  # own endpoints are not counted
    assert (await h.client.get("/metrics")).status == 200
    m = await h.metrics()
    unmatched = {dict(labels)["code"]: v for (name, labels), v in m.items()
                 if name == "proxy_requests_total" and dict(labels)["route"] == "_unmatched"}
    assert unmatched == {"404": 3, "405": 1}, (
        "unmatched requests are not counted: proxy/app.py must add Metrics.unmatched_middleware "
        "(web.Application(middlewares=[proxy.metrics.unmatched_middleware, json_errors], ...))")
    routes = {dict(labels)["route"] for (name, labels) in m if name == "proxy_requests_total"}
    assert not routes & {"/health", "/metrics", "/container-status", "/info"}


async def test_shutdown_closes_open_websockets_with_1001(make_proxy):
    h = await make_proxy()
    ws = await h.client.ws_connect("/s/debug/ws")
    await ws.send_str("ping")
    assert (await ws.receive(timeout=10)).data == "ping"
    await h.proxy.close_websockets()
    msg = await ws.receive(timeout=10)
    assert msg.type.name in ("CLOSE", "CLOSED") and ws.close_code == 1001
    await h.wait_for(lambda: h.manager("shared").in_flight == 0)


async def test_query_and_encoded_path_survive_prefix_stripping(make_proxy):
    h = await make_proxy()
    resp = await h.client.get(URL("/s/debug/headers?q=a%20b&x=%26&x=2", encoded=True))
    assert (await resp.json())["path"] == "/debug/headers?q=a%20b&x=%26&x=2"


async def test_each_instance_has_its_own_pool_closed_on_stop(make_proxy):
    h = await make_proxy(svc={"sleep_after": "200ms"})
    for key in ("p1", "p2"):
        assert (await h.client.get(f"/k/{key}/api/health")).status == 200
    assert (await h.client.get("/k/p1/api/health")).status == 200  # warm: pooled keep-alive connections
    assert len(h.proxy.pools) == 2 and h.proxy.pools.fast_idle() >= 2
    await h.wait_for(lambda: all(m.state is State.STOPPED for m in h.proxy.registry))
    await h.wait_for(lambda: len(h.proxy.pools) == 0 and h.proxy.pools.fast_idle() == 0)
    assert (await h.client.get("/k/p1/api/health")).status == 200  # a fresh pool for the new instance
    assert len(h.proxy.pools) == 1


async def test_keys_belong_to_their_class_and_lb_members_are_not_addressable(make_proxy):
    """The same key on two classes' routes is two instances; a URL can never name an lb pool member."""
    svc = {"image": "model_service", "env": {"API_TITLE": "svc"}, "readiness": {"path": "/v2/health/ready"}}
    other = {**svc, "env": {"API_TITLE": "other"}}
    h = await make_proxy(config={
        "containers": {"svc": svc, "other": other},
        "routes": [{"path": "/k/{id}/{tail:.*}", "container": "svc", "key": "{id}", "upstream_path": "/{tail}"},
                   {"path": "/o/{id}/{tail:.*}", "container": "other", "key": "{id}", "upstream_path": "/{tail}"},
                   {"path": "/lb/{tail:.*}", "container": "svc", "key": "lb", "mode": "lb", "instances": 2,
                    "upstream_path": "/{tail}"}],
    })
    first = await (await h.client.get("/o/abc/api/container-info")).json()  # `other` claims abc first
    mine = await (await h.client.get("/k/abc/api/container-info")).json()
    assert (first["api_title"], mine["api_title"]) == ("other", "svc")
    assert first["instance_id"] != mine["instance_id"]
    assert {("svc", "abc"), ("other", "abc")} <= set(h.proxy.registry.managers)

    pool = {(await (await h.client.get("/lb/api/container-info")).json())["instance_id"] for _ in range(4)}
    for attempt in ("/k/lb%230/api/container-info", "/k/lb#0/api/container-info"):
        resp = await h.client.get(URL(attempt, encoded=True))
        assert resp.status in (400, 404) or (await resp.json())["instance_id"] not in pool
    resp = await h.client.get("/k/lb-0/api/container-info")  # the old member name is just another key
    assert (await resp.json())["instance_id"] not in pool
    members = [m for (c, k), m in h.proxy.registry.managers.items() if k.startswith("lb#")]
    assert members and all(m.in_flight == 0 for m in members)
