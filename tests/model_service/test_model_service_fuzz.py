"""Model service under hostile input: any body gets 200 or a 400 JSON naming the field, never a 5xx.

Property tests (hypothesis) post arbitrary JSON values, arbitrary bytes and right-keyed objects with
arbitrary values to /api/inference and /v2/models/titanic/infer over real HTTP; the regression tests
pin each input that used to answer 500. Nothing here may make the service log a traceback.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from model_service.app import create_app
from model_service.model import MAX_BATCH_ROWS

INFER = "/api/inference"
V2 = "/v2/models/titanic/infer"
PASSENGER_FIELDS = {"sex", "age", "pclass", "body"}
FUZZ = settings(max_examples=200, deadline=None, database=None)  # no .hypothesis/ left in the tree


# --- harness -----------------------------------------------------------------------------------

class ErrorLog(logging.Handler):
    """Collects every ERROR record (the service logs a traceback only for its own bugs)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def take(self) -> list[str]:
        out = [f"{r.name}: {r.getMessage()} {r.exc_info[1]!r}" if r.exc_info else f"{r.name}: {r.getMessage()}"
               for r in self.records]
        self.records.clear()
        return out


@pytest.fixture(scope="module")
def error_log() -> Iterator[ErrorLog]:
    handler = ErrorLog()
    logging.getLogger().addHandler(handler)
    try:
        yield handler
    finally:
        logging.getLogger().removeHandler(handler)


@dataclass
class Answer:
    status: int
    content_type: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Service:
    """The model service on a real port, driven synchronously (hypothesis runs plain functions)."""

    def __init__(self, app: web.Application) -> None:
        self.loop = asyncio.new_event_loop()
        self.client: TestClient = self.loop.run_until_complete(self._start(app))

    @staticmethod
    async def _start(app: web.Application) -> TestClient:
        client = TestClient(TestServer(app))
        await client.start_server()
        return client

    def post(self, path: str, data: bytes, headers: dict[str, str] | None = None) -> Answer:
        headers = {"Content-Type": "application/json"} if headers is None else headers
        return self.loop.run_until_complete(self._post(path, data, headers))

    async def _post(self, path: str, data: bytes, headers: dict[str, str]) -> Answer:
        async with self.client.post(path, data=data, headers=headers) as resp:
            return Answer(resp.status, resp.content_type, await resp.read())

    def close(self) -> None:
        self.loop.run_until_complete(self.client.close())
        self.loop.close()


@pytest.fixture(scope="module")
def service(error_log: ErrorLog) -> Iterator[Service]:
    svc = Service(create_app({"INSTANCE_ID": "fuzz"}))
    try:
        yield svc
    finally:
        svc.close()


def check(answer: Answer, fields: set[str] | None = None) -> Any:
    """200 or 400, JSON either way; a 400 names a field (one of `fields` when given)."""
    assert answer.status in (200, 400), (answer.status, answer.body[:300])
    assert answer.content_type == "application/json"
    body = answer.json()
    assert isinstance(body, dict)
    if answer.status == 400:
        assert body["error"] and body["reason"] and isinstance(body["field"], str), body
        if fields is not None:
            assert body["field"] in fields or body["field"].startswith(tuple(fields)), body
    return body


def no_errors_logged(log: ErrorLog) -> None:
    assert log.take() == []


# --- strategies --------------------------------------------------------------------------------

huge_ints = st.integers(min_value=10**300, max_value=10**450) | st.integers(min_value=-(10**450), max_value=-(10**300))
numbers = st.integers() | huge_ints | st.floats(allow_nan=True, allow_infinity=True)
scalars = st.none() | st.booleans() | numbers | st.text(max_size=20)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=5), max_leaves=20)


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()  # non-finite floats go out as NaN/Infinity literals, as many clients send


def _nested(depth: int, leaf: Any) -> Any:
    for _ in range(depth):
        leaf = [leaf]
    return leaf


passengers = st.fixed_dictionaries({}, optional={
    "sex": st.sampled_from(["female", "male", " Male ", "FEMALE"]) | st.sampled_from(["robot", ""]) | json_values,
    "age": st.floats(min_value=-10, max_value=200) | st.integers(min_value=-5, max_value=130) | numbers | json_values,
    "pclass": st.sampled_from([1, 2, 3, 1.0, 3.0, 0, 4, 2.5, "1"]) | numbers | json_values,
    "extra": json_values,
})
v2_data = st.lists(numbers, max_size=12) | st.lists(st.lists(numbers, max_size=4), max_size=4) | json_values
any_tensor = st.fixed_dictionaries({}, optional={
    "name": json_values,
    "datatype": st.sampled_from(["FP32", "FP64", "INT64", "BYTES"]) | json_values,
    "shape": st.lists(st.integers(min_value=-2, max_value=5) | huge_ints | json_values, max_size=3),
    "data": v2_data | st.integers(min_value=0, max_value=4).flatmap(lambda d: v2_data.map(lambda x: _nested(d, x))),
})


