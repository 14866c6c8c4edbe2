"""The admin listener and the control API on the stub backend: apart from proxied traffic, token-guarded,
every operation through the key's Manager; the ctl CLI run as a real subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import yaml

from backends.stub import StubBackend
from proxy.admin.api import OPERATIONS
from proxy.lifecycle.events import State, Transition
from tests.support.admin import AUTH, ROOT, TOKEN
from tests.deploy.test_cli import free_port

SEED_PATHS = ("/health", "/info", "/container-status", "/metrics")


@pytest.fixture
def backend_kind() -> str:
    return "stub"


class SlowStub(StubBackend):
    """The stub with a start as slow as a container's, so a herd really arrives while it starts."""

    def __init__(self) -> None:
        super().__init__()
        self.starts = 0

    async def start(self, key, spec):  # type: ignore[no-untyped-def]
        self.starts += 1
        await asyncio.sleep(1.5)
        return await super().start(key, spec)


async def test_the_proxied_port_serves_no_status_config_or_control_endpoint(make_admin):
    a = await make_admin(admin={"on_proxy_port": []})
    for path in (*SEED_PATHS, "/admin/keys", "/admin/openapi.json", "/admin/keys/svc/shared"):
        resp = await a.h.client.get(path)
        assert resp.status == 404, path
    assert (await a.h.client.post("/admin/keys/svc/shared/stop", headers=AUTH)).status == 404
    assert "shared" not in {k for _, k in a.h.proxy.registry.managers}  # nothing was started or stopped
    # The admin listener has them all.
    for path in (*SEED_PATHS, "/admin/keys", "/admin/openapi.json"):
        assert (await a.client.get(path)).status == 200, path


async def test_with_a_catch_all_route_the_upstream_answers_those_paths(make_admin):
    a = await make_admin(admin={"on_proxy_port": []},
                         config={"routes": [{"path": "/{tail:.*}", "container": "svc", "key": "all"}]})
    for path in ("/info", "/metrics", "/admin/keys"):
        resp = await a.h.client.get(path)
        assert "lazy-proxy" not in await resp.text() and "proxy_" not in await resp.text()
    assert a.h.manager("all").start_count == 1  # they went to the instance


async def test_seed_endpoints_stay_on_the_proxied_port_when_listed(make_admin):
    a = await make_admin(admin={"on_proxy_port": ["health", "metrics"]})
    assert (await a.h.client.get("/health")).status == 200 and (await a.h.client.get("/metrics")).status == 200
    assert (await a.h.client.get("/info")).status == 404 and (await a.h.client.get("/container-status")).status == 404


async def test_mutations_need_the_token(make_admin):
    a = await make_admin()
    for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}, {"Authorization": TOKEN}):
        resp = await a.client.post("/admin/keys/svc/k1/start", headers=headers)
        assert resp.status == 401 and (await resp.json())["error"] == "unauthorized"
        resp = await a.client.put("/admin/keys/svc/k1/sleep_after", json={"seconds": 5}, headers=headers)
        assert resp.status == 401
    assert ("svc", "k1") not in a.h.proxy.registry.managers or a.h.manager("k1").state is State.STOPPED
    assert (await a.client.get("/admin/keys")).status == 200  # reads are open on a loopback listener
    resp = await a.client.post("/admin/keys/svc/k1/start", headers=AUTH)
    assert resp.status == 200 and (await resp.json())["state"] == "running"
    code, _, err = await a.ctl("stop", "svc/k1", token=None)
    assert code == 3 and "401 unauthorized" in err


async def test_no_token_configured_refuses_every_mutation_and_off_loopback_reads_need_one(make_admin):
    a = await make_admin(admin={"token": None})
    resp = await a.client.post("/admin/keys/svc/k1/start", headers=AUTH)
    assert resp.status == 401 and "no admin token is configured" in (await resp.json())["reason"]
    b = await make_admin(admin={"host": "0.0.0.0"})
    assert (await b.client.get("/admin/keys")).status == 401 and (await b.client.get("/metrics")).status == 401
    assert (await b.client.get("/admin/keys", headers=AUTH)).status == 200


async def test_ctl_stop_waits_for_the_request_in_flight(make_admin):
    a = await make_admin()
    h = a.h
    assert (await h.client.get("/s/debug/status?code=200")).status == 200
    m = h.manager("shared")
    at_stop: list[int] = []
    h.proxy.bus.subscribe(lambda e: isinstance(e, Transition) and e.key == "shared" and e.new is State.STOPPED
                          and at_stop.append(m.in_flight))

    async def slow() -> tuple[int, bytes]:
        resp = await h.client.get("/s/debug/sleep?seconds=2")
        return resp.status, await resp.read()

    request = asyncio.create_task(slow())
    await h.wait_for(lambda: m.in_flight > 0)
    began = time.monotonic()
    code, out, err = await a.ctl("stop", "shared")
    assert code == 0, err
    assert time.monotonic() - began > 1.0  # it waited for the request
    status, _ = await request
    assert status == 200 and json.loads(out)["state"] == "stopped" and at_stop == [0]
    assert m.start_count == 1 and m.state is State.STOPPED


