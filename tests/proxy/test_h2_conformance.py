"""HTTP/2 conformance side by side with nginx: the same raw HTTP/2 requests (tests/support/h2_client.py) through
lazy-proxy (h2c with prior knowledge) and nginx (`listen ... http2`), both in front of one RecordingUpstream
(tests/support/conformance.py) speaking HTTP/1.1. The rule: lazy-proxy is never laxer than nginx. Whatever nginx
refuses (answers 4xx, resets, ends the connection), lazy-proxy refuses too, and the upstream sees nothing
of it; requests nginx passes on, lazy-proxy passes on with the same body.

    .venv/bin/pytest -m conformance tests/proxy/test_h2_conformance.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import h2_client
from tests.support.conformance import (Front, RecordingUpstream, free_port, nginx_available, start_lazy_proxy,
                               _wait_until_serving)
from tests.conftest import ci
from tests.support.h2_client import Header, get

pytestmark = pytest.mark.conformance

NGINX_H2 = r"""{user}
worker_processes 1;
error_log {dir}/error.log info;
pid {dir}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    client_max_body_size 1m;
    proxy_request_buffering off;
    proxy_buffering off;
    upstream up {{
        server 127.0.0.1:{upstream};
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port} http2;
        listen 127.0.0.1:{probe};
        location / {{
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
        }}
    }}
}}
"""


def start_nginx_h2(upstream_port: int, workdir: Path) -> Front:
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    port, probe = free_port(), free_port()
    conf = workdir / "nginx.conf"
    user = "user root;" if os.geteuid() == 0 else ""
    conf.write_text(NGINX_H2.format(user=user, dir=workdir, upstream=upstream_port, port=port, probe=probe))
    with (workdir / "nginx.stderr").open("wb") as err:
        proc = subprocess.Popen([binary, "-p", str(workdir), "-e", str(workdir / "error.log"), "-c", str(conf),
                                 "-g", "daemon off;"], cwd=workdir, stdout=subprocess.DEVNULL, stderr=err,
                                stdin=subprocess.DEVNULL)
    waiter = Front("nginx", probe, proc, workdir / "error.log", workdir)  # HTTP/1.1 probe port: up when it answers
    _wait_until_serving(waiter, b"GET /nothing-here HTTP/1.1\r\nHost: x\r\n\r\n")
    return Front("nginx", port, proc, workdir / "error.log", workdir)


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fronts(upstream: RecordingUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Front]]:
    if not nginx_available():
        if ci():
            pytest.fail("nginx is not installed (CI=true: the reference side must run)")
        pytest.skip("nginx is not installed")
    lazy = start_lazy_proxy(upstream.port, tmp_path_factory.mktemp("lazy"))
    nginx = start_nginx_h2(upstream.port, tmp_path_factory.mktemp("nginx"))
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
