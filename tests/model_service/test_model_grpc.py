"""The model service over KServe V2 gRPC (`python -m model_service --protocol grpc`), with a real grpcio client:
every V2 method, the shapes of the HTTP V2 endpoint, the answers the model gives in-process, bad input as
INVALID_ARGUMENT, the grpc.health.v1 service; and `readiness: grpc` starting it as a process-backend child and in
the stub backend's process."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from model_service.grpc_v2 import grpc_predict_v2_pb2 as pb
from model_service.grpc_v2 import grpc_predict_v2_pb2_grpc as pb_grpc
from model_service.model import get_model
from proxy.errors import StartFailed
from proxy.lifecycle.events import State
from tests.conftest import MakeProxy

ROOT = Path(__file__).resolve().parents[2]
ROWS = [[0.0, 29.0, 1.0], [1.0, 40.0, 3.0], [0.0, 2.0, 2.0]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def service() -> Iterator[tuple[grpc.Channel, subprocess.Popen[str]]]:
    port = free_port()
    env = {**os.environ, "MODEL_SERVICE_PROTOCOL": "grpc", "PORT": str(port), "HOST": "127.0.0.1"}
    proc = subprocess.Popen([sys.executable, "-m", "model_service"], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        grpc.channel_ready_future(channel).result(timeout=60)
        yield channel, proc
    finally:
        channel.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def stub(service: tuple[grpc.Channel, Any]) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(service[0])


def infer_request(rows: list[list[float]], raw: bool = False, **kw: Any) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="titanic", **kw)
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[len(rows), 3])
    flat = [v for row in rows for v in row]
    if raw:
        request.raw_input_contents.append(struct.pack(f"<{len(flat)}f", *flat))
    else:
        tensor.contents.fp32_contents.extend(flat)
    return request


def test_server_and_model_metadata(service: Any) -> None:
    v2 = stub(service)
    assert v2.ServerLive(pb.ServerLiveRequest()).live is True
    assert v2.ServerReady(pb.ServerReadyRequest()).ready is True
    meta = v2.ServerMetadata(pb.ServerMetadataRequest())
    assert meta.name == "titanic-model-service" and meta.version
    model = get_model()
    assert v2.ModelReady(pb.ModelReadyRequest(name=model.name)).ready is True
    assert v2.ModelReady(pb.ModelReadyRequest(name=model.name, version=model.version)).ready is True
    m = v2.ModelMetadata(pb.ModelMetadataRequest(name=model.name))
    assert (m.name, list(m.versions), m.platform) == (model.name, [model.version], "onnxruntime")
    assert [(t.name, t.datatype, list(t.shape)) for t in m.inputs] == [("input", "FP32", [-1, 3])]
    assert [(t.name, t.datatype, list(t.shape)) for t in m.outputs] == [("label", "INT64", [-1]),
                                                                         ("probability", "FP32", [-1])]
    for call, request in ((v2.ModelMetadata, pb.ModelMetadataRequest(name="nope")),
                          (v2.ModelReady, pb.ModelReadyRequest(name=model.name, version="99"))):
        with pytest.raises(grpc.RpcError) as missing:
            call(request)
        assert missing.value.code() is grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("raw", [False, True], ids=["contents", "raw"])
def test_model_infer_gives_the_models_prediction(service: Any, raw: bool) -> None:
    labels, probs = get_model().predict(np.asarray(ROWS, dtype=np.float32))
    answer = stub(service).ModelInfer(infer_request(ROWS, raw=raw, id="req-1"))
    assert (answer.model_name, answer.model_version, answer.id) == ("titanic", get_model().version, "req-1")
    assert [(o.name, o.datatype, list(o.shape)) for o in answer.outputs] == [("label", "INT64", [3]),
                                                                              ("probability", "FP32", [3])]
    if raw:
        got_labels = np.frombuffer(answer.raw_output_contents[0], dtype="<i8")
        got_probs = np.frombuffer(answer.raw_output_contents[1], dtype="<f4")
    else:
        got_labels = np.asarray(answer.outputs[0].contents.int64_contents)
        got_probs = np.asarray(answer.outputs[1].contents.fp32_contents, dtype=np.float32)
    assert got_labels.tolist() == labels.tolist()
    assert np.allclose(got_probs, probs)


def test_requested_outputs_only(service: Any) -> None:
    request = infer_request(ROWS[:1])
    request.outputs.add(name="probability")
    answer = stub(service).ModelInfer(request)
    assert [o.name for o in answer.outputs] == ["probability"]


@pytest.mark.parametrize("mutate,field", [
    (lambda r: r.inputs[0].__setattr__("datatype", "INT64"), "inputs[0].datatype"),
    (lambda r: r.inputs[0].shape.__setitem__(1, 4), "inputs[0].shape"),
    (lambda r: r.inputs[0].contents.fp32_contents.append(1.0), "inputs[0].contents.fp32_contents"),
    (lambda r: r.inputs[0].contents.fp32_contents.__setitem__(0, float("nan")), "inputs[0]"),
    (lambda r: r.inputs.add(name="second", datatype="FP32", shape=[1, 3]), "inputs"),
    (lambda r: r.outputs.add(name="survival"), "outputs[0].name"),
    (lambda r: r.raw_input_contents.append(b"\0" * 12), "raw_input_contents"),
])
def test_bad_input_is_invalid_argument_naming_the_field(service: Any, mutate: Any, field: str) -> None:
    request = infer_request(ROWS[:1])
    mutate(request)
    with pytest.raises(grpc.RpcError) as refused:
        stub(service).ModelInfer(request)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert f"invalid input: {field} " in refused.value.details()
    assert stub(service).ServerLive(pb.ServerLiveRequest()).live  # still serving


def test_raw_bytes_of_the_wrong_length(service: Any) -> None:
    request = pb.ModelInferRequest(model_name="titanic")
    request.inputs.add(name="input", datatype="FP32", shape=[2, 3])
    request.raw_input_contents.append(b"\0" * 12)
    with pytest.raises(grpc.RpcError) as refused:
        stub(service).ModelInfer(request)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "has 12 bytes, shape needs 24" in refused.value.details()


def test_health_service_says_serving(service: Any) -> None:
    health = health_pb2_grpc.HealthStub(service[0])
    for name in ("", "inference.GRPCInferenceService"):
        answer = health.Check(health_pb2.HealthCheckRequest(service=name))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as unknown:
        health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
    assert unknown.value.code() is grpc.StatusCode.NOT_FOUND


def test_a_model_that_fails_to_load_is_not_ready(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1",
           "MODEL_SERVICE_MODEL_PATH": str(tmp_path / "missing.onnx")}
    proc = subprocess.Popen([sys.executable, "-m", "model_service", "--protocol", "grpc"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        grpc.channel_ready_future(channel).result(timeout=60)
        v2 = pb_grpc.GRPCInferenceServiceStub(channel)
        assert v2.ServerLive(pb.ServerLiveRequest()).live is True
        assert v2.ServerReady(pb.ServerReadyRequest()).ready is False
        with pytest.raises(grpc.RpcError) as unavailable:
            v2.ModelInfer(infer_request(ROWS[:1]))
        assert unavailable.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "model not loaded" in unavailable.value.details()
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        channel.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_an_unknown_protocol_is_refused_in_one_line() -> None:
    done = subprocess.run([sys.executable, "-m", "model_service"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "MODEL_SERVICE_PROTOCOL": "spdy"}, timeout=60)
    assert done.returncode == 2 and "MODEL_SERVICE_PROTOCOL must be one of http, grpc" in done.stderr
    assert "Traceback" not in done.stderr


# ---------------------------------------------------------------- readiness: grpc, as a process-backend child


@pytest.fixture(params=["stub", "process"])
def backend_kind(request: pytest.FixtureRequest) -> str:
    """The stub serves the gRPC model service in the proxy's process, the process backend as a child."""
    return str(request.param)