async def test_ctl_start_under_50_cold_requests_makes_one_backend_start(make_admin):
    backend = SlowStub()
    a = await make_admin(backend=backend)
    h = a.h
    reasons: list[str] = []
    h.proxy.bus.subscribe(lambda e: isinstance(e, Transition) and e.new is State.STARTING and reasons.append(e.reason))
    ctl = asyncio.create_task(a.ctl("start", "svc/herd"))
    await h.wait_for(lambda: ("svc", "herd") in h.proxy.registry.managers and h.manager("herd").state is State.STARTING)
    responses = await asyncio.gather(*(h.client.get("/k/herd/api/health") for _ in range(50)))
    assert [r.status for r in responses] == [200] * 50
    assert all(r.headers.get("X-Proxy-Cold-Start") == "1" for r in responses)  # they joined the start
    code, out, err = await ctl
    assert code == 0, err
    assert json.loads(out)["state"] == "running" and reasons == ["admin"]
    assert backend.starts == 1 and h.manager("herd").start_count == 1


async def test_state_renew_sleep_after_and_audit(make_admin):
    a = await make_admin()
    seen: list[dict] = []
    a.h.proxy.hooks.on("admin", seen.append)
    assert (await a.client.get("/admin/keys/svc/never")).status == 404  # a read creates no manager
    assert ("svc", "never") not in a.h.proxy.registry.managers
    assert (await a.client.post("/admin/keys/nope/k/start", headers=AUTH)).status == 404
    assert (await a.client.post("/admin/keys/svc/..bad/start", headers=AUTH)).status == 400
    code, out, _ = await a.ctl("start", "k2")
    assert code == 0 and json.loads(out)["state"] == "running"
    code, out, _ = await a.ctl("sleep-after", "k2", "120")
    assert code == 0 and json.loads(out)["sleep_after"] == 120
    resp = await a.client.put("/admin/keys/svc/k2/sleep_after", json={"seconds": 7 * 3600}, headers=AUTH)
    assert resp.status == 400 and "at most 21600" in (await resp.json())["reason"]
    code, out, _ = await a.ctl("sleep-after", "k2", "default")
    assert json.loads(out)["sleep_after"] == 60
    before = a.h.manager("k2").last_activity
    code, out, _ = await a.ctl("renew", "k2")
    assert code == 0 and a.h.manager("k2").last_activity > before
    code, out, _ = await a.ctl("status", "k2", "-o", "json")
    assert code == 0 and json.loads(out)["key"] == "k2"
    code, out, _ = await a.ctl("status", "-o", "json")
    assert code == 0 and "k2" in {e["key"] for e in json.loads(out)["keys"]}
    code, out, _ = await a.ctl("status")  # for people: a table, idle as a duration
    header, *rows = out.splitlines()
    assert header.split() == ["KEY", "CLASS", "STATE", "IN-FLIGHT", "IDLE", "STARTS"]
    row = next(r.split() for r in rows if r.split()[0] == "k2")
    assert row[1:4] == ["svc", "running", "0"] and row[4].endswith("s") and row[5] == "1"
    code, _, err = await a.ctl("pause", "k2")  # the stub cannot
    assert code == 5 and "not supported by backend stub" in err
    code, _, err = await a.ctl("status", "svc/missing")
    assert code == 4
    actions = [(e["action"], e["outcome"], e["who"]) for e in seen]
    who = actions[0][2]
    assert who.startswith("token:") and TOKEN not in who
    assert actions == [("start", "ok", who), ("sleep_after", "ok", who),
                       ("sleep_after", "invalid input", who), ("sleep_after", "ok", who), ("renew", "ok", who),
                       ("pause", "not supported", who)]


async def test_a_mutation_on_a_key_never_used_is_a_404_and_creates_nothing_but_start_creates(make_admin):
    """`ctl stop K` / `ctl destroy K` on a key never used made it (it then showed in the listing)."""
    a = await make_admin()
    for command in ("stop", "destroy", "resume", "renew", "pause"):
        code, _, err = await a.ctl(command, "svc/ghost")
        assert code == 4 and "no such key 'ghost' of class 'svc'" in err, (command, code, err)
    resp = await a.client.post("/admin/keys/svc/ghost/exec", json={"command": ["true"]}, headers=AUTH)
    assert resp.status == 404
    code, out, _ = await a.ctl("status", "-o", "json")
    assert code == 0 and "ghost" not in {e["key"] for e in json.loads(out)["keys"]}
    assert ("svc", "ghost") not in a.h.proxy.registry.managers
    code, out, err = await a.ctl("start", "svc/ghost")
    assert code == 0 and json.loads(out)["state"] == "running", err


