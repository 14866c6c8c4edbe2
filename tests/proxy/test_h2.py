"""HTTP/2 from clients (h2c with prior knowledge, TLS with ALPN h2) and h2c/gRPC to instances, with real clients:
curl, grpcio, h2load. Each stream has the HTTP/1.1 request's lifecycle (cold start held until ready, refusals)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.conftest import ci

REPO = Path(__file__).resolve().parents[2]
GRPC_SERVER = [sys.executable, "-m", "bench.lib.grpc_upstream"]


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if ci():
            pytest.fail(f"{name} is not installed (CI=true)")
        pytest.skip(f"{name} is not installed")
    return path


async def _run(*argv: str, timeout: float = 60.0, stdin_file: Path | None = None) -> subprocess.CompletedProcess[str]:
    def run() -> subprocess.CompletedProcess[str]:
        with (stdin_file.open("rb") if stdin_file else open(os.devnull, "rb")) as stdin:
            return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, stdin=stdin)
    return await asyncio.to_thread(run)


async def _curl(port: int, path: str, *extra: str) -> tuple[int, dict[str, str], str, str]:
    """(status, headers, body, http version) of one curl request with HTTP/2 prior knowledge."""
    res = await _run(_tool("curl"), "-sS", "--http2-prior-knowledge", "-D", "-",
                     "-w", "%{stderr}%{http_version}", *extra, f"http://127.0.0.1:{port}{path}")
    assert res.returncode == 0, res.stderr
    head, _, body = res.stdout.partition("\n\n")  # (text mode: CRLF read as LF)
    version = res.stderr
    lines = head.split("\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body, version


@pytest.mark.parametrize("backend_kind", ["stub"], indirect=True)
async def test_h2c_prior_knowledge_cold_then_warm(make_proxy: Any) -> None:
    h = await make_proxy()
    port = h.client.server.port
    status, headers, body, version = await _curl(port, "/k/h2cold/v2/health/ready")
    assert (status, version) == (200, "2")
    assert headers.get("x-proxy-cold-start") == "1"  # held until ready, then relayed
    await h.wait_for(lambda: h.manager("h2cold").in_flight == 0)  # (curl may exit at Content-Length, before
    # the stream's END_STREAM frame: the release follows within a loop turn)
    status, headers, body, version = await _curl(port, "/k/h2cold/v2/health/ready")
    assert (status, version) == (200, "2") and "x-proxy-cold-start" not in headers
    # HTTP/1.1 on the same listener is unchanged
    res = await h.client.get("/k/h2cold/v2/health/ready")
    assert res.status == 200


@pytest.mark.parametrize("backend_kind", ["stub"], indirect=True)
async def test_h2c_refusals_are_json(make_proxy: Any, tmp_path: Path) -> None:
    h = await make_proxy()
    port = h.client.server.port
    status, _, body, version = await _curl(port, "/k/a%2Fb/x")
    assert status == 400 and json.loads(body)["error"] in ("invalid key", "invalid path")
    status, _, body, _ = await _curl(port, "/nowhere")
    assert status == 404 and json.loads(body)["status"] == 404
    big = tmp_path / "big"
    big.write_bytes(b"x" * 2 * 2**20)
    status, _, body, _ = await _curl(port, "/k/big/v2/health/ready", "--data-binary", f"@{big}")
    assert status == 413 and json.loads(body)["error"] == "request body too large"


def _grpc_class(**extra: Any) -> dict[str, Any]:
    return {"command": GRPC_SERVER, "protocol": "grpc", "readiness": "tcp", "env": {"PYTHONPATH": str(REPO),
            **extra.pop("env", {})}, **extra}


GRPC_ROUTES = [{"path": "/test.Echo/{method}", "container": "svc", "key": "{header:x-tenant}"},
               {"path": "/grpc.health.v1.Health/{method}", "container": "svc", "key": "{header:x-tenant}"}]


async def _unary(port: int, method: str, body: bytes, tenant: str | None, timeout: float = 30.0
                 ) -> tuple[grpc.StatusCode, bytes | None, dict[str, str], str]:
    """One unary call with a real grpcio channel: (code, answer, trailing metadata, details)."""
    def call() -> tuple[grpc.StatusCode, bytes | None, dict[str, str], str]:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = channel.unary_unary(method)
            metadata = [("x-tenant", tenant)] if tenant else []
            try:
                answer, info = stub.with_call(body, metadata=metadata, timeout=timeout)
            except grpc.RpcError as exc:
                return exc.code(), None, dict(exc.trailing_metadata() or ()), exc.details() or ""
            return info.code(), answer, dict(info.trailing_metadata() or ()), ""
    return await asyncio.to_thread(call)


@pytest.mark.parametrize("backend_kind", ["process"], indirect=True)
async def test_grpc_cold_key_from_metadata_held_until_ready(make_proxy: Any) -> None:
    h = await make_proxy(svc=_grpc_class(env={"GRPC_TEST_DELAY": "0.5"}), config={"routes": GRPC_ROUTES})
    port = h.client.server.port
    code, answer, trailers, _ = await _unary(port, "/test.Echo/Echo", b"hello", "tenant-a")
    assert code == grpc.StatusCode.OK and answer == b"echo:hello"  # held through the start, then answered
    assert trailers["x-seen-tenant"] == "tenant-a" and trailers["x-seen-forwarded-for"] == "127.0.0.1"
    await h.wait_for(lambda: h.manager("tenant-a").in_flight == 0)
    assert h.manager("tenant-a").start_count == 1
    calls = await asyncio.gather(*(_unary(port, "/test.Echo/Echo", b"%d" % i, "tenant-b") for i in range(20)))
    assert [c[1] for c in calls] == [b"echo:%d" % i for i in range(20)]
    assert h.manager("tenant-b").start_count == 1  # one start for 20 concurrent cold calls (single flight)
    code, _, _, details = await _unary(port, "/test.Echo/Echo", b"x", None)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "x-tenant" in details


@pytest.mark.parametrize("backend_kind", ["process"], indirect=True)
async def test_grpc_refusals_are_statuses(make_proxy: Any) -> None:
    h = await make_proxy(svc=_grpc_class(command=[sys.executable, "-c", "import sys; sys.exit(3)"]),
                         config={"routes": GRPC_ROUTES})
    code, _, _, details = await _unary(h.client.server.port, "/test.Echo/Echo", b"x", "dead")
    assert code == grpc.StatusCode.UNAVAILABLE and details  # start failed, with the reason


@pytest.mark.parametrize("backend_kind", ["process"], indirect=True)
async def test_grpc_start_timeout_and_deadline(make_proxy: Any) -> None:
    h = await make_proxy(svc=_grpc_class(env={"GRPC_TEST_DELAY": "30"}, start_timeout="1s"),
                         config={"routes": GRPC_ROUTES})
    port = h.client.server.port
    code, _, _, details = await _unary(port, "/test.Echo/Echo", b"x", "slow")
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED  # start timeout
    code, _, _, _ = await _unary(port, "/test.Echo/Echo", b"x", "slow2", timeout=0.3)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED  # the client's own grpc-timeout


@pytest.mark.parametrize("backend_kind", ["process"], indirect=True)
async def test_grpc_too_large_is_resource_exhausted(make_proxy: Any) -> None:
    h = await make_proxy(svc=_grpc_class(), config={"routes": GRPC_ROUTES})
    code, _, _, _ = await _unary(h.client.server.port, "/test.Echo/Echo", b"x" * (2 * 2**20), "big")
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.fixture
async def tls_proxy(tmp_path: Path) -> Any:
    """A stub-backed proxy served over TLS with ALPN h2/http1.1 (a test context; the shipped one is
    proxy/wire/tls.py's) and the CA file a client trusts."""
    import trustme

    from backends.stub import StubBackend
    from proxy.app import create_app
    from proxy.config.schema import parse_config
    from tests.conftest import ProxyTestServer, base_config

    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    context.set_alpn_protocols(["h2", "http/1.1"])
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server = ProxyTestServer(create_app(parse_config(base_config("stub", "model_service")), StubBackend()),
                             handler_cancellation=True)
    await server.start_server(ssl=context)
    yield server.port, ca_file
    await server.close()


async def test_h2_over_tls_alpn(tls_proxy: tuple[int, Path]) -> None:
    port, ca_file = tls_proxy
    for flag, version in (("--http2", "2"), ("--http1.1", "1.1")):
        res = await _run(_tool("curl"), "-sS", flag, "--cacert", str(ca_file), "-w", "%{stderr}%{http_version}",
                         f"https://localhost:{port}/k/tls/v2/health/ready", "--resolve", f"localhost:{port}:127.0.0.1")
        assert res.returncode == 0 and res.stderr == version, res.stderr
        assert json.loads(res.stdout)  # the instance's own answer, relayed


@pytest.mark.parametrize("backend_kind", ["stub"], indirect=True)
async def test_h2load_many_concurrent_streams(make_proxy: Any) -> None:
    h = await make_proxy()
    port = h.client.server.port
    res = await _run(_tool("h2load"), "-n", "2000", "-c", "4", "-m", "50", f"http://127.0.0.1:{port}/k/load/v2/health/ready",
                     timeout=120)
    assert res.returncode == 0, res.stderr
    assert "2000 succeeded, 0 failed, 0 errored" in res.stdout, res.stdout
    assert "status codes: 2000 2xx" in res.stdout, res.stdout
    await h.wait_for(lambda: h.manager("load").in_flight == 0)
    assert h.manager("load").start_count == 1


@pytest.mark.parametrize("backend_kind", ["stub"], indirect=True)
async def test_stream_limit_rapid_reset_and_continuation_flood(make_proxy: Any) -> None:
    """`max_concurrent_streams` is announced and enforced; a rapid-reset flood gets GOAWAY ENHANCE_YOUR_CALM; a
    CONTINUATION flood and an oversized header list end the connection; the proxy serves on afterwards."""
    import h2.errors
    import h2.settings

    from tests.support import h2_client

    h = await make_proxy(config={"server": {"max_concurrent_streams": 7}})
    port = h.client.server.port
    ok = await asyncio.to_thread(h2_client.request, port, h2_client.get("/k/lim/v2/health/ready"))
    assert ok.status == 200 and ok.settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] == 7

    def flood_resets() -> h2_client.Outcome:
        sock, conn = h2_client.connect(port)
        outcome = h2_client.Outcome()
        try:
            for _ in range(400):  # open and cancel at once, never more than the limit open
                stream_id = conn.get_next_available_stream_id()
                conn.send_headers(stream_id, h2_client.get("/k/lim/v2/health/ready"))
                conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
            sock.sendall(conn.data_to_send())  # in one write: the proxy reads it all before it hangs up
            return h2_client.read_until(sock, conn, -1, outcome)
        finally:
            sock.close()

    flood = await asyncio.to_thread(flood_resets)
    assert flood.goaway == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, flood

    def too_many_streams() -> h2_client.Outcome:
        sock, conn = h2_client.connect(port)
        outcome = h2_client.Outcome()
        try:
            h2_client.read_until(sock, conn, -1, outcome, 0.3)  # take the server's SETTINGS
            conn.remote_settings = h2.settings.Settings(client=False, initial_values={  # ignore the limit
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1000})
            last = 0
            for _ in range(8):  # one past the limit, none ended (their bodies stay open)
                last = conn.get_next_available_stream_id()
                conn.send_headers(last, h2_client.get("/k/lim/v2/health/ready", method=b"POST"))
            sock.sendall(conn.data_to_send())
            return h2_client.read_until(sock, conn, last, outcome)
        finally:
            sock.close()

    over = await asyncio.to_thread(too_many_streams)
    assert over.reset == h2.errors.ErrorCodes.REFUSED_STREAM or over.goaway is not None, over

    def continuation_flood() -> h2_client.Outcome:
        import hyperframe.frame

        sock, conn = h2_client.connect(port)
        outcome = h2_client.Outcome()
        try:
            block = conn.encoder.encode(h2_client.get("/k/lim/v2/health/ready"))
            first = hyperframe.frame.HeadersFrame(1)
            first.data = block
            frames = [first.serialize()]
            for _ in range(200):  # never END_HEADERS: an endless header block
                cont = hyperframe.frame.ContinuationFrame(1)
                cont.data = b"\x40\x03abc\x03def"  # a literal header field each time
                frames.append(cont.serialize())
            try:
                sock.sendall(b"".join(frames))
            except OSError:  # the proxy hung up mid-flood
                outcome.closed = True
                return outcome
            return h2_client.read_until(sock, conn, 1, outcome)
        finally:
            sock.close()

    cont = await asyncio.to_thread(continuation_flood)
    assert cont.closed or cont.goaway is not None, cont

    big = await asyncio.to_thread(h2_client.request, port, h2_client.get(
        "/k/lim/v2/health/ready", *[(b"x-f%d" % i, b"b" * 4000) for i in range(40)]))
    assert big.status is None and (big.closed or big.goaway is not None), big
    again = await asyncio.to_thread(h2_client.request, port, h2_client.get("/k/lim/v2/health/ready"))
    assert again.status == 200
    await h.wait_for(lambda: h.manager("lim").in_flight == 0)