def _shaped_tensor(n: int) -> st.SearchStrategy[dict[str, Any]]:
    """Shape [n, 3] and exactly 3n values (flat or as rows), so the values themselves get checked."""
    values = st.lists(numbers, min_size=3 * n, max_size=3 * n) | st.lists(scalars, min_size=3 * n, max_size=3 * n)
    return st.fixed_dictionaries({"name": st.just("input"), "datatype": st.just("FP32"), "shape": st.just([n, 3]),
                                  "data": values | values.map(lambda v: [v[i:i + 3] for i in range(0, len(v), 3)])})


v2_tensors = any_tensor | st.integers(min_value=1, max_value=6).flatmap(_shaped_tensor)
v2_requests = st.fixed_dictionaries({"inputs": st.lists(v2_tensors, min_size=0, max_size=2) | json_values},
                                    optional={"id": json_values, "outputs": json_values})
content_types = st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded",
                                 "multipart/form-data; boundary=x", "application/json; charset=latin-1",
                                 "application/json; charset=bogus", ""])
bracket_bombs = st.integers(min_value=1, max_value=5000).flatmap(
    lambda depth: st.sampled_from([b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth, b"[" * depth]))
valid_rows = st.tuples(st.sampled_from([0, 1]), st.floats(min_value=0, max_value=120), st.sampled_from([1, 2, 3]))


# --- properties --------------------------------------------------------------------------------

@FUZZ
@given(value=json_values)
def test_any_json_value(service: Service, error_log: ErrorLog, value: Any) -> None:
    for path in (INFER, V2):
        check(service.post(path, dumps(value)))
    no_errors_logged(error_log)


@FUZZ
@given(raw=st.binary(max_size=200) | bracket_bombs, content_type=content_types)
def test_any_bytes(service: Service, error_log: ErrorLog, raw: bytes, content_type: str) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    for path in (INFER, V2):
        check(service.post(path, raw, headers), {"body", "sex", "age", "pclass", "inputs"})
    no_errors_logged(error_log)


@FUZZ
@given(payload=passengers)
def test_right_keys_any_values(service: Service, error_log: ErrorLog, payload: dict[str, Any]) -> None:
    body = check(service.post(INFER, dumps(payload)), PASSENGER_FIELDS)
    if "prediction" in body:
        assert body["prediction"] in (0, 1) and 0.0 <= body["probability"] <= 1.0
        assert body["passenger_info"]["sex"] in ("female", "male") and body["passenger_info"]["pclass"] in (1, 2, 3)
    no_errors_logged(error_log)


@FUZZ
@given(request=v2_requests)
def test_v2_any_tensor(service: Service, error_log: ErrorLog, request: dict[str, Any]) -> None:
    body = check(service.post(V2, dumps(request)), {"body", "id", "inputs"})
    if "outputs" in body:
        n = body["outputs"][0]["shape"][0]
        assert len(body["outputs"][0]["data"]) == len(body["outputs"][1]["data"]) == n >= 1
    no_errors_logged(error_log)


@FUZZ
@given(rows=st.lists(valid_rows, min_size=1, max_size=20))
def test_v2_valid_batches_are_200(service: Service, error_log: ErrorLog, rows: list[tuple[int, float, int]]) -> None:
    req = {"inputs": [{"name": "input", "shape": [len(rows), 3], "datatype": "FP32", "data": [list(r) for r in rows]}]}
    answer = service.post(V2, dumps(req))
    assert answer.status == 200, answer.body[:300]
    labels, probs = answer.json()["outputs"]
    assert len(labels["data"]) == len(probs["data"]) == len(rows)
    no_errors_logged(error_log)


# --- regressions: inputs that used to answer 500 -----------------------------------------------

@pytest.fixture
async def client(aiohttp_client: Any, error_log: ErrorLog) -> AsyncIterator[TestClient]:
    error_log.take()
    yield await aiohttp_client(create_app({"INSTANCE_ID": "regress"}))
    no_errors_logged(error_log)


async def post_raw(client: TestClient, path: str, raw: bytes, **headers: str) -> tuple[int, dict[str, Any]]:
    resp = await client.post(path, data=raw, headers={"Content-Type": "application/json", **headers})
    assert resp.content_type == "application/json"
    return resp.status, await resp.json()


BIG = "1" + "0" * 400  # 1e400 as an integer literal: too large for a float (OverflowError in float())
DEEP_LIST = b"[" * 100_000 + b"]" * 100_000  # RecursionError in the json decoder
DEEP_OBJECT = b'{"a":' * 100_000 + b"1" + b"}" * 100_000


def v2_body(shape: str, data: str) -> bytes:
    return f'{{"inputs": [{{"name": "input", "shape": {shape}, "datatype": "FP32", "data": {data}}}]}}'.encode()


