"""The proxy on real daemons: crashes, daemon outages, restart adoption, ownership."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import subprocess
import uuid
from pathlib import Path

import pytest

from proxy.app import PROXY, create_app
from proxy.config.schema import parse_config
from proxy.lifecycle.events import State, StopReason
from tests.support import engines
from tests.conftest import ENGINE_PARAMS, base_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=ENGINE_PARAMS)
def backend_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_container_killed_mid_request_gives_502_then_recovers(make_proxy, raw):
    h = await make_proxy()
    assert (await h.client.get("/s/v2/health/ready")).status == 200
    m = h.manager("shared")
    victim = m.instance
    slow = asyncio.create_task(h.client.get("/s/debug/sleep?seconds=20"))
    await h.wait_for(lambda: m.in_flight == 1)
    await asyncio.sleep(0.2)
    await raw.containers.container(victim.id).kill()
    resp = await slow
    body = await resp.json()
    assert resp.status == 502 and body["error"] == "upstream error" and body["reason"]
    await h.wait_for(lambda: m.state is State.STOPPED)  # noticed by inspect
    assert m.in_flight == 0
    assert await h.metric("proxy_container_stops_total", container_class="svc", reason="error") == 1
    resp = await h.client.get("/s/api/health")
    assert resp.status == 200 and resp.headers["X-Proxy-Cold-Start"] == "1"
    assert m.start_count == 2 and m.instance.id  # started again (a restart of the same container is fine)


async def test_daemon_down_gives_503_then_recovers(make_proxy, raw, backend_kind):
    h = await make_proxy()
    subprocess.run(["bash", str(ROOT / ".ci/daemons.sh"), "down", backend_kind], check=True, timeout=60)
    try:
        resps = await asyncio.gather(*(h.client.get("/k/outage/api/health") for _ in range(5)))
        for resp in resps:
            body = await resp.json()
            assert resp.status == 503 and body["reason"] == "the container runtime is unavailable", body
            assert int(resp.headers["Retry-After"]) >= 1
        assert (await h.client.get("/health")).status == 200  # the proxy itself is fine
    finally:
        subprocess.run(["bash", str(ROOT / ".ci/daemons.sh"), "up"], check=True, timeout=300)
    resp = await h.client.get("/k/outage/api/health")  # same proxy, same backend object: recovered by itself
    assert resp.status == 200, await resp.text()
    assert h.manager("outage").state is State.RUNNING


async def test_proxy_restart_adopts_running_container(make_proxy, raw, backend_kind):
    proxy_id = f"t{uuid.uuid4().hex[:10]}"
    config = parse_config(base_config(backend_kind, await engines.ensure_image(backend_kind)) | {
        "backend": {"proxy_id": proxy_id}})
    # Proxy #1 starts the instance and then "crashes": it never stops what it started.
    first = create_app(config, engines.make_backend(backend_kind, proxy_id))[PROXY]
    await first.startup()
    await first.registry.get("shared", "svc").ensure_running()
    started_id = first.registry.managers[("svc", "shared")].instance.id
    await first.prober.close()
    await first.pools.close()
    await first.backend.close()

    # Proxy #2 with the same proxy_id adopts it: no second start, no cold wait.
    h = await make_proxy(backend=engines.make_backend(backend_kind, proxy_id))
    m = h.manager("shared")
    assert m.state is State.RUNNING and m.instance.id == started_id and m.start_count == 0
    resp = await h.client.get("/s/api/health")
    assert resp.status == 200 and "X-Proxy-Cold-Start" not in resp.headers
    ours = await raw.containers.list(all=True, filters={"label": [f"proxy.instance={proxy_id}"]})
    assert [c.id for c in ours] == [started_id]
    assert await h.metric("proxy_container_running_instances", container_class="svc") == 1


async def test_a_restart_on_a_changed_config_replaces_what_runs_the_old_spec(make_proxy, raw, backend_kind):
    """Proxy #1 runs a key and crashes; the config changes (an env var) before proxy #2 starts. Proxy #2 does not
    adopt the old container (its `proxy.spec` label is not the configured spec's): it stops it, and the key's next
    request starts the configured spec. A key whose spec did not change is adopted as before."""
    proxy_id = f"t{uuid.uuid4().hex[:10]}"
    image = await engines.ensure_image(backend_kind)
    before = base_config(backend_kind, image) | {"backend": {"proxy_id": proxy_id}}
    backend = engines.make_backend(backend_kind, proxy_id)
    spec = parse_config(before).containers["svc"].spec
    old = await backend.start("shared", spec)
    await backend.close()

    after = copy.deepcopy(before)
    after["containers"]["svc"]["env"]["RELEASE"] = "2"
    h = await make_proxy(config={"containers": after["containers"]},
                         backend=engines.make_backend(backend_kind, proxy_id))
    assert h.proxy.registry.peek("shared", "svc") is None  # not adopted
    assert not (await raw.containers.container(old.id).show())["State"]["Running"]  # and stopped at start-up
    resp = await h.client.get("/s/api/health")
    assert resp.status == 200 and resp.headers["X-Proxy-Cold-Start"] == "1"
    m = h.manager("shared")
    info = await raw.containers.container(m.instance.id).show()
    assert "RELEASE=2" in info["Config"]["Env"] and m.instance.id != old.id
    filters = {"label": [f"proxy.instance={proxy_id}"], "status": ["running"]}
    assert [c.id for c in await raw.containers.list(filters=json.dumps(filters))] == [m.instance.id]

    # Started again on the same config: adopted, no start.
    await h.proxy.backend.close()
    again = await make_proxy(config={"containers": after["containers"]},
                             backend=engines.make_backend(backend_kind, proxy_id))
    kept = again.manager("shared")
    assert kept.state is State.RUNNING and kept.instance.id == m.instance.id and kept.start_count == 0


async def test_a_start_replaces_a_running_container_of_the_key_with_another_spec(make_proxy, raw, backend_kind):
    """The start path's own check (a cluster owner claiming a key starts it without adopting): a running container
    under the key's name that runs another spec is replaced, not taken as it is."""
    proxy_id = f"t{uuid.uuid4().hex[:10]}"
    backend = engines.make_backend(backend_kind, proxy_id)
    spec = parse_config(base_config(backend_kind, await engines.ensure_image(backend_kind))).containers["svc"].spec
    try:
        first = await backend.start("k1", spec)
        same = await backend.start("k1", spec)
        assert same.id == first.id  # the same spec: adopted as it runs
        changed = await backend.start("k1", dataclasses.replace(spec, env={**spec.env, "RELEASE": "2"}))
        assert changed.id != first.id and changed.spec != first.spec
        info = await raw.containers.container(changed.id).show()
        assert "RELEASE=2" in info["Config"]["Env"]
        assert first.id not in [c.id for c in await raw.containers.list(all=True)]
    finally:
        await engines.remove_all(backend)
        await backend.close()


async def test_a_restart_in_the_middle_of_a_surge_keeps_one_instance_per_key(make_proxy, raw, backend_kind):
    """Proxy #1 stops (crashes) while a key runs its old and its new generation side by side (a surge rollout);
    proxy #2 adopts one of them and stops the other: no container is left running unmanaged."""
    proxy_id = f"t{uuid.uuid4().hex[:10]}"
    config = parse_config(base_config(backend_kind, await engines.ensure_image(backend_kind)) | {
        "backend": {"proxy_id": proxy_id}})
    backend = engines.make_backend(backend_kind, proxy_id)
    spec = config.containers["svc"].spec
    old, new = [await backend.start("shared", dataclasses.replace(spec, generation=g)) for g in (0, 1)]
    await backend.close()
    assert old.id != new.id

    h = await make_proxy(backend=engines.make_backend(backend_kind, proxy_id))
    m = h.manager("shared")
    assert m.state is State.RUNNING and m.instance.id in (old.id, new.id) and m.start_count == 0
    filters = {"label": [f"proxy.instance={proxy_id}"], "status": ["running"]}
    running = await raw.containers.list(filters=json.dumps(filters))
    assert [c.id for c in running] == [m.instance.id]
    assert (await h.client.get("/s/api/health")).status == 200


async def test_unlabelled_container_with_colliding_name_is_untouched(make_proxy, raw):
    h = await make_proxy(config={"errors": {"detail": "full"}})  # the backend's own words in the body
    name = h.backend.name_for("squatter", h.proxy.config.containers["svc"].spec)
    foreign = await raw.containers.create_or_replace(name=name, config={
        "Image": engines.DEFAULT_TAG, "Cmd": ["/usr/bin/python3.11", "-c", "pass"]})
    try:
        before = await foreign.show()
        resp = await h.client.get("/k/squatter/api/health")
        body = await resp.json()
        assert resp.status == 503 and "not managed by this proxy" in body["reason"]
        await h.proxy.registry.stop_all(StopReason.SHUTDOWN)
        after = await raw.containers.container(name).show()
        assert after["Id"] == before["Id"] and after["State"]["Status"] == before["State"]["Status"]
        assert after["Config"]["Labels"] == before["Config"]["Labels"]
    finally:
        await foreign.delete(force=True)


async def test_instance_type_limits_via_config(make_proxy, raw):
    h = await make_proxy(svc={"instance_type": "basic", "start_timeout": "90s"})
    assert (await h.client.get("/s/v2/health/ready")).status == 200
    info = await raw.containers.container(h.manager("shared").instance.id).show()
    host = info["HostConfig"]
    assert host["Memory"] == 2**30
    cpus = host.get("NanoCpus") or 0
    if not cpus and host.get("CpuQuota"):
        cpus = host["CpuQuota"] / host["CpuPeriod"] * 1e9
    assert cpus == pytest.approx(0.25e9)
    assert host["Init"] is True
    labels = info["Config"]["Labels"]
    assert labels["proxy.managed"] == "true" and labels["proxy.key"] == "shared" and labels["proxy.container"] == "svc"


async def test_restart_without_reuse_removes_stopped_orphans(make_proxy, raw, backend_kind):
    proxy_id = f"t{uuid.uuid4().hex[:10]}"
    backend = engines.make_backend(backend_kind, proxy_id)  # reuse_stopped=True: stop leaves it stopped
    spec = parse_config(base_config(backend_kind, engines.DEFAULT_TAG)).containers["svc"].spec
    instance = await backend.start("orphan", spec)
    await backend.stop(instance)
    await backend.close()
    label = {"label": [f"proxy.instance={proxy_id}"]}
    assert len(await raw.containers.list(all=True, filters=label)) == 1
    h = await make_proxy(config={"backend": {"proxy_id": proxy_id, "reuse_stopped": False}},
                         backend=engines.make_backend(backend_kind, proxy_id))
    assert await raw.containers.list(all=True, filters=label) == []
    assert h.proxy.registry.managers == {}