GRPC_CLASS = {"env": {"MODEL_SERVICE_PROTOCOL": "grpc"}, "readiness": {"kind": "grpc", "interval": "20ms"}}


async def test_readiness_grpc_starts_the_grpc_model_service(make_proxy: MakeProxy) -> None:
    h = await make_proxy(svc=GRPC_CLASS)
    assert h.proxy.config.containers["svc"].readiness.describe() == "gRPC health check"
    manager = h.proxy.registry.get("grpc-key", "svc")
    await manager.ensure_running()
    assert manager.state is State.RUNNING
    instance = manager.instance
    assert instance is not None
    # ready meant ready: the V2 API answers at once on the instance's address
    async with grpc.aio.insecure_channel(f"{instance.host}:{instance.port}") as channel:
        v2 = pb_grpc.GRPCInferenceServiceStub(channel)
        answer = await v2.ModelInfer(infer_request(ROWS[:1]))
    assert list(answer.outputs[0].contents.int64_contents) == get_model().predict(np.asarray(ROWS[:1]))[0].tolist()
    check = await h.proxy.prober.check(instance, h.proxy.config.containers["svc"].readiness)
    assert check.ok and check.what == "grpc health: SERVING"


@pytest.mark.parametrize("svc", [
    {"entrypoint": ["sh", "-c", f"exec {sys.executable} -m http.server --bind $HOST $PORT"]},  # answers a 505
    {},  # the model service speaking HTTP (aiohttp answers HTTP/2's preface with a 400)
], ids=["http.server", "model-http"])
async def test_readiness_grpc_of_an_http1_app_fails_at_once(make_proxy: MakeProxy, svc: dict[str, Any],
                                                            backend_kind: str) -> None:
    """An app answering in HTTP/1 will never pass a gRPC health check: the start fails with the probe's reason at
    once, not at start_timeout (a StartTimeout would name start_timeout)."""
    if svc and backend_kind == "stub":
        pytest.skip("the stub runs no entrypoint")
    h = await make_proxy(svc={**svc, "start_timeout": "120s",
                              "readiness": {"kind": "grpc", "service": "inference.GRPCInferenceService"}})
    manager = h.proxy.registry.get("http-key", "svc")
    with pytest.raises(StartFailed) as failed:
        await manager.ensure_running()
    assert "readiness grpc: the app does not speak HTTP/2 on its port" in str(failed.value), failed.value
    assert manager.state is State.FAILED