@pytest.mark.parametrize("path,raw,field", [
    (INFER, f'{{"sex": "male", "age": {BIG}, "pclass": 1}}'.encode(), "age"),
    (INFER, f'{{"sex": "male", "age": -{BIG}, "pclass": 1}}'.encode(), "age"),
    (INFER, f'{{"sex": "male", "age": 30, "pclass": {BIG}}}'.encode(), "pclass"),
    (INFER, DEEP_LIST, "body"),
    (INFER, DEEP_OBJECT, "body"),
    (V2, DEEP_LIST, "body"),
    (V2, v2_body("[1, 3]", DEEP_LIST.decode()), "body"),
    (V2, v2_body("[1, 3]", f"[0, {BIG}, 1]"), "inputs[0].data"),
    ("/v2/models/titanic/versions/1/infer", v2_body("[1, 3]", f"[0, -{BIG}, 1]"), "inputs[0].data"),
])
async def test_used_to_be_500(client: TestClient, path: str, raw: bytes, field: str) -> None:
    status, body = await post_raw(client, path, raw)
    assert status == 400 and body["field"] == field, body
    assert len(body["error"]) < 200  # never echoes the 400-digit number back


@pytest.mark.parametrize("path,raw,field", [
    (INFER, b'{"sex": "male", "age": NaN, "pclass": 1}', "age"),
    (INFER, b'{"sex": "male", "age": -Infinity, "pclass": 1}', "age"),
    (INFER, b'{"sex": "male", "age": 1e999, "pclass": 1}', "age"),
    (INFER, b'{"sex": "male", "age": 30, "pclass": Infinity}', "pclass"),
    (INFER, b'{"sex": "male", "age": 30, "pclass": true}', "pclass"),
    (INFER, b'{"sex": ["male"], "age": 30, "pclass": 1}', "sex"),
    (INFER, b'{"sex": "' + b"m" * 500_000 + b'", "age": 30, "pclass": 1}', "sex"),
    (INFER, b'[{"sex": "male", "age": 30, "pclass": 1}]', "body"),
    (INFER, b"1" * 5000, "body"),  # past Python's 4300-digit int parsing limit
    (INFER, b'{"sex": "m\xe4le", "age": 30, "pclass": 1}', "body"),
    (V2, v2_body("[1, 3]", "[0, 1e39, 1]"), "inputs[0].data"),  # finite double, past FP32
    (V2, v2_body("[1, 3]", "[0, NaN, 1]"), "inputs[0].data"),
    (V2, v2_body(f"[{BIG}, 3]", "[0, 1, 1]"), "inputs[0].shape"),
    (V2, v2_body(f"[{MAX_BATCH_ROWS + 1}, 3]", "[0, 1, 1]"), "inputs[0].shape"),
    (V2, v2_body("[2, 3]", "[0, 1, 1]"), "inputs[0].data"),
    (V2, v2_body("[1, 3]", "[[0, 1], [1, 1]]"), "inputs[0].data"),
    (V2, v2_body("[1, 3]", '[0, "1", 1]'), "inputs[0].data"),
    (V2, v2_body("[true, 3]", "[0, 1, 1]"), "inputs[0].shape"),
    (V2, v2_body("[1, 3]", "{}"), "inputs[0].data"),
    (V2, b'{"inputs": [{"shape": [1, 3], "datatype": "INT64", "data": [0, 1, 1]}]}', "inputs[0].datatype"),
    (V2, b'{"inputs": {"shape": [1, 3]}}', "inputs"),
])
async def test_hostile_input_is_400_naming_the_field(client: TestClient, path: str, raw: bytes, field: str) -> None:
    status, body = await post_raw(client, path, raw)
    assert status == 400 and body["field"] == field, body
    assert len(body["error"]) < 200


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_undecodable_content_encoding_is_400(client: TestClient, encoding: str) -> None:
    """aiohttp raised RequestPayloadError from request.read() (500), then logged it again while lingering."""
    status, body = await post_raw(client, INFER, b"not compressed at all", **{"Content-Encoding": encoding})
    assert status == 400 and body["field"] == "body" and encoding in body["reason"]
    await asyncio.sleep(0.05)  # let the server finish the connection: it must not log anything
    resp = await client.post(INFER, json={"sex": "female", "age": 29, "pclass": 1})
    assert resp.status == 200  # the service is unharmed; the broken connection was closed, not reused


async def test_gzip_body_that_is_not_json_is_400(client: TestClient) -> None:
    status, body = await post_raw(client, INFER, gzip.compress(b"\xff\xfe\x00"), **{"Content-Encoding": "gzip"})
    assert status == 400 and body["field"] == "body"
    status, body = await post_raw(client, INFER, gzip.compress(b'{"sex": "male", "age": 30, "pclass": 3}'),
                                  **{"Content-Encoding": "gzip"})
    assert status == 200 and body["prediction_status"] == "died"
