"""HTTP/2 conformance side by side with nginx: the same raw HTTP/2 requests (tests/support/h2_client.py) through
lazy-proxy (h2c with prior knowledge) and nginx (`listen ... http2`), both in front of one RecordingUpstream
(tests/support/conformance.py) speaking HTTP/1.1. The rule: lazy-proxy is never laxer than nginx. Whatever nginx
refuses (answers 4xx, resets, ends the connection), lazy-proxy refuses too, and the upstream sees nothing
of it; requests nginx passes on, lazy-proxy passes on with the same body.

    .venv/bin/pytest -m conformance tests/proxy/test_h2_conformance.py
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.lib.nginx import FORWARDED, proxy_location
from tests.support import h2_client
from tests.support.conformance import Front, RecordingUpstream, need_nginx, start_lazy_proxy, start_nginx
from tests.support.h2_client import Header, get

pytestmark = pytest.mark.conformance

# The h2 set-up on bench/lib/nginx.py's frame: bodies streamed both ways, as lazy-proxy does.
NGINX_H2_HTTP = """\
    client_max_body_size 1m;
    proxy_request_buffering off;
    proxy_buffering off;"""
NGINX_H2_LOCATIONS = proxy_location(*FORWARDED, "X-Forwarded-Host $http_host")


@pytest.fixture(scope="module")
def fronts(upstream: RecordingUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Front]]:
    need_nginx()
    lazy = start_lazy_proxy(upstream.port, tmp_path_factory.mktemp("lazy"))
    nginx = start_nginx(upstream.port, tmp_path_factory.mktemp("nginx"), listen="http2", http=NGINX_H2_HTTP,
                        locations=NGINX_H2_LOCATIONS)
    yield {"lazy-proxy": lazy, "nginx": nginx}
    lazy.stop()
    nginx.stop()


BODY = b"0123456789"
POST = [(b"content-type", b"text/plain")]

# name -> (headers, body, end): each a request no front may pass on as it is
BAD: dict[str, tuple[list[Header], bytes, bool]] = {
    "transfer-encoding": (get("/api/te", (b"transfer-encoding", b"chunked"), method=b"POST"),
                          b"5\r\nhello\r\n0\r\n\r\n", True),
    "connection-header": (get("/api/conn", (b"connection", b"keep-alive")), b"", True),
    "keep-alive-header": (get("/api/ka", (b"keep-alive", b"timeout=5")), b"", True),
    "upgrade-header": (get("/api/up", (b"upgrade", b"websocket")), b"", True),
    "proxy-connection": (get("/api/pc", (b"proxy-connection", b"keep-alive")), b"", True),
    "te-gzip": (get("/api/teg", (b"te", b"gzip")), b"", True),
    "uppercase-name": (get("/api/upper", (b"X-Upper", b"1")), b"", True),
    "space-in-name": (get("/api/sp", (b"x bad", b"1")), b"", True),
    "crlf-in-value": (get("/api/crlf", (b"x-inject", b"a\r\nx-smuggled: 1")), b"", True),
    "lf-in-value": (get("/api/lf", (b"x-inject", b"a\nx-smuggled: 1")), b"", True),
    "missing-path": ([(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"localhost")], b"", True),
    "missing-method": ([(b":scheme", b"http"), (b":authority", b"localhost"), (b":path", b"/api/m")], b"", True),
    "duplicate-path": (get("/api/d", (b":path", b"/api/d2")), b"", True),
    "pseudo-after-regular": ([(b":method", b"GET"), (b"x-a", b"1"), (b":scheme", b"http"),
                              (b":authority", b"localhost"), (b":path", b"/api/late")], b"", True),
    "unknown-pseudo": (get("/api/unk", (b":foo", b"bar")), b"", True),
    "response-pseudo": (get("/api/st", (b":status", b"200")), b"", True),
    "empty-path": (get(""), b"", True),
    "content-length-longer": (get("/api/cl1", (b"content-length", b"20"), *POST, method=b"POST"), BODY, True),
    "content-length-shorter": (get("/api/cl2", (b"content-length", b"4"), *POST, method=b"POST"), BODY, True),
    "content-length-twice": (get("/api/cl3", (b"content-length", b"10"), (b"content-length", b"11"), *POST,
                                 method=b"POST"), BODY, True),
    "oversized-field": (get("/api/big1", (b"x-big", b"a" * 20_000)), b"", True),
    "oversized-field-9k": (get("/api/big9", (b"x-big", b"a" * 9000)), b"", True),
    "oversized-list": (get("/api/big2", *[(b"x-f%d" % i, b"b" * 4000) for i in range(40)]), b"", True),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_refused_like_nginx(case: str, fronts: dict[str, Front], upstream: RecordingUpstream) -> None:
    headers, body, end = BAD[case]
    seen = {}
    for name, front in fronts.items():
        mark = upstream.mark()
        outcome = h2_client.request(front.port, headers, body, end=end)
        passed = [r for r in upstream.settle(mark, 0.2)]
        seen[name] = (outcome, passed)
    nginx_outcome, nginx_passed = seen["nginx"]
    lazy_outcome, lazy_passed = seen["lazy-proxy"]
    assert not lazy_passed or nginx_passed, f"{case}: lazy-proxy passed on what nginx did not: {lazy_passed!r:.300}"
    if nginx_outcome.refused:
        assert lazy_outcome.refused, f"{case}: nginx refused ({nginx_outcome}), lazy-proxy answered {lazy_outcome}"
    assert lazy_outcome.settings, f"{case}: lazy-proxy did not speak HTTP/2 ({lazy_outcome})"
    assert not lazy_passed, f"{case}: the upstream saw {lazy_passed!r:.300}"
    assert lazy_outcome.refused


def test_te_trailers_and_good_requests_pass_like_nginx(fronts: dict[str, Front], upstream: RecordingUpstream) -> None:
    for name, front in fronts.items():
        mark = upstream.mark()
        outcome = h2_client.request(front.port, get("/api/ok", (b"te", b"trailers"), (b"x-case", b"1"),
                                                    (b"content-length", b"10"), *POST, method=b"POST"), BODY)
        assert outcome.status == 200, (name, outcome)
        [seen] = upstream.since(mark)
        assert seen.body == BODY and seen.values("x-case") == ["1"], name
        assert seen.values("x-forwarded-for") == ["127.0.0.1"], name
        assert not seen.values("te") or seen.values("te") == ["trailers"], name  # never anything but trailers


def test_cookie_split_rejoined(fronts: dict[str, Front], upstream: RecordingUpstream) -> None:
    """HTTP/2 may split Cookie into fields; HTTP/1.1 gets one `; `-joined line (RFC 9113 8.2.3), as nginx does."""
    for name, front in fronts.items():
        mark = upstream.mark()
        outcome = h2_client.request(front.port, get("/api/cookie", (b"cookie", b"a=1"), (b"cookie", b"b=2")))
        assert outcome.status == 200, (name, outcome)
        [seen] = upstream.since(mark)
        assert seen.values("cookie") == ["a=1; b=2"], name


def test_reset_mid_body_reaches_nobody_whole(fronts: dict[str, Front], upstream: RecordingUpstream) -> None:
    """A stream reset before its body ended: the upstream never gets a complete request from either front."""
    for name, front in fronts.items():
        mark = upstream.mark()
        h2_client.request(front.port, get("/api/reset", (b"content-length", b"100"), *POST, method=b"POST"),
                          b"x" * 40, end=False, reset=True)
        assert upstream.settle(mark, 0.3) == [], name
