"""The admin API and the model service say in their OpenAPI documents what their code enforces (issue 23),
and every number a client can set through the admin API is bounded, with its unit in the refusal.

The documents are checked with openapi-spec-validator; the key rule of the document is checked against
proxy/keys.py's `validate_key` on generated keys; the rest against the running admin listener (stub backend).
"""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate

from proxy.config.schema import parse_config
from proxy.keys import KEY_SCHEMA, validate_key
from proxy.config.units import ConfigError
from tests.support.admin import AUTH, TOKEN


@pytest.fixture
def backend_kind() -> str:
    return "stub"


async def raw_request(url: str, head: bytes) -> tuple[int, dict]:
    """One request with header bytes no HTTP client library will send (not UTF-8); (status, JSON body)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head + b"Host: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


@pytest.mark.parametrize("authorization", [b"Bearer \xff\xfe", b"Bearer " + TOKEN.encode() + b"\xe9",
                                           b"\xff\xfe " + TOKEN.encode()])
async def test_a_non_utf8_authorization_header_is_a_401_not_a_500(make_admin, authorization):
    a = await make_admin(admin={"host": "127.0.0.1"})
    for request in (b"POST /admin/keys/svc/k1/start", b"PUT /admin/keys/svc/k1/sleep_after",
                    b"POST /admin/keys/svc/k1/stop"):
        status, body = await raw_request(a.url, request + b" HTTP/1.1\r\nAuthorization: " + authorization + b"\r\n")
        assert status == 401 and body["error"] == "unauthorized", body
    # Reads on a loopback listener need no token: a garbled one is ignored, not a crash.
    status, body = await raw_request(a.url, b"GET /admin/keys HTTP/1.1\r\nAuthorization: " + authorization + b"\r\n")
    assert status == 200 and "keys" in body
    assert ("svc", "k1") not in a.h.proxy.registry.managers or a.h.manager("k1").start_count == 0


@pytest.mark.parametrize("seconds, accepted", [
    (1e-120, False), (0, False), (0.5, False), (-1, False), (21601, False), (1e308, False), ("5", False),
    (True, False), (1, True), (21600, True), (None, True)])
async def test_sleep_after_is_bounded_and_says_its_unit(make_admin, seconds, accepted):
    a = await make_admin()
    resp = await a.client.put("/admin/keys/svc/k/sleep_after", json={"seconds": seconds}, headers=AUTH)
    body = await resp.json()
    if accepted:
        assert resp.status == 200, body
        assert body["sleep_after"] == (60 if seconds is None else seconds)  # null: the class's again
    else:
        assert resp.status == 400 and body["error"] == "invalid input", body
        assert "number of seconds, at least 1 and at most 21600 (admin.max_sleep_after)" in body["reason"]
        assert a.h.manager("k").sleep_after == 60


async def test_sleep_after_must_be_given(make_admin):
    a = await make_admin()
    resp = await a.client.put("/admin/keys/svc/k/sleep_after", json={}, headers=AUTH)
    assert resp.status == 400 and "seconds must be null" in (await resp.json())["reason"]


@pytest.mark.parametrize("drain", [-1, 3601, 1e300, "30", False])
async def test_drain_is_bounded_and_says_its_unit(make_admin, drain):
    a = await make_admin()
    await a.client.post("/admin/keys/svc/k/start", headers=AUTH)
    for op in ("stop", "pause", "destroy"):
        resp = await a.client.post(f"/admin/keys/svc/k/{op}", json={"drain": drain}, headers=AUTH)
        body = await resp.json()
        assert resp.status == 400 and "drain must be a number of seconds, at least 0 and at most 3600" \
            in body["reason"], body
    assert a.h.manager("k").state.value == "running"  # nothing was stopped
    resp = await a.client.post("/admin/keys/svc/k/stop", json={"drain": 0}, headers=AUTH)
    assert resp.status == 200 and (await resp.json())["state"] == "stopped"


@pytest.mark.parametrize("timeout", [0, 0.01, 61, -5, "1"])
async def test_exec_timeout_is_bounded_and_says_its_unit(make_admin, timeout):
    a = await make_admin(admin={"exec": True})
    await a.client.post("/admin/keys/svc/k/start", headers=AUTH)  # a key never used is a 404 before its body
    resp = await a.client.post("/admin/keys/svc/k/exec", json={"command": ["true"], "timeout": timeout}, headers=AUTH)
    body = await resp.json()
    assert resp.status == 400 and "timeout must be a number of seconds, at least 0.1 and at most 60 " \
        "(admin.exec_timeout)" in body["reason"], body


@pytest.mark.parametrize("admin, field", [
    ({"max_sleep_after": 31 * 86400}, "admin.max_sleep_after"), ({"max_sleep_after": "500ms"}, "admin.max_sleep_after"),
    ({"exec_timeout": "48h"}, "admin.exec_timeout"), ({"max_drain": "48h"}, "admin.max_drain"),
    ({"stop_drain": "2h"}, "admin.stop_drain")])
def test_the_operators_upper_bounds_are_bounded_too(admin, field):
    with pytest.raises(ConfigError) as error:
        parse_config({"admin": admin, "containers": {"svc": {"image": "x"}}})
    assert error.value.field == field


async def test_the_admin_document_is_valid_and_states_the_rules(make_admin):
    a = await make_admin(config={"containers": {"svc": {}, "other": {"image": "model_service"}}})
    doc = await (await a.client.get("/admin/openapi.json")).json()
    validate(doc)
    params = {p["name"]: p["schema"] for p in doc["paths"]["/admin/keys/{class}/{key}/start"]["parameters"]}
    assert params["key"] == KEY_SCHEMA and KEY_SCHEMA["maxLength"] == 63 and params["class"]["enum"] == ["svc", "other"]
    schemas = doc["components"]["schemas"]
    seconds = next(v for v in schemas["SleepAfter"]["properties"]["seconds"]["anyOf"] if v["type"] == "number")
    assert (seconds["minimum"], seconds["maximum"]) == (1, 21600)
    assert schemas["Drain"]["properties"]["drain"]["maximum"] == 3600
    assert schemas["Exec"]["properties"]["timeout"]["maximum"] == 60
    # A conforming key is accepted: the 63-character one the document allows starts a key.
    key = "k" * 63
    resp = await a.client.post(f"/admin/keys/svc/{key}/start", headers=AUTH)
    assert resp.status == 200 and (await resp.json())["key"] == key


@settings(max_examples=400, deadline=None, database=None)
@given(key=st.text(alphabet="ab9_.-\n/é", max_size=70) | st.from_regex(KEY_SCHEMA["pattern"], fullmatch=True))
def test_the_documents_key_rule_is_validate_key(key):
    schema_says = re.fullmatch(KEY_SCHEMA["pattern"], key) is not None and len(key) <= KEY_SCHEMA["maxLength"]
    assert schema_says == (validate_key(key) is None)


def test_the_model_service_document_is_valid_and_states_the_tensor_rules():
    from model_service.model import MAX_BATCH_ROWS
    from model_service.openapi import build_openapi

    doc = build_openapi("1", "t")
    validate(doc)
    request = doc["components"]["schemas"]["V2InferRequest"]
    assert request["properties"]["inputs"]["minItems"] == request["properties"]["inputs"]["maxItems"] == 1
    assert request["properties"]["id"]["type"] == "string"
    shape = doc["components"]["schemas"]["V2Input"]["properties"]["shape"]
    assert shape["prefixItems"][0]["maximum"] == MAX_BATCH_ROWS and shape["prefixItems"][1]["const"] == 3


@pytest.mark.parametrize("body, field", [
    ({"inputs": []}, "inputs"), ({"id": {}, "inputs": [{"shape": [1, 3], "data": [0, 29, 1]}]}, "id"),
    ({"id": 5, "inputs": [{"shape": [1, 3], "data": [0, 29, 1]}]}, "id"),
    ({"inputs": [{"name": 1, "shape": [1, 3], "data": [0, 29, 1]}]}, "inputs[0].name")])
async def test_the_model_service_refuses_what_its_document_refuses(aiohttp_client, body, field):
    from model_service.app import create_app

    client = await aiohttp_client(create_app({}))
    resp = await client.post("/v2/models/titanic/infer", json=body)
    assert resp.status == 400 and (await resp.json())["field"] == field
    ok = await client.post("/v2/models/titanic/infer", json={"id": "r1", "inputs": [
        {"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [0, 29, 1]}]})
    assert ok.status == 200 and (await ok.json())["id"] == "r1"
