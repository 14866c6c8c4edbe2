"""ONNX Titanic model wrapper, JSON input validation and an asyncio micro-batcher.

The InferenceSession is cached per process so many apps (the proxy's in-process stub backend creates
one per key) share a single loaded model.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
from pathlib import Path
from typing import Any, Callable, Mapping

try:
    import numpy as np
    import onnxruntime as ort
except ImportError as exc:  # `pip install lazy-proxy` alone is the proxy without the model's heavy deps
    raise ImportError(f"the model service needs onnxruntime and numpy ({exc}); "
                      "install them with: pip install 'lazy-proxy[model]'", name=exc.name) from exc

MODEL_DIR = Path(__file__).resolve().parent
DEFAULT_MODEL_PATH = MODEL_DIR / "titanic.onnx"
DEFAULT_META_PATH = MODEL_DIR / "titanic.json"
N_FEATURES = 3
SEX_CODES = {"female": 0.0, "male": 1.0}
SEX_NAMES = {v: k for k, v in SEX_CODES.items()}
PCLASSES = (1, 2, 3)
AGE_MIN, AGE_MAX = 0.0, 120.0
MAX_BATCH_ROWS = 1_000_000  # V2 rows per request; the default 1 MiB body limit allows about 170k
FP32_MAX = float(np.finfo(np.float32).max)
BLANKS = " \t\r\n"  # around a `sex` (which is case-insensitive); the OpenAPI pattern says the same


class ValidationError(ValueError):
    """Bad client input; `field` names the offending field so the API can point at it."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason

    @property
    def message(self) -> str:
        """The `error` text of the 400 answer."""
        return f"invalid input: {self.field} {self.reason}"


def _number(payload: Mapping[str, Any], field: str) -> float:
    if field not in payload or payload[field] is None:
        raise ValidationError(field, "missing")
    value = payload[field]
    # bool is an int subclass in Python; true/false is never a sensible age or class.
    if isinstance(value, bool):
        raise ValidationError(field, "must be a number, not a boolean")
    if not isinstance(value, (int, float)):
        raise ValidationError(field, f"must be a number, got {type(value).__name__}")
    return _finite(value, field)


def _finite(value: float, field: str) -> float:
    """float(value), refusing what has no finite float: NaN/Infinity literals and integers past ~1.8e308."""
    try:
        f = float(value)
    except OverflowError:  # a JSON integer with hundreds of digits
        raise ValidationError(field, "is out of range") from None
    if not math.isfinite(f):
        raise ValidationError(field, "must be finite")
    return f


def parse_passenger(payload: Any) -> dict[str, Any]:
    """Validate a JSON passenger and return its normalised form {"sex", "age", "pclass"}."""
    if not isinstance(payload, dict):
        raise ValidationError("body", "must be a JSON object")
    if "sex" not in payload or payload["sex"] is None:
        raise ValidationError("sex", "missing")
    sex = payload["sex"]
    if not isinstance(sex, str):
        raise ValidationError("sex", f"must be a string, got {type(sex).__name__}")
    sex_norm = sex.strip(BLANKS).lower()
    if sex_norm not in SEX_CODES:
        raise ValidationError("sex", "must be 'female' or 'male'")
    age = _number(payload, "age")
    if not AGE_MIN <= age <= AGE_MAX:
        raise ValidationError("age", f"must be between {AGE_MIN:g} and {AGE_MAX:g}")
    pclass_f = _number(payload, "pclass")
    if not pclass_f.is_integer() or int(pclass_f) not in PCLASSES:
        raise ValidationError("pclass", "must be 1, 2 or 3")
    return {"sex": sex_norm, "age": age, "pclass": int(pclass_f)}


def passenger_row(passenger: Mapping[str, Any]) -> np.ndarray:
    """Feature row [sex_encoded, age, pclass] (float32) for an already validated passenger."""
    return np.asarray([SEX_CODES[passenger["sex"]], passenger["age"], passenger["pclass"]], dtype=np.float32)


def parse_v2_input(body: Any) -> np.ndarray:
    """Decode a KServe V2 infer request with one FP32 input of shape [N,3] (flat or nested data)."""
    tensor = _v2_tensor(body)
    rows = v2_rows(tensor.get("shape"))
    data = tensor.get("data")
    if not isinstance(data, list):
        raise ValidationError("inputs[0].data", "must be a list")
    flat = _flatten(data)
    if len(flat) != rows * N_FEATURES:
        raise ValidationError("inputs[0].data", f"has {len(flat)} values, shape needs {rows * N_FEATURES}")
    return _fp32(flat, "inputs[0].data").reshape(rows, N_FEATURES)


