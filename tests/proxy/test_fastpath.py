"""The fast path: which requests it serves, hand-over to aiohttp on one connection, and every way an
exchange can end (complete, client abort, upstream reset, timeout, stale pooled connection)."""

from __future__ import annotations

import asyncio
import gzip
import io
import json

import aiohttp
import pytest
from structlog.testing import capture_logs

from proxy.observe.request_log import RequestLog
from tests.conftest import base_config, with_misbehaving_upstream


@pytest.fixture
def backend_kind() -> str:
    return "stub"


@pytest.fixture
async def h(make_proxy):
    return await make_proxy(config=with_misbehaving_upstream("1s"))


async def fast_count(h, route: str) -> float:
    return await h.metric("proxy_fast_path_requests_total", route=route)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response off a raw connection (Content-Length or chunked)."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    status_line, *lines = head.split("\r\n")[:-2]
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    else:
        assert headers.get("transfer-encoding") == "chunked", headers
        body = b""
        while (size := int((await reader.readuntil(b"\r\n")).strip(), 16)) > 0:
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        await reader.readexactly(2)
    return int(status_line.split()[1]), headers, body


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode()


async def test_warm_requests_take_the_fast_path_and_cold_ones_aiohttp(h):
    route = "/api/{tail:.*}"
    cold = await h.client.get("/api/health")
    assert cold.status == 200 and cold.headers["X-Proxy-Cold-Start"] == "1"
    assert await fast_count(h, route) == 0  # the start and the wait are the aiohttp path's
    for _ in range(5):
        resp = await h.client.get("/api/health")
        assert resp.status == 200 and "X-Proxy-Cold-Start" not in resp.headers
        assert (await resp.json())["status"] == "healthy"
    assert await fast_count(h, route) == 5
    assert (await h.client.get("/health")).status == 200  # own endpoint: never proxied
    assert (await h.client.head("/api/health")).status == 200  # HEAD: the aiohttp path
    assert await fast_count(h, route) == 5
    assert await h.metric("proxy_requests_total", route=route, code="200") == 7
    assert h.manager("shared").in_flight == 0


async def test_one_connection_mixes_both_paths_in_order(h):
    host, port = h.client.server.host, h.client.server.port
    reader, writer = await asyncio.open_connection(host, port)
    body = b'{"sex": "female", "age": 29, "pclass": 1}'
    steps = [
        (get("/api/health"), 200, b"healthy"),  # cold: aiohttp starts the instance
        (get("/api/health"), 200, b"healthy"),  # warm: fast
        (get("/health"), 200, b'"ok"'),  # own endpoint: aiohttp
        (b"POST /api/inference HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: "
         + str(len(body)).encode() + b"\r\n\r\n" + body, 200, b"survived"),  # fast, with a body
        (get("/k/other/api/health"), 200, b"stub-other"),  # another cold key: aiohttp
        (get("/k/other/api/health"), 200, b"stub-other"),  # fast
        (get("/api/no-such-thing"), 404, b""),  # fast: the instance's own 404 passes through
    ]
    for request, status, needle in steps:
        writer.write(request)
        got, _, payload = await read_response(reader)
        assert got == status and needle in payload, (request, got, payload)
    # Pipelined: fast, aiohttp, fast in one write; answers come back in order on the same connection.
    writer.write(get("/api/health") + get("/metrics") + get("/k/other/api/health"))
    answers = [await read_response(reader) for _ in range(3)]
    assert [a[0] for a in answers] == [200, 200, 200]
    assert b"healthy" in answers[0][2] and b"proxy_requests_total" in answers[1][2] and b"stub-other" in answers[2][2]
    writer.close()
    assert await fast_count(h, "/api/{tail:.*}") == 4
    assert await fast_count(h, "/k/{id}/{tail:.*}") == 2
    await h.wait_for(lambda: all(m.in_flight == 0 for m in h.proxy.registry))


async def test_chunked_upload_and_chunked_response_on_the_fast_path(h):
    assert (await h.client.get("/s/api/health")).status == 200

    async def chunks():
        for i in range(20):
            yield bytes([65 + i]) * 10_000

    resp = await h.client.post("/s/debug/echo", data=chunks())
    assert resp.status == 200 and (await resp.json())["bytes"] == 200_000
    resp = await h.client.get("/s/debug/stream?chunks=4&interval=0.01")
    assert resp.status == 200 and await resp.text() == "".join(f"chunk-{i}\n" for i in range(4))
    assert await fast_count(h, "/s/{tail:.*}") == 2


