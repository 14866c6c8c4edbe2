"""Live config reload (proxy/reload.py) and rollouts of a changed class (proxy/scale/rollout.py) on the stub
backend: a bad file changes nothing; a changed env rolls every running key over with no failed request and at
most `max_surge` extra instances; routes, classes and policies change live; `ctl reload` and `ctl rollout`."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from typing import Any

import pytest

from backends.stub import StubBackend
from prometheus_client.parser import text_string_to_metric_families

from proxy.lifecycle.events import State
from tests.support.admin import AUTH, ROOT, TOKEN
from tests.support.face import NAVIGATE
from tests.proxy.test_h2 import _curl as h2_get
from tests.support.rollout import Deployed, Traffic, deploy, file_config

KEYS = [f"r{i}" for i in range(10)]


@pytest.fixture
async def stub(aiohttp_client: Any, tmp_path: Any) -> Any:
    async def make(**kw: Any) -> tuple[Deployed, StubBackend]:
        backend = StubBackend()
        return await deploy(aiohttp_client, tmp_path, file_config("model_service", start_timeout="10s", **kw),
                            backend), backend
    return make


async def warm(d: Deployed, keys: list[str]) -> None:
    for key in keys:
        assert (await d.client.get(f"/k/{key}/api/container-info")).status == 200


async def test_a_bad_file_changes_nothing_and_names_the_field(stub):
    d, _ = await stub()
    await warm(d, KEYS[:2])
    before = d.proxy.config
    d.write(lambda raw: raw["containers"]["web"].update(sleep_after="soon"))
    status, body = await d.reload()
    assert status == 422 and body["applied"] is False, body
    assert "containers.web.sleep_after" in body["reason"], body
    d.write(text="containers: [unclosed")
    status, body = await d.reload()
    assert status == 422 and "invalid YAML" in body["reason"], body
    assert d.proxy.config is before
    assert all(m.state is State.RUNNING and m.klass.spec.generation == 0 for m in d.proxy.registry)
    assert (await d.client.get("/k/r0/api/container-info")).status == 200
    status, body = await d.reload()  # nothing is applied without the token
    unauthorized = await d.admin.post("/admin/config/reload")
    assert unauthorized.status == 401


async def test_a_policy_change_applies_at_once_and_a_restart_field_is_named(stub):
    d, _ = await stub()
    await warm(d, KEYS[:1])
    manager = d.proxy.registry.peek("r0", "web")

    def change(raw: dict[str, Any]) -> None:
        raw["containers"]["web"]["sleep_after"] = "7m"
        raw["server"]["port"] = 1  # the listen port: needs a restart
    d.write(change)
    status, body = await d.reload()
    assert status == 200 and body["applied"], body
    assert body["changed"] == ["web"] and body["rollouts"] == [] and "server.port" in body["restart_needed"]
    assert manager is not None and manager.sleep_after == 420 and manager.state is State.RUNNING
    assert d.proxy.config.port != 1 and manager.klass.spec.generation == 0


async def test_surge_rolls_every_key_with_no_failed_request(stub):
    d, backend = await stub(rollout={"strategy": "surge", "steps": [10, 50, 100], "max_surge": 2})
    await warm(d, KEYS)
    traffic = Traffic(d.client, KEYS)
    traffic.start()
    await asyncio.sleep(0.3)
    d.write(lambda raw: raw["containers"]["web"]["env"].update(API_TITLE="two"))
    status, body = await d.reload()
    assert status == 200 and body["rollouts"] == ["web"], body
    peak = 0
    for _ in range(1500):  # ten keys, two at a time, each a start and a drain: seconds on the stub
        peak = max(peak, len(backend._runners))
        rollout = d.proxy.rollouts.current["web"]
        if rollout.state == "done" and set(traffic.latest().values()) == {"two"}:
            break
        await asyncio.sleep(0.02)
    await traffic.stop()
    assert rollout.state == "done", rollout.status()
    assert traffic.failures == [], traffic.failures[:5]
    assert set(traffic.latest().values()) == {"two"}
    for key in KEYS:  # one switch per key: once new, never old again
        seen = traffic.seen[key]
        assert seen[seen.index("two"):] == ["two"] * (len(seen) - seen.index("two")), key
    assert len(KEYS) < peak <= len(KEYS) + 2, peak
    assert len(backend._runners) == len(KEYS)
    status_body = await (await d.client.get("/container-status")).json()
    assert status_body["generations"] == {"web": {"1": len(KEYS)}}
    assert {entry["generation"] for entry in status_body["keys"]} == {1}
    metrics = await (await d.client.get("/metrics")).text()
    assert 'proxy_rollout_instances{container_class="web",generation="1",state="running"} 10.0' in metrics


async def test_a_never_ready_spec_halts_with_the_old_instances_serving(stub):
    d, backend = await stub(rollout={"steps": [20, 100]})
    await warm(d, KEYS[:5])
    halted: list[dict[str, Any]] = []
    d.proxy.hooks.on("rollout_halted", halted.append)
    d.write(lambda raw: (raw["containers"]["web"]["readiness"].update(path="/never"),
                         raw["containers"]["web"].update(start_timeout="1s"),
                         raw["containers"]["web"]["env"].update(API_TITLE="broken")))
    status, body = await d.reload()
    assert status == 200 and body["rollouts"] == ["web"], body
    rollout = d.proxy.rollouts.current["web"]
    for _ in range(500):
        if rollout.state == "halted":
            break
        await asyncio.sleep(0.02)
    assert rollout.state == "halted" and len(rollout.done) == 0 and len(rollout.failed) == 1, rollout.status()
    assert halted and halted[0]["container"] == "web" and halted[0]["generation"] == 1
    for key in KEYS[:5]:
        response = await d.client.get(f"/k/{key}/api/container-info")
        assert response.status == 200 and (await response.json())["api_title"] == "one"
    assert len(backend._runners) == 5  # the failed new instance was stopped
    metrics = await (await d.client.get("/metrics")).text()
    assert 'proxy_rollout_halted_total{container_class="web"} 1.0' in metrics
    undo = await d.admin.post("/admin/rollouts/web/undo", headers=AUTH)
    assert undo.status == 200 and (await undo.json())["generation"] == 2


async def test_replace_strategy_and_a_stopped_key_takes_the_new_spec(stub):
    d, backend = await stub(rollout={"strategy": "replace"})
    await warm(d, KEYS[:3])
    stopped = d.proxy.registry.peek("r0", "web")
    assert stopped is not None
    await stopped.stop(__import__("proxy.lifecycle.events", fromlist=["StopReason"]).StopReason.ADMIN)
    d.write(lambda raw: raw["containers"]["web"]["env"].update(API_TITLE="two"))
    assert (await d.reload())[0] == 200
    rollout = d.proxy.rollouts.current["web"]
    for _ in range(500):
        if rollout.state == "done":
            break
        await asyncio.sleep(0.02)
    assert rollout.state == "done" and sorted(rollout.done) == ["r1", "r2"], rollout.status()
    for key in KEYS[:3]:
        assert (await (await d.client.get(f"/k/{key}/api/container-info")).json())["api_title"] == "two"
    assert len(backend._runners) == 3


async def test_routes_and_classes_change_live(stub):
    d, _ = await stub()
    await warm(d, KEYS[:2])

    def change(raw: dict[str, Any]) -> None:
        raw["containers"]["other"] = dict(raw["containers"]["web"])
        raw["routes"] = [{"path": "/k/{id}/{tail:.*}", "container": "other", "key": "{id}",
                          "upstream_path": "/{tail}"}]
    d.write(change)
    status, body = await d.reload()
    assert status == 200 and body["added"] == ["other"] and body["routes"] == 1, body
    assert (await d.client.get("/k/r0/api/container-info")).status == 200
    assert d.proxy.registry.peek("r0", "other") is not None  # the route now names the new class
    d.write(lambda raw: (raw.update(routes=[{"path": "/x/{tail:.*}", "container": "web", "key": "x"}])))
    status, body = await d.reload()
    assert status == 200 and body["removed"] == [] and body["restart_needed"] == [], body
    assert (await d.client.get("/k/r0/api/container-info")).status == 404  # the removed route stops matching
    d.write(lambda raw: raw["containers"].pop("other"))
    status, body = await d.reload()
    assert status == 200 and body["removed"] == ["other"], body
    for _ in range(200):
        if not d.proxy.background:
            break
        await asyncio.sleep(0.02)
    assert all(m.klass.name == "web" for m in d.proxy.registry)


async def test_ctl_reload_and_rollout_status(stub):
    d, _ = await stub()
    await warm(d, KEYS[:1])
    url = str(d.admin.make_url("")).rstrip("/")
    d.write(lambda raw: raw["containers"]["web"]["env"].update(API_TITLE="two"))

    async def ctl(*args: str) -> tuple[int, str]:
        env = {**os.environ, "LAZY_PROXY_ADMIN_TOKEN": TOKEN}
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "proxy", "ctl", "--admin", url, *args,
                                                    cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode or 0, (out + err).decode()
    code, out = await ctl("reload")
    assert code == 0 and '"rollouts": [\n    "web"' in out, out
    code, out = await ctl("rollout", "status")
    assert code == 0 and '"container_class": "web"' in out, out
    code, out = await ctl("rollout", "pause")
    assert code != 0 and "needs the container class" in out


async def fast_count(d: Deployed, route: str) -> float:
    """Requests of `route` the fast path served (the rest took the aiohttp path)."""
    text = await (await d.client.get("/metrics")).text()
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "proxy_fast_path_requests_total" and sample.labels.get("route") == route)


async def test_a_route_on_a_new_path_serves_at_once_on_both_paths_and_a_removed_one_stops(stub):
    d, _ = await stub()
    await warm(d, KEYS[:1])
    new = "/n/{id}/{tail:.*}"
    d.write(lambda raw: raw["routes"].extend([
        {"path": new, "container": "web", "key": "n-{id}", "upstream_path": "/{tail}"},
        # later in the file but more specific than /k/{id}/...: a restart serves it first (aiohttp's longest prefix)
        {"path": "/k/special/api/container-info", "container": "web", "key": "sp",
         "upstream_path": "/api/container-info"}]))
    status, body = await d.reload()
    assert status == 200 and body["routes"] == 3 and body["restart_needed"] == [], body
    cold = await d.client.get("/n/a/api/container-info")  # a key-templated new path starts its key
    assert cold.status == 200 and cold.headers["X-Proxy-Cold-Start"] == "1"
    assert d.proxy.registry.peek("n-a", "web") is not None
    assert (await d.client.head("/n/a/api/container-info")).status == 200  # HEAD: the aiohttp path
    assert await fast_count(d, new) == 0
    for _ in range(3):  # warm GETs: the fast path, which sees the new path too
        assert (await d.client.get("/n/a/api/container-info")).status == 200
    assert await fast_count(d, new) == 3
    status, _, _, version = await h2_get(d.client.server.port, "/n/a/api/container-info")
    assert (status, version) == (200, "2")  # HTTP/2 resolves with the fast path's router
    special = await d.client.get("/k/special/api/container-info")
    assert special.status == 200 and d.proxy.registry.peek("sp", "web") is not None
    assert d.proxy.registry.peek("special", "web") is None  # not taken by /k/{id}/... (registered first)
    assert (await d.client.get("/k/r0/api/container-info")).status == 200

    d.write(lambda raw: raw.update(routes=raw["routes"][:1]))  # both removed again
    status, body = await d.reload()
    assert status == 200 and body["routes"] == 1 and body["restart_needed"] == [], body
    for _ in range(2):  # a warm key's path: the fast path no longer matches it, nor does aiohttp
        gone = await d.client.get("/n/a/api/container-info")
        assert gone.status == 404, await gone.text()
    assert await fast_count(d, new) == 3
    assert (await h2_get(d.client.server.port, "/n/a/api/container-info"))[0] == 404
    assert (await d.client.get("/k/special/api/container-info")).status == 200  # falls through, as after a restart
    assert d.proxy.registry.peek("special", "web") is not None

    d.write(lambda raw: raw["routes"].insert(0, {"path": new, "container": "web", "key": "n-{id}",
                                                 "upstream_path": "/{tail}"}))
    status, body = await d.reload()  # a path removed and added again
    assert status == 200 and body["routes"] == 2, body
    assert (await d.client.get("/n/a/api/container-info")).status == 200
    assert await fast_count(d, new) == 4


async def test_a_waiting_page_added_by_reload_serves_its_page_and_endpoints(stub):
    d, _ = await stub()
    assert d.proxy.waiting is None  # no route had one at start-up: its endpoints were not registered
    d.write(lambda raw: raw["routes"].append({"path": "/w/{id}/{tail:.*}", "container": "web", "key": "w-{id}",
                                              "upstream_path": "/{tail}", "waiting_page": {"after": "0s"}}))
    status, body = await d.reload()
    assert status == 200 and body["restart_needed"] == [], body
    page = await d.client.get("/w/a/api/container-info", headers=NAVIGATE)
    text = await page.text()
    assert page.status == 503 and page.headers["Content-Type"].startswith("text/html"), text
    status_url = re.search(r'statusUrl = "(/\.lazy-proxy/wait/[A-Za-z0-9_-]+)"', text)
    assert status_url is not None, text
    snapshot = await d.client.get(status_url.group(1))  # the endpoint the reload indexed
    assert snapshot.status == 200 and (await snapshot.json())["app"] == "w-a"
    manager = d.proxy.registry.peek("w-a", "web")
    assert manager is not None
    await manager.ensure_running()
    served = await d.client.get("/w/a/api/container-info", headers=NAVIGATE)
    assert served.status == 200
    assert (await d.client.get("/k/r0/api/container-info")).status == 200  # the other route: no page, no change
