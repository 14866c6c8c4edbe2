"""Retry-After through the proxy (stub backend): each refusal says what the proxy knows, and they differ."""

from __future__ import annotations

import pytest

from tests.conftest import MakeProxy


@pytest.fixture
def backend_kind() -> str:
    return "stub"


async def retry_after(h: object, path: str, error: str) -> str | None:
    resp = await h.client.get(path)  # type: ignore[attr-defined]
    assert resp.status == 503 and (await resp.json())["error"] == error, await resp.text()
    return resp.headers.get("Retry-After")


async def test_each_refusal_says_what_is_known(make_proxy: MakeProxy) -> None:
    h = await make_proxy(svc={"max_instances": 1, "sleep_after": "30s",
                              "keepalive": {"schedule": "1h", "keys": ["warmed"]}},
                         config={"routes": [
                             {"path": "/k/{id}/{tail:.*}", "container": "svc", "key": "{id}",
                              "upstream_path": "/{tail}"},
                             {"path": "/warm/{id}/{tail:.*}", "container": "svc", "key": "{id}", "mode": "warm",
                              "upstream_path": "/{tail}"},
                         ]})
    assert (await h.client.get("/k/a/v2/health/ready")).status == 200
    # Capacity: a stops after 30 s idle, then a start (milliseconds on the stub).
    assert await retry_after(h, "/k/b/v2/health/ready", "capacity exceeded") in ("30", "29")
    # A warm-only route: the keepalive warms `warmed` within the hour; nothing warms `cold`.
    assert 3590 <= int(await retry_after(h, "/warm/warmed/v2/health/ready", "not warm") or 0) <= 3600
    assert await retry_after(h, "/warm/cold/v2/health/ready", "not warm") is None


async def test_a_failed_start_says_one_start_and_an_open_breaker_its_backoff(make_proxy: MakeProxy) -> None:
    h = await make_proxy(svc={"image": "stub:no_such_module:create_app",
                              "crash_loop": {"failures": 2, "backoff": "40s"}})
    assert await retry_after(h, "/s/v2/health/ready", "start failed") == "1"
    assert await retry_after(h, "/s/v2/health/ready", "start failed") == "40"  # this failure opened the breaker
    assert await retry_after(h, "/s/v2/health/ready", "crash loop") in ("40", "39")
