"""The model over the KServe / Triton V2 gRPC protocol (`inference.GRPCInferenceService`), with grpcio.

`python -m model_service --protocol grpc` (or `MODEL_SERVICE_PROTOCOL=grpc`) serves this instead of the HTTP
app, on the same `$PORT`: ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata and ModelInfer
with the HTTP V2 endpoint's shapes (input `input` FP32 `[N, 3]`; outputs `label` INT64 and `probability` FP32
`[N]`), plus the standard `grpc.health.v1.Health` service (SERVING once the model loaded), which the proxy's
`readiness: grpc` asks. Input comes as `contents.fp32_contents` or as `raw_input_contents` (little-endian);
the answer is raw when the question was. Bad input is INVALID_ARGUMENT naming the field, an unknown model
NOT_FOUND, a model that failed to load UNAVAILABLE. The stubs in model_service/grpc_v2/ are generated from
the .proto there and committed, so running needs only grpcio and protobuf.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any, Mapping

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from model_service.grpc_v2 import grpc_predict_v2_pb2 as pb
from model_service.grpc_v2 import grpc_predict_v2_pb2_grpc as pb_grpc
from model_service.model import N_FEATURES, TitanicModel, ValidationError, get_model, v2_rows, v2_values

log = logging.getLogger("model_service.grpc")

SERVICE_NAME = "titanic-model-service"
SERVICE_VERSION = "1.0.0"
V2_SERVICE = "inference.GRPCInferenceService"
OUTPUTS = ("label", "probability")
DEFAULT_MAX_MESSAGE = 1024 * 1024  # as the HTTP app's MODEL_SERVICE_MAX_BODY
GRACE = 10.0  # seconds calls in flight get on SIGTERM/SIGINT, as the HTTP app's shutdown_timeout


class V2Servicer(pb_grpc.GRPCInferenceServiceServicer):
    """The V2 methods over one lazily loaded model; `load_error` says why it is not ready."""

    def __init__(self, model_path: str | None) -> None:
        self.model_path = model_path
        self.model: TitanicModel | None = None
        self.load_error: str | None = None

    def load(self) -> TitanicModel | None:
        if self.model is None:
            try:
                self.model = get_model(self.model_path)
                self.load_error = None
            except Exception as exc:  # reported by ServerReady and the health service, not a crash
                self.load_error = f"{type(exc).__name__}: {exc}"
                log.error("model load failed: %s", self.load_error)
        return self.model

    async def _model(self, context: grpc.aio.ServicerContext[Any, Any], name: str, version: str) -> TitanicModel:
        model = self.load()
        if model is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"model not loaded: {self.load_error}")
        assert model is not None
        if name != model.name or (version and version != model.version):
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"unknown model {name!r}" + (f" version {version!r}" if version else ""))
        return model

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.load() is not None)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        await self._model(context, request.name, request.version)
        return pb.ModelReadyResponse(ready=True)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVICE_NAME, version=SERVICE_VERSION, extensions=[])

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        model = await self._model(context, request.name, request.version)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=model.name, versions=[model.version], platform="onnxruntime",
            inputs=[tensor(name="input", datatype="FP32", shape=[-1, N_FEATURES])],
            outputs=[tensor(name="label", datatype="INT64", shape=[-1]),
                     tensor(name="probability", datatype="FP32", shape=[-1])])

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        model = await self._model(context, request.model_name, request.model_version)
        try:
            rows, raw = infer_input(request)
            wanted = requested_outputs(request)
        except ValidationError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.message)
        labels, probs = model.predict(rows)  # the whole batch in one onnxruntime call
        return infer_response(request, model, labels, probs, wanted, raw)


def infer_input(request: pb.ModelInferRequest) -> tuple[np.ndarray, bool]:
    """The [N, 3] FP32 rows of a V2 infer request, and whether they came as raw bytes."""
    if len(request.inputs) != 1:
        raise ValidationError("inputs", "must be a list with exactly one tensor")
    tensor = request.inputs[0]
    if tensor.datatype != "FP32":
        raise ValidationError("inputs[0].datatype", "must be FP32")
    rows = v2_rows(list(tensor.shape))
    raw = bool(request.raw_input_contents)
    if raw:
        if len(request.raw_input_contents) != 1 or tensor.HasField("contents"):
            raise ValidationError("raw_input_contents", "must hold the one input's bytes, and contents be unset")
        blob = request.raw_input_contents[0]
        if len(blob) != rows * N_FEATURES * 4:
            raise ValidationError("raw_input_contents[0]", f"has {len(blob)} bytes, shape needs "
                                                           f"{rows * N_FEATURES * 4}")
        values = np.frombuffer(blob, dtype="<f4").astype(np.float32)
    else:
        data = tensor.contents.fp32_contents
        if len(data) != rows * N_FEATURES:
            raise ValidationError("inputs[0].contents.fp32_contents",
                                  f"has {len(data)} values, shape needs {rows * N_FEATURES}")
        values = np.asarray(data, dtype=np.float32)
    return v2_values(values, "inputs[0]").reshape(rows, N_FEATURES), raw


def requested_outputs(request: pb.ModelInferRequest) -> tuple[str, ...]:
    """The outputs asked for (all when none is named); an unknown name is the client's mistake."""
    names = tuple(out.name for out in request.outputs) or OUTPUTS
    for i, name in enumerate(names):
        if name not in OUTPUTS:
            raise ValidationError(f"outputs[{i}].name", f"must be one of {', '.join(OUTPUTS)}")
    return names


def infer_response(request: pb.ModelInferRequest, model: TitanicModel, labels: np.ndarray, probs: np.ndarray,
                   wanted: tuple[str, ...], raw: bool) -> pb.ModelInferResponse:
    n = int(labels.shape[0])
    response = pb.ModelInferResponse(model_name=model.name, model_version=model.version, id=request.id)
    for name in wanted:
        values, datatype = (labels.astype("<i8"), "INT64") if name == "label" else (probs.astype("<f4"), "FP32")
        out = response.outputs.add(name=name, datatype=datatype, shape=[n])
        if raw:
            response.raw_output_contents.append(values.tobytes())
        elif name == "label":
            out.contents.int64_contents.extend(values.tolist())
        else:
            out.contents.fp32_contents.extend(values.tolist())
    return response


async def start(host: str, port: int, env: Mapping[str, str]) -> tuple[grpc.aio.Server, int]:
    """A started server on host:port (0: any free port) and the port it got; the health service says SERVING
    once the model loaded. The proxy's stub backend runs one in its own process this way."""
    try:
        limit = int(env.get("MODEL_SERVICE_MAX_BODY", DEFAULT_MAX_MESSAGE))
    except ValueError:
        limit = DEFAULT_MAX_MESSAGE
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit), ("grpc.so_reuseport", 0)])
    servicer = V2Servicer(env.get("MODEL_SERVICE_MODEL_PATH") or None)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"cannot listen on {address}: {exc}") from None
    await server.start()
    status = health_pb2.HealthCheckResponse.SERVING if servicer.load() is not None \
        else health_pb2.HealthCheckResponse.NOT_SERVING
    for service in ("", V2_SERVICE):
        await health.set(service, status)
    return server, bound


async def serve(host: str, port: int, env: Mapping[str, str]) -> None:
    """Serve until SIGTERM/SIGINT; calls in flight get GRACE seconds to finish."""
    try:
        server, _ = await start(host, port, env)
    except OSError as exc:
        raise SystemExit(f"model_service: {exc}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(GRACE)