async def test_over_limit_chunked_upload_is_413_on_the_fast_path(h):
    assert (await h.client.get("/s/api/health")).status == 200

    async def chunks():
        for _ in range(40):
            yield b"y" * 65536

    resp = await h.client.post("/s/debug/echo", data=chunks())
    assert resp.status == 413 and (await resp.json())["error"] == "request body too large"
    assert (await h.client.get("/s/api/health")).status == 200
    await h.wait_for(lambda: h.manager("shared").in_flight == 0)


async def test_client_abort_mid_response_releases_the_lease(h):
    assert (await h.client.get("/s/api/health")).status == 200
    host, port = h.client.server.host, h.client.server.port
    for _ in range(5):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(get("/s/debug/stream?chunks=50&interval=0.02"))
        await reader.readuntil(b"chunk-1")
        assert h.manager("shared").in_flight == 1
        writer.close()
    await h.wait_for(lambda: h.manager("shared").in_flight == 0)
    assert await h.metric("proxy_requests_total", route="/s/{tail:.*}", code="499") == 5
    assert (await h.client.get("/s/api/health")).status == 200


async def test_upstream_reset_timeout_and_garbage(h):
    assert (await h.client.get("/bad/ok")).status == 200
    resp = await h.client.get("/bad/half")
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()  # cut short: the client sees the truncation
    resp = await h.client.get("/bad/garbage")
    assert resp.status == 502 and (await resp.json())["error"] == "upstream error"
    assert (await h.client.get("/s/api/health")).status == 200
    with capture_logs() as logs:
        resp = await h.client.get("/s/debug/sleep?seconds=3")  # upstream_timeout is 1s
        body = await resp.json()
    assert resp.status == 504 and body["reason"] == "the app did not answer in time"
    assert body["request_id"] == resp.headers["X-Request-Id"]  # the detail is in the log, under that id
    assert [e["reason"] for e in logs if e.get("request_id") == body["request_id"]] == [
        "upstream did not answer within upstream_timeout"]
    await h.wait_for(lambda: all(m.in_flight == 0 for m in h.proxy.registry))
    assert await fast_count(h, "/bad/{tail:.*}") >= 2


async def test_a_pooled_connection_the_instance_closed_is_retried_once(h):
    for _ in range(3):  # each reuse of a pooled connection hits a hang-up, and a fresh one answers
        resp = await h.client.get("/bad/once")
        assert resp.status == 200 and await resp.json() == {"ok": True}
    assert await fast_count(h, "/bad/{tail:.*}") == 2


async def test_malformed_request_gets_400_json_and_the_proxy_stays_up(h):
    host, port = h.client.server.host, h.client.server.port
    for junk in (b"\x16\x03\x01 not http\r\n\r\n", b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
                 b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(junk)
        status, headers, body = await read_response(reader)
        assert status == 400 and headers["content-type"].startswith("application/json")
        assert json.loads(body)["error"] == "bad request"
        writer.close()
    assert (await h.client.get("/api/health")).status == 200


async def test_request_log_lines_keep_the_structlog_shape():
    out = io.StringIO()
    log = RequestLog(out)
    log.request(log.prefix("/api/{tail:.*}", "shared"), "GET", '/api/"quoted"\n', 200, 0.0012345)
    log.request(log.prefix("r", "k"), "POST", "/x", 499, 1.5)
    log.flush()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0] == {**lines[0], "route": "/api/{tail:.*}", "key": "shared", "method": "GET",
                        "path": '/api/"quoted"\n', "status": 200, "ms": 1.23, "event": "request", "level": "info"}
    assert lines[0]["timestamp"].endswith("Z") and lines[1]["status"] == 499 and lines[1]["ms"] == 1500.0


async def test_compressed_request_bodies_pass_through_as_sent(h):
    """The proxy never decodes a body: the instance gets the gzip bytes under their Content-Encoding."""
    body = b'{"sex": "female", "age": 29, "pclass": 1}' * 50
    packed = gzip.compress(body)
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/octet-stream"}
    for path in ("/k/gz/debug/echo", "/k/gz/debug/echo"):  # cold (aiohttp path), then warm (fast path)
        resp = await h.client.post(path, data=packed, headers=headers)
        assert resp.status == 200 and (await resp.json())["bytes"] == len(body)  # the instance decoded it once
    assert await fast_count(h, "/k/{id}/{tail:.*}") == 1


