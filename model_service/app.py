"""aiohttp app for the Titanic model: plain JSON API, KServe/Triton V2 protocol, OpenAPI docs.

`create_app(env)` never reads os.environ itself when given a mapping: the proxy's in-process stub
backend builds one app per key with its own env, and the ONNX session is shared process-wide.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from typing import Any, Awaitable, Callable, Mapping

from aiohttp import web

from model_service.model import (
    N_FEATURES,
    MicroBatcher,
    TitanicModel,
    ValidationError,
    batching_enabled,
    get_model,
    parse_passenger,
    parse_v2_input,
    passenger_row,
)
from model_service.openapi import build_openapi, render_docs

log = logging.getLogger("model_service")

SERVICE_NAME = "titanic-model-service"
SERVICE_VERSION = "1.0.0"
DEFAULT_MAX_BODY = 1024 * 1024


class _State:
    """Per-app mutable state (the Application itself is frozen once it starts)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = dict(env)
        self.model_path = env.get("MODEL_SERVICE_MODEL_PATH") or None
        self.model: TitanicModel | None = None
        self.load_error: str | None = None
        self.batching = batching_enabled(env)
        self.batcher: MicroBatcher | None = None
        self.instance_id = env.get("INSTANCE_ID") or uuid.uuid4().hex[:12]
        self.title = env.get("API_TITLE", "Titanic Survival Prediction API")
        self.api_version = env.get("API_VERSION", SERVICE_VERSION)
        self.environment = env.get("ENVIRONMENT", "development")
        self.openapi = build_openapi(self.api_version, self.title)

    def ensure_model(self) -> TitanicModel:
        if self.model is None:
            try:
                self.model = get_model(self.model_path)
            except Exception as exc:  # reported via readiness, not a crash
                self.load_error = f"{type(exc).__name__}: {exc}"
                log.error("model load failed: %s", self.load_error)
                raise web.HTTPServiceUnavailable(reason="model not loaded") from None
            if self.batching:
                self.batcher = MicroBatcher(self.model.predict, max_batch=_int(self.env, "MODEL_SERVICE_MAX_BATCH", 64),
                                            max_wait=_float(self.env, "MODEL_SERVICE_MAX_WAIT_MS", 2.0) / 1000.0)
        return self.model


STATE = web.AppKey("model_service_state", _State)


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    try:
        return int(env.get(name, default))
    except ValueError:
        return default


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    try:
        return float(env.get(name, default))
    except ValueError:
        return default


def _error(status: int, error: str, **extra: Any) -> web.Response:
    return web.json_response({"error": error, **extra}, status=status)


