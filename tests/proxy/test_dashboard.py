"""The /ui dashboard's reads over HTTP (the browser's view is tests/proxy/test_face_browser.py): the page is a shell
under a strict CSP with no outside asset, keys come a page at a time, and the event stream is live."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

from tests.support.admin import AUTH
from tests.support.face import face_config


@pytest.fixture
def backend_kind() -> str:
    return "stub"


async def test_the_page_is_a_shell_with_nothing_from_outside(make_admin: Any) -> None:
    a = await make_admin(config=face_config())
    resp = await a.client.get("/ui")
    body = await resp.text()
    assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
    csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    nonce = re.search(r"'nonce-([^']+)'", csp)
    assert nonce and body.count(f'nonce="{nonce.group(1)}"') == 2
    assert not re.search(r'(src|href)="(https?:)?//', body)  # no outside asset: it works offline
    again = await a.client.get("/ui")
    assert re.search(r"'nonce-([^']+)'", again.headers["Content-Security-Policy"]).group(1) != nonce.group(1)


async def test_keys_come_a_page_at_a_time(make_admin: Any) -> None:
    a = await make_admin(config=face_config())
    for i in range(1200):
        a.h.proxy.registry.get(f"k{i:04d}", "slow")
    page = await (await a.client.get("/ui/keys?offset=100&limit=50")).json()
    assert page["total"] == 1200 and len(page["keys"]) == 50
    assert [k["key"] for k in page["keys"]][:2] == ["k0100", "k0101"]
    assert set(page["keys"][0]) == {"key", "container", "state", "in_flight", "idle_seconds", "starts", "image",
                                    "generation", "cost_usd", "last_error"}
    found = await (await a.client.get("/ui/keys?q=k119")).json()
    assert found["total"] == 10
    capped = await (await a.client.get("/ui/keys?limit=100000")).json()
    assert len(capped["keys"]) == 500
    bad = await a.client.get("/ui/keys?offset=x")
    assert bad.status == 400 and (await bad.json())["error"] == "invalid input"


async def test_the_event_stream_is_live_and_classes_count_starts(make_admin: Any) -> None:
    a = await make_admin(config=face_config(delay_ms=200))
    seen: list[dict[str, Any]] = []
    async with a.client.get("/ui/events") as stream:
        async def read() -> None:
            async for line in stream.content:
                if line.startswith(b"data: "):
                    seen.append(json.loads(line[6:]))
                    if seen[-1].get("happening") == "started":
                        return

        reader = asyncio.create_task(read())
        await a.h.wait_for(lambda: any(e.get("kind") == "live" for e in seen))
        start = await a.client.post("/admin/keys/slow/dash/start", headers=AUTH, json={})
        assert start.status == 200
        await asyncio.wait_for(reader, 15)
    states = [(e["from"], e["to"]) for e in seen if e.get("key") == "dash"]
    assert states == [("stopped", "starting"), ("starting", "running")]
    classes = {c["name"]: c for c in (await (await a.client.get("/ui/classes")).json())["classes"]}
    slow = classes["slow"]
    assert slow["starts_last_hour"] == 1 and slow["running"] == 1 and slow["p50"] == slow["p99"] > 0.15
    assert len(slow["sparkline"]) == 60 and slow["sparkline"][-1] == pytest.approx(slow["p50"], abs=0.001)


async def test_off_loopback_the_data_need_the_token_but_the_shell_does_not(make_admin: Any) -> None:
    a = await make_admin(admin={"host": "0.0.0.0"}, config=face_config())  # the test client still dials loopback
    assert not a.h.proxy.config.admin.loopback
    assert (await a.client.get("/ui")).status == 200
    assert (await a.client.get("/ui/keys")).status == 401
    assert (await a.client.get("/ui/keys", headers=AUTH)).status == 200