def _v2_tensor(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ValidationError("body", "must be a JSON object")
    if not isinstance(body.get("id", ""), str):
        raise ValidationError("id", "must be a string")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ValidationError("inputs", "must be a list with exactly one tensor")
    tensor: dict[str, Any] = inputs[0]
    if not isinstance(tensor.get("name", ""), str):
        raise ValidationError("inputs[0].name", "must be a string")
    if tensor.get("datatype", "FP32") != "FP32":
        raise ValidationError("inputs[0].datatype", "must be FP32")
    return tensor


def v2_rows(shape: Any) -> int:
    """N from a [N, 3] shape of plain integers with 1 <= N <= MAX_BATCH_ROWS."""
    if (not isinstance(shape, list) or len(shape) != 2
            or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
            or shape[1] != N_FEATURES or not 1 <= shape[0] <= MAX_BATCH_ROWS):
        raise ValidationError("inputs[0].shape", f"must be [N, {N_FEATURES}] with 1 <= N <= {MAX_BATCH_ROWS}")
    return int(shape[0])


def v2_values(values: np.ndarray, field: str) -> np.ndarray:
    """Float32 values a binary tensor carried (gRPC's fp32_contents or raw bytes), refusing NaN and infinities."""
    if not np.isfinite(values).all():
        raise ValidationError(field, "must be finite FP32 numbers")
    return values


def _flatten(data: list[Any]) -> list[Any]:
    """Row-major leaves of nested lists; iterative, so deep nesting cannot blow the recursion limit."""
    flat: list[Any] = []
    stack: list[Any] = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            flat.append(item)
    return flat


def _fp32(values: list[Any], field: str) -> np.ndarray:
    """JSON numbers as float32, refusing non-numbers, booleans, NaN/Infinity and values past FP32's range."""
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        raise ValidationError(field, "must contain only numbers")
    try:
        arr = np.asarray(values, dtype=np.float64)
    except OverflowError:  # an integer with hundreds of digits
        raise ValidationError(field, "must be finite FP32 numbers") from None
    if not (np.isfinite(arr).all() and np.abs(arr).max(initial=0.0) <= FP32_MAX):
        raise ValidationError(field, "must be finite FP32 numbers")
    return arr.astype(np.float32)


class TitanicModel:
    """Thin onnxruntime wrapper: one call scores N rows."""

    def __init__(self, path: str | Path = DEFAULT_MODEL_PATH, meta_path: str | Path | None = None) -> None:
        self.path = Path(path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        meta = Path(meta_path) if meta_path else self.path.with_suffix(".json")
        self.metadata: dict[str, Any] = json.loads(meta.read_text()) if meta.is_file() else {}
        self.name: str = self.metadata.get("name", "titanic")
        self.version: str = str(self.metadata.get("version", "1"))
        self.calls = 0  # onnxruntime invocations, for tests and diagnostics

    def predict(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (labels int64 [N], probability of survival float32 [N])."""
        rows = np.ascontiguousarray(rows, dtype=np.float32).reshape(-1, N_FEATURES)
        self.calls += 1
        label, proba = self.session.run(self.output_names, {self.input_name: rows})
        return np.asarray(label, dtype=np.int64), np.asarray(proba, dtype=np.float32)[:, 1]


_model_cache: dict[Path, TitanicModel] = {}
_model_lock = threading.Lock()


def get_model(path: str | Path | None = None) -> TitanicModel:
    """Process-wide lazily loaded model (one InferenceSession per ONNX file)."""
    key = Path(path).resolve() if path else DEFAULT_MODEL_PATH
    with _model_lock:
        model = _model_cache.get(key)
        if model is None:
            model = _model_cache[key] = TitanicModel(key)
        return model


class MicroBatcher:
    """Collect concurrent single-row predictions for up to `max_wait` s or `max_batch` rows, run them at once.

    Under load this turns N onnxruntime calls into about N/max_batch calls. Adaptive: a lone request
    is run on the next loop turn (no timer), and only once the last batch held more than one row,
    i.e. there is concurrency to gain from, do requests wait up to `max_wait` for company.
    One batcher belongs to one event loop (create it inside the app's loop).
    """

    def __init__(self, predict: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
                 max_batch: int = 64, max_wait: float = 0.002) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self._predict = predict
        self.max_batch = max_batch
        self.max_wait = max_wait
        self._pending: list[tuple[np.ndarray, asyncio.Future[tuple[int, float]]]] = []
        self._timer: asyncio.Handle | None = None
        self._last_size = 0
        self.batches = 0

    async def predict_one(self, row: np.ndarray) -> tuple[int, float]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[int, float]] = loop.create_future()
        self._pending.append((np.asarray(row, dtype=np.float32).reshape(N_FEATURES), fut))
        if len(self._pending) >= self.max_batch:
            self._flush()
        elif self._timer is None:
            if self._last_size > 1:
                self._timer = loop.call_later(self.max_wait, self._flush)
            else:
                self._timer = loop.call_soon(self._flush)  # requests parsed in this turn still join
        return await fut

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        # Drop callers that went away (cancelled) so they cost nothing.
        batch = [(r, f) for r, f in batch if not f.done()]
        self._last_size = len(batch)
        if not batch:
            return
        self.batches += 1
        try:
            labels, probs = self._predict(np.stack([r for r, _ in batch]))
        except Exception as exc:  # every waiter learns about the failure
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for i, (_, fut) in enumerate(batch):
            if not fut.done():
                fut.set_result((int(labels[i]), float(probs[i])))


def batching_enabled(env: Mapping[str, str]) -> bool:
    return env.get("MODEL_SERVICE_BATCHING", "1").strip().lower() not in ("0", "false", "no", "off")