# ---------------------------------------------------------------- the shipped config's gRPC class and route


async def test_shipped_grpc_class_serves_v2_grpc(aiohttp_client: Any) -> None:
    """config.yaml's `model-grpc` on its stub backend: ready by the gRPC health check, then V2 ModelInfer; once
    the proxy speaks gRPC upstream (`protocol`), a grpcio client through the proxy's route on a cold key."""
    from backends.stub import StubBackend
    from proxy.app import PROXY, create_app
    from proxy.config.schema import load_config
    from tests.conftest import proxy_server

    config = load_config(ROOT / "config.yaml")
    klass = config.containers["model-grpc"]
    assert klass.readiness.kind == "grpc" and klass.spec.env["MODEL_SERVICE_PROTOCOL"] == "grpc"
    routes = {r.path: r for r in config.routes}
    assert routes["/inference.GRPCInferenceService/{method}"].container == "model-grpc"
    app = create_app(config, StubBackend())
    client = await aiohttp_client(proxy_server(app))
    proxy = app[PROXY]
    assert klass.protocol == "grpc"
    target = f"127.0.0.1:{client.port}"  # through the proxy: a cold key, held until ready
    async with grpc.aio.insecure_channel(target) as channel:
        answer = await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(infer_request(ROWS))
    labels, _ = get_model().predict(np.asarray(ROWS, dtype=np.float32))
    assert list(answer.outputs[0].contents.int64_contents) == labels.tolist()
    assert proxy.registry.managers[("model-grpc", "model-grpc")].start_count == 1
