"""Per-start env on the control API (`POST /admin/keys/{class}/{key}/start` with `{"env": {...}}`, as Cloudflare's
`startAndWaitForPorts({envVars})`), on the stub backend: the model service reports `ENVIRONMENT` at
/api/container-info, so the env is seen where the instance sees it. The engines' side (the env in the container's
config) is in tests/engines/test_compose_options.py."""

from __future__ import annotations

import json

import pytest

from tests.support.admin import AUTH


@pytest.fixture
def backend_kind() -> str:
    return "stub"


async def environment(a) -> str:  # type: ignore[no-untyped-def]
    resp = await a.h.client.get("/s/api/container-info")
    assert resp.status == 200
    return str((await resp.json())["environment"])


async def test_start_with_env_reaches_the_instance_and_only_a_new_start(make_admin):
    a = await make_admin()
    resp = await a.client.post("/admin/keys/svc/shared/start", json={"env": {"ENVIRONMENT": "per-start"}},
                               headers=AUTH)
    assert resp.status == 200 and (await resp.json())["state"] == "running"
    assert await environment(a) == "per-start"
    resp = await a.client.post("/admin/keys/svc/shared/start", json={"env": {"ENVIRONMENT": "again"}}, headers=AUTH)
    body = await resp.json()
    assert resp.status == 409 and "env applies to a new start only" in body["reason"]
    assert await environment(a) == "per-start"  # unchanged
    assert (await a.client.post("/admin/keys/svc/shared/start", headers=AUTH)).status == 200  # plain: fine
    code, _, err = await a.ctl("stop", "svc/shared")
    assert code == 0, err
    code, out, err = await a.ctl("start", "svc/shared", "--env", "ENVIRONMENT=from ctl=1")
    assert code == 0 and json.loads(out)["state"] == "running", err
    assert await environment(a) == "from ctl=1"
    code, _, err = await a.ctl("start", "svc/shared", "--env", "ENVIRONMENT=x")
    assert code == 5 and "409 conflict" in err
    await a.ctl("stop", "svc/shared")
    assert (await a.client.post("/admin/keys/svc/shared/start", headers=AUTH)).status == 200
    assert await environment(a) != "from ctl=1"  # the class's env again: the override was for one start


@pytest.mark.parametrize("body, reason", [
    ({"env": {"1BAD": "x"}}, "invalid variable name '1BAD'"),
    ({"env": {"A": 1}}, "env must be an object of strings"),
    ({"env": ["A=1"]}, "env must be an object of strings"),
    ({"env": {"A": "nul\u0000"}}, "env must be an object of strings"),
])
async def test_invalid_env_is_400_json_and_starts_nothing(make_admin, body, reason):
    a = await make_admin()
    resp = await a.client.post("/admin/keys/svc/k9/start", json=body, headers=AUTH)
    answer = await resp.json()
    assert resp.status == 400 and answer["error"] == "invalid input" and reason in answer["reason"]
    assert a.h.manager("k9").start_count == 0
    code, _, err = await a.ctl("start", "svc/k9", "--env", "NOEQUALS")
    assert code == 2 and "--env expects NAME=VALUE" in err


async def test_openapi_documents_the_start_body(make_admin):
    a = await make_admin()
    doc = await (await a.client.get("/admin/openapi.json")).json()
    start = doc["paths"]["/admin/keys/{class}/{key}/start"]["post"]
    assert start["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/Start")
    env, = (v for v in doc["components"]["schemas"]["Start"]["properties"]["env"]["anyOf"] if v["type"] == "object")
    assert env["additionalProperties"]["type"] == "string" and env["propertyNames"]["pattern"].startswith("^[A-Za-z_]")
