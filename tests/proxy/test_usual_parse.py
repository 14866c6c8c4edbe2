"""proxy/http/usual.py against aiohttp's C parser (llhttp), differentially, on thousands of generated heads.

The rule that makes the own parse safe: whenever it accepts a packet, aiohttp's parser accepts it too, with the
same method, target, version, headers, keep-alive and no body, and the instance's head built from either is
the same bytes. Deterministic (a fixed seed), a few seconds.
"""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any

import pytest
from aiohttp import http_parser
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import EMPTY_PAYLOAD

from proxy.http import usual
from proxy.http.exchange import request_head
from proxy.request_id import request_id

PEER, SCHEME, RID = "192.0.2.7", "http", "0" * 31 + "1"
COMMON = [  # what real clients send: each must take the own parse
    b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\n\r\n",  # wrk (the load benches)
    b"GET / HTTP/1.1\r\nHost: localhost:8080\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n",  # curl
    b"GET /v1/items?limit=10&offset=0 HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: python-requests/2.32.3\r\n"
    b"Accept-Encoding: gzip, deflate\r\nAccept: */*\r\nConnection: keep-alive\r\n\r\n",  # requests
    b"GET /metrics HTTP/1.1\r\nHost: svc:9000\r\nUser-Agent: Go-http-client/1.1\r\nAccept-Encoding: gzip\r\n\r\n",
    b"DELETE /v1/items/7 HTTP/1.1\r\nHost: api\r\nAccept: */*\r\nContent-Length: 0\r\nX-Request-Id: abc-123\r\n\r\n",
    b"GET /index.html HTTP/1.1\r\nHost: app.example.com\r\nConnection: keep-alive\r\n"
    b'sec-ch-ua: "Chromium";v="131", "Not_A Brand";v="24"\r\nsec-ch-ua-mobile: ?0\r\n'
    b"Upgrade-Insecure-Requests: 1\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, "
    b"like Gecko) Chrome/131.0.0.0 Safari/537.36\r\nAccept: text/html,application/xhtml+xml,application/xml;"
    b"q=0.9,*/*;q=0.8\r\nSec-Fetch-Site: none\r\nAccept-Encoding: gzip, deflate, br, zstd\r\n"
    b"Accept-Language: en-US,en;q=0.9\r\nCookie: session=abc; theme=dark\r\n\r\n",  # a browser
    b"GET /a HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\n\r\n",  # behind an LB
]

METHODS = [b"GET"] * 6 + [b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS", b"HEAD", b"get", b"CONNECT", b"FOO",
                          b"PRI", b"G ET", b""]
TARGETS = [b"/"] * 4 + [b"/api/health", b"/a/b?x=1&y=%20", b"/a%2Fb", b"//x", b"/a#frag", b"*", b"http://h/x",
                        b"/\xc3\xa4", b"/a b", b"/a\tb", b"", b"/a?q=\x01", b"/" + b"x" * 9000, b"/a/../b", b"/~u"]
VERSIONS = [b"HTTP/1.1"] * 8 + [b"HTTP/1.0", b"HTTP/2.0", b"http/1.1", b"HTTP/1.10", b"HTTP/1.1 ", b"HTTP/0.9"]
NAMES = [b"Host", b"host", b"HOST", b"User-Agent", b"Accept", b"Connection", b"Content-Length", b"Cookie",
         b"Transfer-Encoding", b"X-Forwarded-For", b"X-Forwarded-Host", b"X-Forwarded-Proto", b"X-Request-Id",
         b"x-request-id", b"Upgrade", b"Expect", b"TE", b"Keep-Alive", b"Proxy-Connection", b"Trailer",
         b"X-Lazy-Proxy-Forwarded", b"Content-Type", b"Proxy-Authorization", b"Sec-WebSocket-Key1", b"Server",
         b"Bad Name", b"X(y)", b"", b"X-\xc3\xa4", b"Accept-Encoding", b"Close", b"Upgrade-Insecure-Requests"]
VALUES = [b"v", b"127.0.0.1:8080", b"a b  c", b"keep-alive", b"Keep-Alive", b"close", b"upgrade", b"0", b"00",
          b"5", b"-1", b"chunked", b"gzip, chunked", b"100-continue", b"websocket", b"10.0.0.1, 10.0.0.2", b"x" * 300,
          b"", b" ", b"v ", b" v", b"v\t", b"\tv", b"a\x00b", b"a\x7fb", b"\xc3\xa4", b"a\rb", b"a\nb", b"x" * 9000,
          b"id-1", b"keep-alive, close", b"Host"]
USUAL_NAMES = [b"User-Agent", b"Accept", b"Cookie", b"Accept-Encoding", b"X-Forwarded-For", b"X-Request-Id",
               b"Connection", b"Content-Length", b"TE", b"Keep-Alive", b"X-Lazy-Proxy-Forwarded", b"x-forwarded-host",
               b"Upgrade-Insecure-Requests", b"Content-Type", b"Sec-Fetch-Mode", b"Authorization", b"Referer"]
USUAL_VALUES = [b"v", b"a b", b"text/html;q=0.9", b"keep-alive", b"0", b"10.0.0.1", b"id-1", b"x" * 201]
SEPARATORS = [b": "] * 12 + [b":", b":  ", b" : ", b":\t", b"\t: "]
ENDS = [b"\r\n"] * 20 + [b"\n", b"\r", b"\r\r\n"]