@pytest.mark.parametrize("backend_kind", ["process"], indirect=True)
async def test_h2c_class_serves_grpc_and_http1_clients(make_proxy: Any) -> None:
    """`protocol: h2c`: gRPC passes through (trailers included); an HTTP/1.1 client's request reaches the same
    instance as one HTTP/2 stream (the fast path stays out of it), its answer relayed."""
    h = await make_proxy(svc=_grpc_class(protocol="h2c"), config={"routes": GRPC_ROUTES})
    port = h.client.server.port
    code, answer, trailers, _ = await _unary(port, "/test.Echo/Echo", b"h2c", "plain")
    assert code == grpc.StatusCode.OK and answer == b"echo:h2c" and trailers["x-seen-tenant"] == "plain"
    for _ in range(2):  # cold was above; both are warm (the fast path would send HTTP/1.1)
        res = await h.client.post("/test.Echo/Echo", data=b"\x00\x00\x00\x00\x02hi",
                                  headers={"x-tenant": "plain", "content-type": "application/grpc", "te": "trailers"})
        assert res.status == 200 and res.headers["content-type"] == "application/grpc"
        assert await res.read() == b"\x00\x00\x00\x00\x07echo:hi"


@pytest.mark.parametrize("backend_kind", ["stub"], indirect=True)
async def test_idle_connection_gets_goaway(make_proxy: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """An HTTP/2 connection with no stream and no frame for the idle timeout is ended with GOAWAY NO_ERROR."""
    from proxy.http import h2server
    from tests.support import h2_client

    monkeypatch.setattr(h2server, "IDLE_TIMEOUT", 0.2)
    h = await make_proxy()

    def idle() -> h2_client.Outcome:
        sock, conn = h2_client.connect(h.client.server.port)
        try:
            return h2_client.read_until(sock, conn, -1, h2_client.Outcome(), timeout=10)
        finally:
            sock.close()

    outcome = await asyncio.to_thread(idle)
    assert outcome.goaway == 0, outcome


@pytest.mark.parametrize("backend_kind", ["stub"], indirect=True)
async def test_h2_bodies_past_the_window_with_and_without_length(make_proxy: Any, tmp_path: Path) -> None:
    """Bodies larger than a stream's 64 KiB window reach the instance whole: with Content-Length, and streamed
    without one (relayed chunked to the HTTP/1.1 instance); the instance's X-Forwarded-* are set."""
    import hashlib

    h = await make_proxy()
    port = h.client.server.port
    data = os.urandom(700_000)
    body = tmp_path / "body"
    body.write_bytes(data)
    want = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    status, _, answer, version = await _curl(port, "/k/bodies/debug/echo", "--data-binary", f"@{body}")
    assert (status, version, json.loads(answer)) == (200, "2", want)
    res = await _run(_tool("curl"), "-sS", "--http2-prior-knowledge", "-X", "POST", "-T", "-",
                     f"http://127.0.0.1:{port}/k/bodies/debug/echo", stdin_file=body)
    assert res.returncode == 0 and json.loads(res.stdout) == want, res.stderr
    status, _, answer, _ = await _curl(port, "/k/bodies/debug/headers", "-H", "X-Forwarded-For: 10.0.0.1")
    seen = {k.lower(): v for k, v in json.loads(answer)["headers"].items()}
    assert seen["x-forwarded-for"] == "10.0.0.1, 127.0.0.1" and seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == f"127.0.0.1:{port}" and seen.get("x-request-id")


@pytest.mark.parametrize("backend_kind", ["process"], indirect=True)
async def test_slow_client_does_not_make_the_proxy_buffer(make_proxy: Any, tmp_path: Path) -> None:
    """A client that never opens its window: the proxy holds at most its bound of the instance's 16 MB answer
    (h2_to_h1.BUFFERED plus a socket read) and the rest waits in the instance, not in the proxy's memory."""
    import gc

    import h2.events

    from proxy.http.h2_to_h1 import BUFFERED, H1Sink
    from tests.support import h2_client

    (tmp_path / "big.bin").write_bytes(b"z" * 16 * 2**20)
    command = ["sh", "-c", f"exec {sys.executable} -m http.server $PORT --bind 127.0.0.1 --directory {tmp_path}"]
    h = await make_proxy(svc={"command": command, "readiness": "tcp"})
    port = h.client.server.port

    def stalled() -> int:
        sock, conn = h2_client.connect(port)
        got = 0
        try:
            stream_id = conn.get_next_available_stream_id()
            conn.send_headers(stream_id, h2_client.get("/k/slow/big.bin"), end_stream=True)
            sock.sendall(conn.data_to_send())
            sock.settimeout(3)
            try:
                while True:  # read what the window allows, never acknowledge it
                    data = sock.recv(65536)
                    if not data:
                        break
                    for event in conn.receive_data(data):
                        if isinstance(event, h2.events.DataReceived):
                            got += len(event.data or b"")
                    out = conn.data_to_send()
                    if out:
                        sock.sendall(out)
            except TimeoutError:
                pass
            sinks = [o for o in gc.get_objects() if isinstance(o, H1Sink)]
            assert len(sinks) == 1 and not sinks[0].ended
            assert sinks[0].buffered <= BUFFERED + 2**20, sinks[0].buffered  # bounded, not 16 MB
            return got
        finally:
            sock.close()

    got = await asyncio.to_thread(stalled)
    assert 0 < got <= 65535  # the client's window, no more
    await h.wait_for(lambda: h.manager("slow").in_flight == 0)  # the client left: the lease ends


@pytest.mark.parametrize("backend_kind", ["stub"], indirect=True)
async def test_drain_finishes_open_streams(make_proxy: Any) -> None:
    """Shutting the listener down (SIGTERM's drain): an HTTP/2 stream open then still gets its whole answer
    (the proxy sends GOAWAY, not the library's connection close, which would cut the open streams)."""
    h = await make_proxy()
    port = h.client.server.port
    status, _, _, _ = await _curl(port, "/k/drain/v2/health/ready")
    assert status == 200
    pending = asyncio.ensure_future(_curl(port, "/k/drain/debug/sleep?seconds=1"))
    await h.wait_for(lambda: h.manager("drain").in_flight == 1)
    await h.client.server.close()
    status, _, body, version = await pending
    assert (status, version) == (200, "2"), body