@web.middleware
async def json_errors(request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Every failure leaves as JSON: 400 names the field, 404/405/413 keep their status."""
    try:
        return await handler(request)
    except ValidationError as exc:
        return _bad_request(request, exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        resp = _error(exc.status, exc.reason, path=request.path)
        resp.headers.update(headers)
        return resp
    except ConnectionError:
        raise  # the client went away; nothing to answer and nothing to log
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _error(500, "internal server error")


def _bad_request(request: web.Request, exc: ValidationError) -> web.Response:
    """The one place client input becomes a 400: JSON naming the offending field."""
    resp = _error(400, exc.message, field=exc.field, reason=exc.reason)
    if request.content.exception() is not None:
        # The body stream itself broke (undecodable Content-Encoding): end it here, or aiohttp lingers
        # re-reading it and logs the same error as an "Unhandled exception"; and close the connection,
        # whose parser cannot frame another request.
        request.content.feed_eof()
        resp.force_close()
    return resp


class InvalidJSON(ValidationError):
    """The body is not parseable JSON (distinct from a well-formed body with a bad field)."""

    def __init__(self, reason: str) -> None:
        super().__init__("body", reason)

    @property
    def message(self) -> str:
        return "invalid JSON"


async def _json_body(request: web.Request) -> Any:
    try:
        raw = await request.read()  # raises 413 past client_max_size
    except web.RequestPayloadError:
        encoding = request.headers.get("Content-Encoding", "")
        raise ValidationError("body", f"cannot be decoded (Content-Encoding: {encoding or 'none'})") from None
    try:
        return json.loads(raw)
    except RecursionError:  # the C decoder recurses once per nesting level
        raise InvalidJSON("nested too deeply") from None
    except ValueError as exc:  # includes UnicodeDecodeError and integers past 4300 digits
        raise InvalidJSON(str(exc)) from None


async def index(request: web.Request) -> web.Response:
    st = request.app[STATE]
    model = st.ensure_model()
    routes = sorted({f"{r.method} {r.resource.canonical}" for r in request.app.router.routes()
                     if r.resource is not None and r.method != "HEAD"})
    meta = {k: model.metadata.get(k) for k in ("name", "version", "model_type", "features", "accuracy",
                                               "n_train", "n_test")}
    return web.json_response({"name": SERVICE_NAME, "title": st.title, "version": st.api_version,
                              "routes": routes, "model": meta, "batching": st.batching, "docs": "/docs"})


async def health(request: web.Request) -> web.Response:
    st = request.app[STATE]
    st.ensure_model()
    return web.json_response({"status": "healthy", "model_loaded": True, "instance_id": st.instance_id})


async def inference(request: web.Request) -> web.Response:
    st = request.app[STATE]
    model = st.ensure_model()
    passenger = parse_passenger(await _json_body(request))
    row = passenger_row(passenger)
    if st.batcher is not None:
        label, prob = await st.batcher.predict_one(row)
    else:
        labels, probs = model.predict(row.reshape(1, N_FEATURES))
        label, prob = int(labels[0]), float(probs[0])
    return web.json_response({"prediction": label, "prediction_status": "survived" if label == 1 else "died",
                              "probability": prob, "passenger_info": passenger})


async def container_info(request: web.Request) -> web.Response:
    st = request.app[STATE]
    return web.json_response({"api_title": st.title, "api_version": st.api_version, "environment": st.environment,
                              "instance_id": st.instance_id, "hostname": socket.gethostname(), "pid": os.getpid()})


async def v2_live(request: web.Request) -> web.Response:
    return web.json_response({"live": True})


async def v2_ready(request: web.Request) -> web.Response:
    st = request.app[STATE]
    try:
        st.ensure_model()
    except web.HTTPServiceUnavailable:
        return web.json_response({"ready": False, "error": st.load_error}, status=503)
    return web.json_response({"ready": True})


def _check_model_name(request: web.Request, model: TitanicModel) -> None:
    name = request.match_info["model"]
    version = request.match_info.get("version")
    if name != model.name or (version is not None and version != model.version):
        raise web.HTTPNotFound(reason=f"unknown model {name!r}" + (f" version {version!r}" if version else ""))


async def v2_model_metadata(request: web.Request) -> web.Response:
    model = request.app[STATE].ensure_model()
    _check_model_name(request, model)
    return web.json_response({
        "name": model.name, "versions": [model.version], "platform": "onnxruntime",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, N_FEATURES]}],
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]},
                    {"name": "probability", "datatype": "FP32", "shape": [-1]}],
        "parameters": {"features": model.metadata.get("features", ["sex_encoded", "age", "pclass"])},
    })


async def v2_model_ready(request: web.Request) -> web.Response:
    model = request.app[STATE].ensure_model()
    _check_model_name(request, model)
    return web.json_response({"name": model.name, "ready": True})


async def v2_infer(request: web.Request) -> web.Response:
    model = request.app[STATE].ensure_model()
    _check_model_name(request, model)
    body = await _json_body(request)
    rows = parse_v2_input(body)
    labels, probs = model.predict(rows)  # the whole batch in one onnxruntime call
    n = int(rows.shape[0])
    out: dict[str, Any] = {
        "model_name": model.name, "model_version": model.version,
        "outputs": [{"name": "label", "shape": [n], "datatype": "INT64", "data": labels.tolist()},
                    {"name": "probability", "shape": [n], "datatype": "FP32",
                     "data": probs.tolist()}],
    }
    if isinstance(body.get("id"), str):
        out["id"] = body["id"]
    return web.json_response(out)


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].openapi)


async def docs(request: web.Request) -> web.Response:
    return web.Response(text=render_docs(request.app[STATE].openapi), content_type="text/html")


async def _on_startup(app: web.Application) -> None:
    try:
        app[STATE].ensure_model()
    except web.HTTPServiceUnavailable:
        pass  # readiness reports it; liveness stays up so the cause is visible


def create_app(env: Mapping[str, str] | None = None) -> web.Application:
    """Build the app. Env: API_TITLE, API_VERSION, ENVIRONMENT, INSTANCE_ID, MODEL_SERVICE_BATCHING,
    MODEL_SERVICE_MAX_BATCH, MODEL_SERVICE_MAX_WAIT_MS, MODEL_SERVICE_MAX_BODY, MODEL_SERVICE_MODEL_PATH,
    MODEL_SERVICE_DEBUG_ROUTES."""
    env = os.environ if env is None else env
    app = web.Application(middlewares=[json_errors],
                          client_max_size=_int(env, "MODEL_SERVICE_MAX_BODY", DEFAULT_MAX_BODY))
    app[STATE] = _State(env)
    r = app.router
    r.add_get("/", index)
    r.add_get("/api/health", health)
    r.add_post("/api/inference", inference)
    r.add_get("/api/container-info", container_info)
    r.add_get("/v2/health/live", v2_live)
    r.add_get("/v2/health/ready", v2_ready)
    r.add_get("/v2/models/{model}", v2_model_metadata)
    r.add_get("/v2/models/{model}/ready", v2_model_ready)
    r.add_post("/v2/models/{model}/infer", v2_infer)
    r.add_get("/v2/models/{model}/versions/{version}", v2_model_metadata)
    r.add_get("/v2/models/{model}/versions/{version}/ready", v2_model_ready)
    r.add_post("/v2/models/{model}/versions/{version}/infer", v2_infer)
    r.add_get("/openapi.json", openapi_json)
    r.add_get("/docs", docs)
    if env.get("MODEL_SERVICE_DEBUG_ROUTES", "0").strip().lower() in ("1", "true", "yes", "on"):
        from model_service.debug import add_debug_routes

        add_debug_routes(app)
    app.on_startup.append(_on_startup)
    return app
