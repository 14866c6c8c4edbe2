"""Request ids, access lines and the status a client saw, on both data paths (stub backend, real sockets).

The cold request of a key takes the aiohttp path, a warm one the fast path; both must send the same
`X-Request-Id` rule upstream and write the same access line fields.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import socket
import time

import aiohttp
import pytest

from proxy.http.responder import RequestClient
from tests.conftest import with_misbehaving_upstream
from tests.proxy.test_fastpath import fast_count, read_response

HEX32 = re.compile(r"[0-9a-f]{32}")
ROUTE = "/k/{id}/{tail:.*}"


@pytest.fixture
def backend_kind() -> str:
    return "stub"


@pytest.fixture
async def h(make_proxy):
    return await make_proxy(config=with_misbehaving_upstream("10s"))


async def seen_id(h, path: str, **headers: str) -> str:
    resp = await h.client.get(path, headers=headers)
    assert resp.status == 200
    seen = {k.lower(): v for k, v in (await resp.json())["headers"].items()}
    return seen["x-request-id"]


async def test_a_client_id_passes_through_and_a_missing_one_is_made_on_both_paths(h):
    assert await seen_id(h, "/k/ids/debug/headers", **{"X-Request-Id": "client-abc 123"}) == "client-abc 123"  # cold
    assert await seen_id(h, "/k/ids/debug/headers", **{"X-Request-Id": "client-def"}) == "client-def"  # warm
    made = [await seen_id(h, "/k/made/debug/headers"), await seen_id(h, "/k/made/debug/headers")]  # cold, warm
    assert all(HEX32.fullmatch(i) for i in made) and made[0] != made[1]
    assert await fast_count(h, ROUTE) == 2  # the warm ones took the fast path


async def test_an_insane_client_id_is_replaced_and_sent_once(h):
    host, port = h.client.server.host, h.client.server.port
    for key in ("insane", "insane"):  # cold (aiohttp path), then warm (fast path)
        for bad in (b"x" * 201, b"caf\xc3\xa9", b"two\r\nX-Request-Id: ids"):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"GET /k/%s/debug/headers HTTP/1.1\r\nHost: t\r\nX-Request-Id: %s\r\n\r\n"
                         % (key.encode(), bad))
            status, _, body = await read_response(reader)
            writer.close()
            seen = {k.lower(): v for k, v in json.loads(body)["headers"].items()}
            assert status == 200 and HEX32.fullmatch(seen["x-request-id"]), seen  # one id, made here
    assert await fast_count(h, ROUTE) == 5  # all but the first


async def test_an_id_the_client_names_hop_by_hop_still_reaches_the_instance(h):
    for _ in range(2):  # cold, then warm
        assert await seen_id(h, "/k/hop/debug/headers", **{"X-Request-Id": "hop-1",
                                                            "Connection": "keep-alive, X-Request-Id"}) == "hop-1"


async def test_the_websocket_handshake_carries_the_id(h):
    for sent in ("ws-id-1", None):
        headers = {"X-Request-Id": sent} if sent else {}
        async with h.client.ws_connect("/bad/ws-request-id", headers=headers) as ws:
            got = (await ws.receive()).data
        assert got == sent if sent else HEX32.fullmatch(got)


async def test_access_lines_have_client_bytes_duration_and_the_id(h):
    assert h.proxy.reqlog is not None
    out = h.proxy.reqlog._stream = io.StringIO()
    body = b"x" * 1000
    answers = []
    for rid in ("line-cold", "line-warm"):
        resp = await h.client.post("/k/lines/debug/echo", data=body, headers={"X-Request-Id": rid})
        answers.append(await resp.read())
    h.proxy.reqlog.flush()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["request_id"] for line in lines] == ["line-cold", "line-warm"]
    for line, answer in zip(lines, answers, strict=True):
        assert line["client"] == "127.0.0.1" and line["status"] == 200 and line["ms"] > 0
        assert line["bytes"] == len(answer) and line["request_bytes"] == len(body)
        assert (line["route"], line["key"], line["method"], line["path"]) == (ROUTE, "lines", "POST",
                                                                               "/k/lines/debug/echo")
    assert await fast_count(h, ROUTE) == 1


def _read_all_then_close(port: int, path: str) -> int:
    """A client that reads the whole (Content-Length) response and closes at once, not waiting for the proxy."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
        while len(body) < length:
            body += sock.recv(65536)
        return int(head.split(b" ")[1])


async def test_a_response_relayed_whole_is_counted_as_its_status_not_499(h, monkeypatch):
    """The race of a cold start on docker, made certain: the event loop is busy right after the exchange wrote the
    last byte, so the client has read it all and closed before the handler looks. It counts 200, not 499."""
    done = RequestClient.exchange_done

    def busy_after_the_exchange(self: RequestClient, exchange, clean: bool) -> None:
        done(self, exchange, clean)
        time.sleep(0.05)  # (a loaded loop) the client reads the response and closes meanwhile

    monkeypatch.setattr(RequestClient, "exchange_done", busy_after_the_exchange)
    port = h.client.server.port
    for i in range(5):  # each a cold start (a key of its own) on the aiohttp path
        assert await asyncio.to_thread(_read_all_then_close, port, f"/k/race{i}/api/health") == 200
    await h.wait_for(lambda: all(m.in_flight == 0 for m in h.proxy.registry))
    assert await h.metric("proxy_requests_total", route=ROUTE, code="200") == 5
    assert await h.metric("proxy_requests_total", route=ROUTE, code="499") == 0


async def test_one_streaming_response_is_one_in_flight(h):
    """A cold request holds its key once while its response streams (the lease, not the lease and the exchange)."""
    for key in ("stream", "stream"):  # cold (aiohttp path), then warm (fast path)
        async with h.client.get(f"/k/{key}/debug/stream?chunks=40&interval=0.02") as resp:
            await resp.content.readuntil(b"chunk-1\n")
            assert h.manager(key).in_flight == 1
            await resp.read()
        await h.wait_for(lambda: h.manager("stream").in_flight == 0)


async def test_a_client_that_leaves_mid_response_is_still_499(h):
    async with aiohttp.ClientSession() as session:
        for _ in range(2):  # cold, then warm
            async with session.get(str(h.client.make_url("/k/gone/debug/stream?chunks=50&interval=0.02"))) as resp:
                await resp.content.readuntil(b"chunk-1\n")
                resp.close()
    await h.wait_for(lambda: h.manager("gone").in_flight == 0)
    assert await h.metric("proxy_requests_total", route=ROUTE, code="499") == 2