async def test_an_http10_client_gets_an_unchunked_body_ended_by_the_close(h):
    assert (await h.client.get("/s/api/health")).status == 200
    reader, writer = await asyncio.open_connection(h.client.server.host, h.client.server.port)
    writer.write(b"GET /s/debug/stream?chunks=3&interval=0.01 HTTP/1.0\r\nHost: t\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 10)  # to EOF: the proxy closes after the body
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"chunked" not in head.lower()
    assert body == b"chunk-0\nchunk-1\nchunk-2\n"
    writer.close()


async def test_an_instance_stopped_from_outside_is_started_again_for_the_next_request(h):
    """A refused connect never reached the instance: the proxy notices it is gone, starts it, and sends the
    request there (once), instead of answering 502."""
    assert (await h.client.get("/k/ext/api/health")).status == 200
    m = h.manager("ext")
    await h.backend.stop(m.instance)  # behind the proxy's back, like `docker stop`
    for _ in range(3):
        resp = await h.client.get("/k/ext/api/health")
        assert resp.status == 200 and (await resp.json())["status"] == "healthy"
    assert m.start_count == 2
    crashes = sum(v for (name, labels), v in (await h.metrics()).items()
                  if name == "proxy_container_stops_total" and dict(labels)["reason"] == "error")
    assert crashes == 1  # the crash was noticed and counted once
    assert await h.metric("proxy_requests_total", route="/k/{id}/{tail:.*}", code="502") == 0


@pytest.fixture
async def h_replace(make_proxy):
    config = base_config("stub", "model_service")
    config["containers"]["svc"]["replace_after_timeouts"] = 2
    config["server"] = {**config["server"], "upstream_timeout": "1s"}
    return await make_proxy(config=config)


async def test_an_instance_that_stops_answering_is_replaced(h_replace):
    """Issue 15: after replace_after_timeouts upstream timeouts in a row the instance is taken out of service
    (stop reason `unhealthy`) and the next request starts a fresh one."""
    h = h_replace
    assert (await h.client.get("/s/api/health")).status == 200
    m = h.manager("shared")
    first = m.instance
    for _ in range(2):  # the instance never answers this path within upstream_timeout (1s)
        resp = await h.client.get("/s/debug/sleep?seconds=30")
        assert resp.status == 504 and (await resp.json())["reason"] == "the app did not answer in time"
    await h.wait_for(lambda: m.state.value == "stopped")
    assert await h.metric("proxy_container_stops_total", container_class="svc", reason="unhealthy") == 1
    resp = await h.client.get("/s/api/health")
    assert resp.status == 200 and (await resp.json())["status"] == "healthy"
    assert m.start_count == 2 and m.instance is not None and m.instance.id != first.id
    assert await h.metric("proxy_container_stops_total", container_class="svc", reason="unhealthy") == 1
    await h.wait_for(lambda: m.in_flight == 0)


async def test_a_timeout_then_an_answer_does_not_replace_the_instance(h_replace):
    h = h_replace
    assert (await h.client.get("/s/api/health")).status == 200
    m = h.manager("shared")
    for _ in range(2):
        assert (await h.client.get("/s/debug/sleep?seconds=30")).status == 504
        assert (await h.client.get("/s/api/health")).status == 200  # an answer: the count starts again
    assert m.start_count == 1 and m.state.value == "running"


async def test_a_kept_path_plan_follows_its_keys_new_instance(h):
    """The fast path keeps what a plain path decides (route, key, manager, the instance's pool): when the key
    runs on a new instance, requests go through the new instance's pool, never the stopped one's."""
    from proxy.lifecycle.events import StopReason

    route = "/k/{id}/{tail:.*}"
    assert (await h.client.get("/k/kept/api/health")).status == 200  # cold: the aiohttp path starts it
    for _ in range(2):
        assert (await h.client.get("/k/kept/api/health")).status == 200  # warm: fast, the plan is kept
    assert await fast_count(h, route) == 2
    m = h.manager("kept")
    first = m.instance
    old_pool = h.proxy.pools.upstream(first)
    await m.stop(StopReason.ADMIN)
    assert old_pool.closed
    assert (await h.client.get("/k/kept/api/health")).status == 200  # stopped: the aiohttp path starts it again
    assert m.instance is not None and m.instance.id != first.id
    for _ in range(2):
        resp = await h.client.get("/k/kept/api/health")
        assert resp.status == 200 and (await resp.json())["status"] == "healthy"
    assert await fast_count(h, route) == 4
    assert h.proxy.pools.upstream(m.instance).busy == 0 and len(h.proxy.pools.upstream(m.instance)) >= 1
    await h.wait_for(lambda: m.in_flight == 0)
