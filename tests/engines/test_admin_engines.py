"""The control API on real daemons (docker, podman): exec through the API socket, pause/resume, destroy;
`python -m proxy ctl` run as a real subprocess."""

from __future__ import annotations

import json

import aiodocker
import pytest

from proxy.lifecycle.events import State
from tests.support.admin import AUTH
from tests.conftest import ENGINE_PARAMS


@pytest.fixture(params=ENGINE_PARAMS)
def backend_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_ctl_exec_prints_the_output_and_exits_with_the_code(make_admin):
    a = await make_admin(admin={"exec": True, "exec_timeout": "20s"})
    code, _, err = await a.ctl("exec", "svc/shared", "--", "python3", "-c", "print(42)")
    assert code == 4 and "no such key" in err  # a key never used: exec neither starts nor creates it
    assert (await a.h.client.get("/s/api/health")).status == 200
    code, out, err = await a.ctl("exec", "svc/shared", "--", "python3", "-c", "print(42)")
    assert (code, out) == (0, "42\n"), err
    code, out, err = await a.ctl("exec", "shared", "--", "python3", "-c",
                                 "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)")
    assert (code, out, err) == (3, "out\n", "err\n")
    code, _, err = await a.ctl("exec", "shared", "--timeout", "1", "--", "python3", "-c", "import time; time.sleep(30)")
    assert code == 124 and "timed out" in err
    m = a.h.manager("shared")
    assert m.in_flight == 0 and m.state is State.RUNNING


async def test_exec_is_refused_when_admin_exec_is_off(make_admin):
    a = await make_admin()
    assert (await a.h.client.get("/s/api/health")).status == 200
    code, out, err = await a.ctl("exec", "svc/shared", "--", "python3", "-c", "print(42)")
    assert code == 3 and out == "" and "403 forbidden: exec is disabled" in err


async def test_pause_then_a_request_resumes_it(make_admin, raw):
    a = await make_admin()
    assert (await a.h.client.get("/s/api/health")).status == 200
    m = a.h.manager("shared")
    instance = m.instance
    code, out, err = await a.ctl("pause", "shared")
    assert code == 0 and json.loads(out)["state"] == "paused", err
    info = await raw.containers.container(instance.id).show()
    assert info["State"]["Paused"] is True
    status = await (await a.client.get("/container-status")).json()
    assert next(e for e in status["keys"] if e["key"] == "shared")["state"] == "paused"
    assert await a.h.metric("proxy_container_managers", container_class="svc", state="paused") == 1
    resp = await a.h.client.get("/s/api/health")
    assert resp.status == 200 and resp.headers.get("X-Proxy-Cold-Start") == "1"
    assert m.state is State.RUNNING and m.instance == instance and m.start_count == 1
    info = await raw.containers.container(instance.id).show()
    assert info["State"]["Paused"] is False and info["State"]["Running"] is True
    # Paused again, then stopped by the operator: thawed first, then stopped.
    assert (await a.client.post("/admin/keys/svc/shared/pause", headers=AUTH)).status == 200
    code, out, _ = await a.ctl("stop", "shared")
    assert code == 0 and json.loads(out)["state"] == "stopped"
    info = await raw.containers.container(instance.id).show()
    assert info["State"]["Running"] is False


async def test_destroy_removes_the_container_a_stop_keeps(make_admin, raw):
    a = await make_admin()
    assert (await a.h.client.get("/k/gone/api/health")).status == 200
    instance = a.h.manager("gone").instance
    code, _, _ = await a.ctl("stop", "gone")
    assert code == 0 and (await raw.containers.container(instance.id).show())["State"]["Running"] is False
    code, out, _ = await a.ctl("destroy", "gone")
    assert code == 0 and json.loads(out)["state"] == "stopped"
    with pytest.raises(aiodocker.DockerError) as gone:
        await raw.containers.container(instance.id).show()
    assert gone.value.status == 404
    assert (await a.h.client.get("/k/gone/api/health")).status == 200  # a fresh container
    assert a.h.manager("gone").instance.id != instance.id