async def test_ctl_help_gives_every_command_a_line() -> None:
    """start/stop/pause/resume/renew/state/destroy were listed bare in `ctl --help`."""
    done = subprocess.run([sys.executable, "-m", "proxy", "ctl", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
    lines = {line.split()[0]: line.split(None, 1)[1:] for line in done.stdout.splitlines()
             if line.startswith("    ") and line.split()[0].isidentifier()}
    commands = ("status", "start", "stop", "pause", "resume", "renew", "state", "destroy", "members", "reload")
    assert all(lines.get(name) for name in commands), lines


async def test_exec_is_refused_unless_enabled_and_the_stub_cannot(make_admin):
    a = await make_admin()
    await a.ctl("start", "k3")
    code, _, err = await a.ctl("exec", "k3", "--", "echo", "hi")
    assert code == 3 and "exec is disabled" in err
    b = await make_admin(admin={"exec": True})
    await b.ctl("start", "k3")
    code, _, err = await b.ctl("exec", "k3", "--", "echo", "hi")
    assert code == 5 and "not supported by backend stub" in err


async def test_destroy_on_the_stub_is_a_stop(make_admin):
    a = await make_admin()
    assert (await a.h.client.get("/k/d/api/health")).status == 200
    code, out, _ = await a.ctl("destroy", "d")
    assert code == 0 and json.loads(out)["state"] == "stopped"


async def test_ctl_exit_codes_for_an_unreachable_api_and_an_ambiguous_key(make_admin):
    a = await make_admin(config={"containers": {"svc": {}, "other": {"image": "model_service"}}})
    code, _, err = await a.ctl("start", "k")
    assert code == 2 and "ambiguous" in err
    a.url = "http://127.0.0.1:9"  # nothing listens on the discard port
    code, _, err = await a.ctl("status")
    assert code == 6 and "cannot reach" in err


async def test_openapi_describes_every_route_of_the_admin_listener(make_admin):
    a = await make_admin()
    spec = await (await a.client.get("/admin/openapi.json")).json()
    assert spec["openapi"].startswith("3.")
    described = {(method.upper(), path) for path, item in spec["paths"].items() for method in item
                 if method != "parameters"}
    routes = {(r.method, r.resource.canonical) for r in a.client.app.router.routes()
              if r.resource is not None and r.resource.canonical.startswith("/admin/")
              and r.resource.canonical != "/admin/openapi.json" and r.method != "HEAD"}
    # the key operations, the key list, and proxy/admin/deploy.py's reload, rollout list and three rollout actions
    assert routes == described and len(described) == len(OPERATIONS) + 1 + 5
    assert all("security" in spec["paths"][op.path][op.method.lower()] for op in OPERATIONS if op.mutates)


def test_python_m_proxy_serves_the_admin_listener_apart(tmp_path):
    """The real process: the admin listener on its own port, the token from the environment, ctl against it."""
    raw = {"admin": {"on_proxy_port": [], "token_env": "LP_TEST_ADMIN_TOKEN"}, "backend": {"type": "stub"},
           "containers": {"w": {"image": "model_service", "readiness": {"path": "/v2/health/ready"}}},
           "routes": [{"path": "/api/{tail:.*}", "container": "w", "key": "one"}]}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    port, admin_port = free_port(), free_port()
    env = {**os.environ, "LP_TEST_ADMIN_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "--config", str(config), "--port", str(port),
                             "--admin-port", str(admin_port)], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        admin = f"http://127.0.0.1:{admin_port}"
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None and time.monotonic() < deadline
            try:
                urllib.request.urlopen(f"{admin}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.05)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
        assert refused.value.code == 404
        ctl = [sys.executable, "-m", "proxy", "ctl", "--admin", admin, "--token-env", "LP_TEST_ADMIN_TOKEN"]
        started = subprocess.run([*ctl, "start", "one"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert started.returncode == 0 and json.loads(started.stdout)["state"] == "running", started.stderr
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=10) as resp:
            assert resp.status == 200 and "X-Proxy-Cold-Start" not in resp.headers  # warm: ctl started it
        unauthorized = subprocess.run([*ctl, "stop", "one"], cwd=ROOT, env=os.environ, capture_output=True, text=True,
                                      timeout=60)
        assert unauthorized.returncode == 3  # and one line saying which variable ctl reads the token from
        assert unauthorized.stderr.count("\n") == 1 and "set $LP_TEST_ADMIN_TOKEN" in unauthorized.stderr, \
            unauthorized.stderr
        stopped = subprocess.run([*ctl, "stop", "one"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert stopped.returncode == 0 and json.loads(stopped.stdout)["state"] == "stopped"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        logs = [json.loads(line) for line in proc.stderr.read().splitlines() if line.startswith("{")]
        audit = [(e["action"], e["outcome"], e["key"]) for e in logs if e.get("event") == "admin"]
        assert audit == [("start", "ok", "one"), ("stop", "ok", "one")]  # the refused one never reached a key
        assert all(TOKEN not in line for line in map(json.dumps, logs))
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
