"""Model service: ONNX parity with sklearn, committed model sanity, every route, input validation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model_service.app import create_app
from model_service.model import DEFAULT_MODEL_PATH, TitanicModel, ValidationError, parse_passenger

DATA = Path(__file__).resolve().parents[3] / "shared/data/titanic.csv"
needs_data = pytest.mark.skipif(not DATA.is_file(), reason=f"{DATA} not present")


# --- model -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained():
    from model_service.train import train

    return train(DATA)


@needs_data
def test_heldout_accuracy(trained) -> None:
    assert trained.accuracy >= 0.75
    assert len(trained.y_test) == 262 and len(trained.y_train) == 1047


@needs_data
def test_onnx_matches_sklearn(trained, tmp_path: Path) -> None:
    from model_service.train import export

    onnx_path, meta_path = export(trained, tmp_path)
    model = TitanicModel(onnx_path)
    labels, probs = model.predict(trained.X_test)
    np.testing.assert_array_equal(labels, trained.model.predict(trained.X_test))
    np.testing.assert_allclose(probs, trained.model.predict_proba(trained.X_test)[:, 1], atol=1e-5)
    meta = json.loads(meta_path.read_text())
    assert meta["name"] == "titanic" and meta["version"] == "1"
    assert meta["features"] == ["sex_encoded", "age", "pclass"]
    assert meta["n_test"] == 262 and meta["accuracy"] >= 0.75 and len(meta["data_sha256"]) == 64


def test_committed_model_is_sane() -> None:
    model = TitanicModel(DEFAULT_MODEL_PATH)
    assert model.name == "titanic" and model.version == "1"
    assert model.metadata["accuracy"] >= 0.75
    labels, probs = model.predict(np.array([[0, 29, 1], [1, 35, 3]], dtype=np.float32))
    assert labels.tolist() == [1, 0]
    assert probs[0] > 0.8 and probs[1] < 0.3
    assert probs.dtype == np.float32 and labels.dtype == np.int64


@pytest.mark.parametrize("payload,field", [
    ({"age": 3, "pclass": 1}, "sex"),
    ({"sex": "female", "pclass": 1}, "age"),
    ({"sex": "female", "age": float("nan"), "pclass": 1}, "age"),
    ({"sex": "female", "age": float("inf"), "pclass": 1}, "age"),
    ({"sex": "female", "age": 3, "pclass": 2.5}, "pclass"),
    ({"sex": 1, "age": 3, "pclass": 1}, "sex"),
    ({"sex": "female", "age": 10**400, "pclass": 1}, "age"),  # OverflowError in float(): used to be a 500
    ({"sex": "female", "age": 3, "pclass": -(10**400)}, "pclass"),
    ([1, 2], "body"),
])
def test_parse_passenger_rejects(payload, field) -> None:
    with pytest.raises(ValidationError) as err:
        parse_passenger(payload)
    assert err.value.field == field


def test_parse_passenger_normalises() -> None:
    assert parse_passenger({"sex": "Male", "age": 0, "pclass": 3.0}) == {"sex": "male", "age": 0.0, "pclass": 3}


# --- routes ------------------------------------------------------------------------------------

@pytest.fixture
async def client(aiohttp_client):
    return await aiohttp_client(create_app({"INSTANCE_ID": "test-1", "API_TITLE": "T", "ENVIRONMENT": "test"}))


async def test_index(client) -> None:
    resp = await client.get("/")
    assert resp.status == 200
    body = await resp.json()
    assert body["name"] == "titanic-model-service" and body["title"] == "T"
    assert "POST /api/inference" in body["routes"] and "POST /v2/models/{model}/infer" in body["routes"]
    assert body["model"]["name"] == "titanic" and body["model"]["accuracy"] >= 0.75
    assert not any(r.split()[1].startswith("/debug") for r in body["routes"])


async def test_health(client) -> None:
    resp = await client.get("/api/health")
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "healthy" and body["instance_id"] == "test-1"


@pytest.mark.parametrize("passenger,label,status", [
    ({"sex": "female", "age": 29, "pclass": 1}, 1, "survived"),
    ({"sex": "male", "age": 40.5, "pclass": 3}, 0, "died"),
])
async def test_inference(client, passenger, label, status) -> None:
    resp = await client.post("/api/inference", json=passenger)
    assert resp.status == 200
    body = await resp.json()
    assert body["prediction"] == label and body["prediction_status"] == status
    assert 0.0 <= body["probability"] <= 1.0 and (body["probability"] > 0.5) == (label == 1)
    assert body["passenger_info"] == {**passenger, "age": float(passenger["age"])}


async def test_inference_unbatched_equals_batched(aiohttp_client, client) -> None:
    plain = await aiohttp_client(create_app({"MODEL_SERVICE_BATCHING": "0"}))
    p = {"sex": "male", "age": 7, "pclass": 2}
    a = await (await client.post("/api/inference", json=p)).json()
    b = await (await plain.post("/api/inference", json=p)).json()
    assert a == b


async def test_container_info(aiohttp_client, client) -> None:
    body = await (await client.get("/api/container-info")).json()
    assert body["api_title"] == "T" and body["environment"] == "test" and body["instance_id"] == "test-1"
    assert isinstance(body["pid"], int) and body["hostname"]
    other = await aiohttp_client(create_app({}))
    resp = await other.get("/api/container-info")
    assert resp.status == 200
    body = await resp.json()
    assert body["environment"] == "development" and body["api_version"] == "1.0.0"
    assert body["instance_id"] and body["instance_id"] != "test-1"


@pytest.mark.parametrize("payload,field", [
    ({"age": 29, "pclass": 1}, "sex"),
    ({"sex": "female", "pclass": 1}, "age"),
    ({"sex": "female", "age": 29}, "pclass"),
    ({"sex": "female", "age": "old", "pclass": 1}, "age"),
    ({"sex": "female", "age": True, "pclass": 1}, "age"),
    ({"sex": "female", "age": 29, "pclass": False}, "pclass"),
    ({"sex": "female", "age": -1, "pclass": 1}, "age"),
    ({"sex": "female", "age": 121, "pclass": 1}, "age"),
    ({"sex": "other", "age": 29, "pclass": 1}, "sex"),
    ({"sex": "female", "age": 29, "pclass": 4}, "pclass"),
    ({"sex": "female", "age": 29, "pclass": "1"}, "pclass"),
    ([{"sex": "female"}], "body"),
    ("female", "body"),
])
async def test_inference_invalid(client, payload, field) -> None:
    resp = await client.post("/api/inference", json=payload)
    assert resp.status == 400
    body = await resp.json()
    assert body["field"] == field and body["reason"] and field in body["error"]


@pytest.mark.parametrize("raw", [b"{bad", b"", b"\xff\xfe", b"NaN-ish"])
async def test_inference_malformed_json(client, raw) -> None:
    resp = await client.post("/api/inference", data=raw, headers={"Content-Type": "application/json"})
    assert resp.status == 400
    body = await resp.json()
    assert body["error"] == "invalid JSON" and body["field"] == "body"


async def test_body_too_large(client) -> None:
    resp = await client.post("/api/inference", data=b"x" * (2 * 1024 * 1024))
    assert resp.status == 413
    assert "error" in await resp.json()


async def test_unknown_route_and_method(client) -> None:
    resp = await client.get("/nope")
    assert resp.status == 404
    assert (await resp.json())["error"] == "Not Found"
    resp = await client.get("/api/inference")
    assert resp.status == 405
    assert "error" in await resp.json()


async def test_v2_health_and_metadata(client) -> None:
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/titanic/ready"):
        resp = await client.get(path)
        assert resp.status == 200, path
    assert (await (await client.get("/v2/health/ready")).json())["ready"] is True
    assert (await (await client.get("/v2/health/live")).json())["live"] is True
    meta = await (await client.get("/v2/models/titanic")).json()
    assert meta["name"] == "titanic" and meta["versions"] == ["1"] and meta["platform"] == "onnxruntime"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3]}]
    assert [o["name"] for o in meta["outputs"]] == ["label", "probability"]
    assert (await client.get("/v2/models/other")).status == 404
    assert (await client.get("/v2/models/titanic/versions/1")).status == 200
    assert (await client.get("/v2/models/titanic/versions/9")).status == 404


ROWS = [[0, 29, 1], [1, 35, 3], [0, 4, 3], [1, 60, 1], [0, 50, 2]]
SEX = {0: "female", 1: "male"}


@pytest.mark.parametrize("nested", [False, True])
async def test_v2_infer_batch_equals_singles(client, nested) -> None:
    data = ROWS if nested else [v for r in ROWS for v in r]
    req = {"id": "r1", "inputs": [{"name": "input", "shape": [5, 3], "datatype": "FP32", "data": data}]}
    resp = await client.post("/v2/models/titanic/infer", json=req)
    assert resp.status == 200
    body = await resp.json()
    assert body["model_name"] == "titanic" and body["model_version"] == "1" and body["id"] == "r1"
    label, prob = body["outputs"]
    assert label["name"] == "label" and label["shape"] == [5] and label["datatype"] == "INT64"
    assert prob["name"] == "probability" and prob["shape"] == [5] and prob["datatype"] == "FP32"
    for i, (sex, age, pclass) in enumerate(ROWS):
        single = {"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [sex, age, pclass]}]}
        one = await (await client.post("/v2/models/titanic/infer", json=single)).json()
        assert one["outputs"][0]["data"] == [label["data"][i]]
        assert one["outputs"][1]["data"][0] == pytest.approx(prob["data"][i], abs=1e-6)
        plain = await (await client.post("/api/inference",
                                         json={"sex": SEX[sex], "age": age, "pclass": pclass})).json()
        assert plain["prediction"] == label["data"][i]
        assert plain["probability"] == pytest.approx(prob["data"][i], abs=1e-6)


@pytest.mark.parametrize("req,field", [
    ({}, "inputs"),
    ({"inputs": []}, "inputs"),
    ({"inputs": [{"shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3]}]}, "inputs[0].data"),
    ({"inputs": [{"shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}, "inputs[0].shape"),
    ({"inputs": [{"shape": [1, 3], "datatype": "BYTES", "data": [1, 2, 3]}]}, "inputs[0].datatype"),
    ({"inputs": [{"shape": [1, 3], "datatype": "FP32", "data": [1, "a", 3]}]}, "inputs[0].data"),
    ({"inputs": [{"shape": [1, 3], "datatype": "FP32", "data": [1, True, 3]}]}, "inputs[0].data"),
    ([1], "body"),
])
async def test_v2_infer_invalid(client, req, field) -> None:
    resp = await client.post("/v2/models/titanic/infer", json=req)
    assert resp.status == 400
    assert (await resp.json())["field"] == field


async def test_openapi_and_docs(client) -> None:
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    doc = await resp.json()
    assert doc["openapi"].startswith("3.")
    for path in ("/api/inference", "/api/health", "/v2/models/titanic/infer", "/api/container-info", "/docs"):
        assert path in doc["paths"]
    resp = await client.get("/docs")
    assert resp.status == 200 and resp.content_type == "text/html"
    html = await resp.text()
    assert "/api/inference" in html and "openapi.json" in html and "/v2/health/ready" in html


# --- packaging: `pip install lazy-proxy` alone has no onnxruntime/numpy ---------------------------

ROOT = Path(__file__).resolve().parents[2]
WITHOUT_MODEL_DEPS = "import sys\nsys.modules['onnxruntime'] = sys.modules['numpy'] = None  # as if not installed\n"


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", WITHOUT_MODEL_DEPS + code], cwd=ROOT, capture_output=True, check=False,
                          text=True, timeout=60)


def test_model_service_without_its_extra_says_how_to_install_it() -> None:
    proc = _python("import model_service.app")
    assert proc.returncode != 0
    assert "ImportError: the model service needs onnxruntime and numpy" in proc.stderr
    assert "pip install 'lazy-proxy[model]'" in proc.stderr


def test_proxy_runs_without_the_model_extra_and_the_stub_backend_names_it() -> None:
    proc = _python(
        "import asyncio\n"
        "import proxy.app, proxy.__main__\n"
        "from backends.base import BackendError, ContainerSpec\n"
        "from backends.stub import StubBackend\n"
        "try:\n"
        "    asyncio.run(StubBackend().start('k', ContainerSpec(name='worker', image='lazy-proxy/model-service')))\n"
        "except BackendError as exc:\n"
        "    print(exc)\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'lazy-proxy[model]'" in proc.stdout
