"""The proxy's own endpoints (`admin.on_proxy_port`) and its 404 over HTTP/2 (curl with prior knowledge) answer as
over HTTP/1.1: the same application answers both (proxy/http/h2app.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.proxy.test_h2 import _curl
from tests.proxy.test_waiting_page import token_urls
from tests.support.face import NAVIGATE, face_config


@pytest.mark.parametrize("backend_kind", ["stub"], indirect=True)
async def test_own_endpoints_answer_over_h2(make_proxy: Any) -> None:
    h = await make_proxy(config={"admin": {"on_proxy_port": ["health", "ready", "info", "container-status",
                                                              "metrics"]}})
    port = h.client.server.port
    status, _, _, _ = await _curl(port, "/k/own/v2/health/ready")  # a key to list
    assert status == 200
    for path in ("/health", "/ready", "/info", "/container-status"):
        status, headers, body, version = await _curl(port, path)
        res = await h.client.get(path)
        assert (status, version) == (res.status, "2") == (200, "2"), (path, body)
        assert headers["content-type"] == res.headers["Content-Type"]
        assert json.loads(body).keys() == (await res.json()).keys(), path
    status, _, body, _ = await _curl(port, "/container-status")
    assert [entry["key"] for entry in json.loads(body)["keys"]] == ["own"]
    status, headers, body, _ = await _curl(port, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert 'proxy_container_class_starts_total{container_class="svc"} 1.0' in body
    status, headers, body, _ = await _curl(port, "/health", "-I")  # HEAD: the head alone
    assert status == 200 and headers["content-length"] != "0" and not body.strip()


@pytest.mark.parametrize("backend_kind", ["stub"], indirect=True)
async def test_unmatched_path_over_h2_is_the_applications_404(make_proxy: Any) -> None:
    h = await make_proxy(config={"admin": {"on_proxy_port": ["metrics"]}})
    port = h.client.server.port
    before = await h.metric("proxy_requests_total", route="_unmatched", code="404")  # counted as over HTTP/1.1
    status, _, body, _ = await _curl(port, "/nowhere/at/all")
    res = await h.client.get("/nowhere/at/all")
    over_h2, over_h1 = json.loads(body), await res.json()
    assert over_h2.pop("request_id") != over_h1.pop("request_id")  # each answer its own
    assert status == res.status == 404 and over_h2 == over_h1 and over_h1["reason"] == "no route for /nowhere/at/all"
    assert await h.metric("proxy_requests_total", route="_unmatched", code="404") == before + 2
    status, _, body, _ = await _curl(port, "/info")  # not listed in on_proxy_port: 404 on both protocols
    assert status == (await h.client.get("/info")).status == 404


@pytest.mark.parametrize("backend_kind", ["stub"], indirect=True)
async def test_waiting_page_status_over_h2_and_its_event_stream_refused_clearly(make_proxy: Any) -> None:
    h = await make_proxy(config=face_config(delay_ms=1500))
    page = await h.client.get("/app/alice/hello", headers=NAVIGATE)  # the page (HTTP/1.1: a browser's navigation)
    status_url, events_url = token_urls(await page.text())
    port = h.client.server.port
    status, _, body, _ = await _curl(port, status_url)  # the page's status poll answers over HTTP/2
    assert status == 200 and json.loads(body)["state"] in ("starting", "ready")
    status, _, body, _ = await _curl(port, events_url)  # a streamed answer: HTTP/1.1 only, said in one line
    assert status == 505 and "use HTTP/1.1" in json.loads(body)["reason"]