class _Pool:
    authority = b"10.0.0.2:8000"


class _Protocol:
    _reading_paused = False

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


@pytest.fixture(scope="module")
def loop() -> Any:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _aiohttp(loop: asyncio.AbstractEventLoop, data: bytes) -> Any:
    """aiohttp's C parser's verdict as the server's (default limits): (messages, upgraded, tail), or None."""
    parser = http_parser.HttpRequestParserC(_Protocol(), loop, 2**16)  # type: ignore[attr-defined]
    try:
        return parser.feed_data(data)
    except HttpProcessingError:
        return None


def _head(rng: random.Random) -> bytes:
    """A request head: mostly usual, often with one oddity, sometimes several."""
    odd = rng.random()
    pick = (lambda options, usual_first: options[0] if odd < 0.5 else rng.choice(options))  # noqa: E731
    line = pick(METHODS, True) + b" " + pick(TARGETS, True) + b" " + pick(VERSIONS, True) + pick(ENDS, True)
    headers = []
    if rng.random() < 0.9:
        headers.append((rng.choice([b"Host", b"Host", b"host"]), rng.choice([b"127.0.0.1:8080", b"app", b"h:1"])))
    for _ in range(rng.randrange(0, 8)):
        if odd < 0.5:
            headers.append((rng.choice(USUAL_NAMES), rng.choice(USUAL_VALUES)))
        else:
            headers.append((rng.choice(NAMES), rng.choice(VALUES if rng.random() < 0.5 else USUAL_VALUES)))
    rng.shuffle(headers)
    out = [line]
    for name, value in headers:
        sep = rng.choice(SEPARATORS) if odd > 0.6 else b": "
        end = rng.choice(ENDS) if odd > 0.8 else b"\r\n"
        out.append(name + sep + value + end)
        if odd > 0.95 and rng.random() < 0.2:
            out.append(b" folded\r\n")  # obs-fold
    out.append(b"\r\n" if odd < 0.9 else rng.choice(ENDS))
    data = b"".join(out)
    if rng.random() < 0.05:
        data += rng.choice([data, b"body", b"\r\n", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"])  # two requests, a body
    if rng.random() < 0.15:  # a random mutation: a byte changed, inserted or removed
        at = rng.randrange(len(data))
        byte = bytes([rng.choice([0, 9, 10, 13, 32, 58, 127, 0xC3, rng.randrange(256)])])
        data = rng.choice([data[:at] + byte + data[at + 1:], data[:at] + byte + data[at:], data[:at] + data[at + 1:]])
    return data


def _check(loop: asyncio.AbstractEventLoop, data: bytes) -> bool:
    """Whether the own parse took `data`; when it did, aiohttp agrees on everything the proxy reads."""
    head = usual.parse(data)
    if head is None:
        return False
    verdict = _aiohttp(loop, data)
    assert verdict is not None, f"own parse accepted what aiohttp refuses: {data!r}"
    messages, upgraded, tail = verdict
    assert len(messages) == 1 and not upgraded and not tail, data
    message, payload = messages[0]
    assert payload is EMPTY_PAYLOAD, data
    assert (message.method, message.path, message.version) == (head.method, head.path, head.version), data
    assert (message.should_close, message.upgrade, message.chunked) == (False, False, False), data
    assert message.raw_headers == head.raw_headers, data
    assert [(k.lower(), v) for k, v in message.headers.items()] == [  # (aiohttp spells known names its way)
        (k.lower(), v) for k, v in head.headers.items()], data
    given = "X-Request-Id" in message.headers and request_id(message.headers)[1]
    assert head.rid == (message.headers["X-Request-Id"] if given else None), data
    for target in (head.path, "/elsewhere/x?y=1"):
        want = request_head(message, target, _Pool(), PEER, SCHEME, head.rid or RID, given)  # type: ignore[arg-type]
        assert usual.request_head(head, target, _Pool(), usual.via(PEER, SCHEME), RID) == want, data  # type: ignore[arg-type]
    return True


def test_the_c_parser_is_the_one_compared() -> None:
    if not hasattr(http_parser, "HttpRequestParserC"):
        if os.environ.get("CI") == "true":
            pytest.fail("aiohttp's C parser is missing")
        pytest.skip("aiohttp's C parser is missing")


def test_common_heads_take_the_own_parse(loop: asyncio.AbstractEventLoop) -> None:
    for data in COMMON:
        assert _check(loop, data), data
        assert _check(loop, data), data  # (again: the remembered header block)


def test_differential_against_aiohttp(loop: asyncio.AbstractEventLoop) -> None:
    rng = random.Random(29)
    taken = refused = 0
    for _ in range(6000):
        if _check(loop, _head(rng)):
            taken += 1
        else:
            refused += 1
    assert taken > 1000 and refused > 1000, (taken, refused)  # both sides of the rule were exercised


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",  # a duplicate Host
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n",  # a body: aiohttp's
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",  # its parser must see the close
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",  # obs-fold
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",  # two requests
    b"GET / HTTP/1.1\nHost: a\n\n",  # bare LF
    b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: \x00\r\n\r\n",
    b"GET / HTTP/1.1\r\nUser-Agent: x\r\n\r\n",  # no Host
])
def test_unusual_heads_go_to_aiohttp(data: bytes) -> None:
    assert usual.parse(data) is None
