"""MicroBatcher: concurrent single predictions are coalesced into few onnxruntime calls, results unchanged."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from model_service.model import DEFAULT_MODEL_PATH, MicroBatcher, TitanicModel, batching_enabled


@pytest.fixture(scope="module")
def model() -> TitanicModel:
    return TitanicModel(DEFAULT_MODEL_PATH)


def _rows(n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.stack([rng.integers(0, 2, n), rng.uniform(0, 80, n), rng.integers(1, 4, n)], axis=1).astype(np.float32)


async def test_200_concurrent_predictions(model: TitanicModel) -> None:
    rows = _rows(200)
    expected = [model.predict(r.reshape(1, 3)) for r in rows]
    batcher = MicroBatcher(model.predict, max_batch=64, max_wait=0.002)
    before = model.calls
    results = await asyncio.gather(*(batcher.predict_one(r) for r in rows))
    calls = model.calls - before
    assert calls < 200 and calls == batcher.batches
    assert calls <= 4  # 200 simultaneous callers fill 64-row batches
    for (label, prob), (exp_label, exp_prob) in zip(results, expected):
        assert label == int(exp_label[0])
        assert prob == pytest.approx(float(exp_prob[0]), abs=1e-6)


async def test_lone_request_waits_at_most_max_wait(model: TitanicModel) -> None:
    batcher = MicroBatcher(model.predict, max_batch=64, max_wait=0.002)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    label, prob = await batcher.predict_one(np.array([0, 29, 1], dtype=np.float32))
    assert loop.time() - t0 < 0.5
    assert label == 1 and prob > 0.5 and batcher.batches == 1


async def test_staggered_requests_form_separate_batches(model: TitanicModel) -> None:
    batcher = MicroBatcher(model.predict, max_batch=64, max_wait=0.001)
    first = await asyncio.gather(*(batcher.predict_one(r) for r in _rows(10)))
    second = await asyncio.gather(*(batcher.predict_one(r) for r in _rows(10)))
    assert first == second and batcher.batches == 2


async def test_errors_reach_every_waiter() -> None:
    def boom(rows: np.ndarray):
        raise RuntimeError("onnx failed")

    batcher = MicroBatcher(boom, max_batch=8, max_wait=0.001)
    results = await asyncio.gather(*(batcher.predict_one(np.zeros(3, np.float32)) for _ in range(5)),
                                   return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)


async def test_cancelled_caller_is_skipped(model: TitanicModel) -> None:
    batcher = MicroBatcher(model.predict, max_batch=64, max_wait=0.01)
    row = np.array([1, 30, 3], dtype=np.float32)
    doomed = asyncio.ensure_future(batcher.predict_one(row))
    kept = asyncio.ensure_future(batcher.predict_one(row))
    await asyncio.sleep(0)
    doomed.cancel()
    label, _ = await kept
    assert label == 0 and doomed.cancelled()


def test_batching_env_switch() -> None:
    assert batching_enabled({}) is True
    assert batching_enabled({"MODEL_SERVICE_BATCHING": "1"}) is True
    assert batching_enabled({"MODEL_SERVICE_BATCHING": "0"}) is False
    assert batching_enabled({"MODEL_SERVICE_BATCHING": "false"}) is False


async def test_app_uses_batcher_for_concurrent_requests(aiohttp_client) -> None:
    from model_service.app import STATE, create_app

    app = create_app({})
    client = await aiohttp_client(app)
    payloads = [{"sex": "female" if i % 2 else "male", "age": 5 + i % 60, "pclass": 1 + i % 3} for i in range(40)]
    resps = await asyncio.gather(*(client.post("/api/inference", json=p) for p in payloads))
    bodies = [await r.json() for r in resps]
    assert all(r.status == 200 for r in resps)
    batcher = app[STATE].batcher
    assert batcher is not None and batcher.batches < 40
    plain_app = create_app({"MODEL_SERVICE_BATCHING": "0"})
    plain = await aiohttp_client(plain_app)
    assert plain_app[STATE].batcher is None
    for p, b in zip(payloads, bodies):
        assert await (await plain.post("/api/inference", json=p)).json() == b


async def test_lone_request_does_not_wait_for_company(model: TitanicModel) -> None:
    """Adaptive: with no concurrency there is nothing to batch, so no max_wait timer."""
    batcher = MicroBatcher(model.predict, max_batch=64, max_wait=30.0)
    for row in _rows(3):  # one after another: each is a batch of one, none waits 30 s
        label, prob = await asyncio.wait_for(batcher.predict_one(row), timeout=5)
        assert label in (0, 1) and 0.0 <= prob <= 1.0
    assert batcher.batches == 3
