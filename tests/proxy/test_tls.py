"""TLS termination as users run it: `python -m proxy` with `server.tls`/`admin.tls`, real clients (curl, the ssl
module), certificates made here with trustme: HTTPS through the proxy, the oldest version refused, mutual TLS,
a rotated certificate presented without a restart, and config errors that name the field."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import ssl
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import pytest
import trustme
import yaml

from tests.conftest import ci

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def curl() -> str:
    path = shutil.which("curl")
    if path is None:
        if ci():
            raise AssertionError("curl is missing (.ci/tools.sh installs it)")
        pytest.skip("curl not installed")
    return path


def write_pair(ca: trustme.CA, directory: Path, name: str = "server", host: str = "localhost") -> tuple[Path, Path]:
    cert = ca.issue_cert(host, "127.0.0.1")
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert.private_key_pem.write_to_path(str(key_path))
    cert_path.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    return cert_path, key_path


def config(tls: dict[str, Any] | None = None, admin_tls: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", **({"tls": tls} if tls else {})},
        "admin": {"host": "127.0.0.1", **({"tls": admin_tls} if admin_tls else {})},
        "backend": {"type": "stub"},
        "containers": {"svc": {"image": "lazy-proxy/model-service:latest", "port": 8080,
                               "env": {"MODEL_SERVICE_DEBUG_ROUTES": "1"},
                               "readiness": {"path": "/v2/health/ready", "interval": "5ms"}}},
        "routes": [{"path": "/api/{tail:.*}", "container": "svc", "key": "shared"},
                   {"path": "/dbg/{tail:.*}", "container": "svc", "key": "shared", "upstream_path": "/debug/{tail}"}],
    }


@contextlib.contextmanager
def proxy(tmp_path: Path, raw: dict[str, Any]) -> Iterator[tuple[int, int, subprocess.Popen[str]]]:
    """`python -m proxy` on free ports, until the start-up line; yields (port, admin port, process)."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    port, admin_port = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "--config", str(path), "--port", str(port),
                             "--admin-port", str(admin_port), "--log-format", "json"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "listening on" in line:
                break
        else:
            raise AssertionError(f"the proxy exited with {proc.wait()} before listening")
        yield port, admin_port, proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def curl_get(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([curl(), "-sS", "--max-time", "30", "-o", "-", "-w", "\n%{http_code} %{scheme}", *args, url],
                          capture_output=True, text=True, timeout=60)


def peer_cert(port: int, ca: trustme.CA) -> dict[str, Any]:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            cert = tls.getpeercert()
            assert cert is not None
            return cert


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def test_https_through_the_proxy_with_curl_and_its_banner(tmp_path: Path, ca: trustme.CA) -> None:
    cert, key = write_pair(ca, tmp_path)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    with proxy(tmp_path, config({"cert": str(cert), "key": "server.key"})) as (port, _, proc):
        done = curl_get(f"https://localhost:{port}/api/health", "--cacert", str(tmp_path / "ca.pem"))
        body, status = done.stdout.rsplit("\n", 1)
        assert status == "200 HTTPS", done.stderr
        assert json.loads(body)["status"] == "healthy"
        # the instance learns the client spoke https (on both of the proxy's paths: fast and aiohttp's)
        seen = curl_get(f"https://localhost:{port}/dbg/headers", "--cacert", str(tmp_path / "ca.pem"))
        assert json.loads(seen.stdout.rsplit("\n", 1)[0])["headers"]["X-Forwarded-Proto"] == "https", seen
        # a plain-HTTP client gets no answer on the TLS port (no downgrade)
        plain = curl_get(f"http://localhost:{port}/api/health")
        assert not plain.stdout.endswith("200 HTTP")
        # Without the CA curl refuses the certificate: the proxy presents the one configured.
        untrusted = curl_get(f"https://localhost:{port}/api/health")
        assert untrusted.returncode == 60, untrusted.stderr


def test_https_banner_and_alpn_offer_http1(tmp_path: Path, ca: trustme.CA) -> None:
    cert, key = write_pair(ca, tmp_path)
    with proxy(tmp_path, config({"cert": str(cert), "key": str(key)})) as (port, admin_port, proc):
        context = ssl.create_default_context()
        ca.configure_trust(context)
        context.set_alpn_protocols(["http/1.1"])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                assert tls.selected_alpn_protocol() == "http/1.1"
                tls.sendall(b"GET /api/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                answer = b""
                while chunk := tls.recv(65536):
                    answer += chunk
        assert answer.startswith(b"HTTP/1.1 200")
        # the admin listener stays plain HTTP without admin.tls
        assert curl_get(f"http://127.0.0.1:{admin_port}/health").stdout.endswith("200 HTTP")


@pytest.mark.parametrize("min_version,refused,accepted", [
    ("1.2", ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1_2),
    ("1.3", ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3),
])
def test_min_version_refuses_older_clients(tmp_path: Path, ca: trustme.CA, min_version: str,
                                           refused: ssl.TLSVersion, accepted: ssl.TLSVersion) -> None:
    cert, key = write_pair(ca, tmp_path)
    raw = config({"cert": str(cert), "key": str(key), "min_version": min_version})
    # `min_version: 1.2` unquoted is a YAML float: accepted as the version it spells
    raw["server"]["tls"]["min_version"] = float(min_version)
    with proxy(tmp_path, raw) as (port, _, _proc):
        def handshake(version: ssl.TLSVersion) -> str:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.set_ciphers("DEFAULT:@SECLEVEL=0")  # the client itself may offer TLS 1.1
            with warnings.catch_warnings():  # TLS 1.1 is deprecated: that is the point
                warnings.simplefilter("ignore", DeprecationWarning)
                context.minimum_version = context.maximum_version = version
            ca.configure_trust(context)
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                with context.wrap_socket(sock, server_hostname="localhost") as tls:
                    return str(tls.version())

        with pytest.raises(ssl.SSLError) as refusal:
            handshake(refused)
        # the server hung up (or alerted), not the client declining to offer the version (NO_PROTOCOLS_AVAILABLE)
        assert isinstance(refusal.value, ssl.SSLEOFError) or "ALERT" in str(refusal.value).upper(), refusal.value
        assert handshake(accepted) == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[accepted]


def test_mutual_tls(tmp_path: Path, ca: trustme.CA) -> None:
    cert, key = write_pair(ca, tmp_path)
    clients = trustme.CA()
    clients.cert_pem.write_to_path(str(tmp_path / "clients.pem"))
    good = clients.issue_cert("client@example.com")
    good.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "client.pem"))
    stranger = trustme.CA().issue_cert("stranger@example.com")
    stranger.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "stranger.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    tls = {"cert": str(cert), "key": str(key), "client_ca": str(tmp_path / "clients.pem")}
    with proxy(tmp_path, config(tls)) as (port, _, _proc):
        url = f"https://localhost:{port}/api/health"
        bare = curl_get(url, "--cacert", str(tmp_path / "ca.pem"))
        assert bare.returncode != 0 and not bare.stdout.endswith("200 HTTPS"), bare
        other = curl_get(url, "--cacert", str(tmp_path / "ca.pem"), "--cert", str(tmp_path / "stranger.pem"))
        assert other.returncode != 0 and not other.stdout.endswith("200 HTTPS"), other
        ok = curl_get(url, "--cacert", str(tmp_path / "ca.pem"), "--cert", str(tmp_path / "client.pem"))
        assert ok.stdout.endswith("200 HTTPS"), ok.stderr


def test_rotation_presents_the_new_certificate_without_a_restart(tmp_path: Path, ca: trustme.CA) -> None:
    cert, key = write_pair(ca, tmp_path)
    with proxy(tmp_path, config({"cert": str(cert), "key": str(key)})) as (port, _, proc):
        before = peer_cert(port, ca)
        # certbot's way: new files written aside, then renamed over the old ones (key first, then cert: a
        # moment where the pair does not match, which must not be loaded)
        new_cert, new_key = write_pair(ca, tmp_path, "next", host="localhost")
        new_key.replace(key)
        new_cert.replace(cert)
        deadline = time.monotonic() + 30
        after = before
        while after["serialNumber"] == before["serialNumber"] and time.monotonic() < deadline:
            time.sleep(0.1)
            after = peer_cert(port, ca)
        assert after["serialNumber"] != before["serialNumber"], "the rotated certificate was not presented"
        assert proc.poll() is None
        done = curl_get(f"https://localhost:{port}/api/health", "-k")
        assert done.stdout.endswith("200 HTTPS")


def test_admin_tls_has_its_own_certificate(tmp_path: Path, ca: trustme.CA) -> None:
    admin_ca = trustme.CA()
    cert, key = write_pair(admin_ca, tmp_path, "admin")
    admin_ca.cert_pem.write_to_path(str(tmp_path / "admin-ca.pem"))
    with proxy(tmp_path, config(admin_tls={"cert": str(cert), "key": str(key)})) as (port, admin_port, proc):
        done = curl_get(f"https://localhost:{admin_port}/health", "--cacert", str(tmp_path / "admin-ca.pem"))
        assert done.stdout.endswith("200 HTTPS"), done.stderr
        assert peer_cert(admin_port, admin_ca)["subjectAltName"][0] == ("DNS", "localhost")
        # the admin listener speaks HTTP/1.1 only: a client offering h2 first gets http/1.1 by ALPN
        context = ssl.create_default_context()
        admin_ca.configure_trust(context)
        context.set_alpn_protocols(["h2", "http/1.1"])
        with socket.create_connection(("127.0.0.1", admin_port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                assert tls.selected_alpn_protocol() == "http/1.1"
        assert curl_get(f"http://127.0.0.1:{port}/api/health").stdout.endswith("200 HTTP")


def _exit(tmp_path: Path, raw: dict[str, Any]) -> tuple[int, str]:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    done = subprocess.run([sys.executable, "-m", "proxy", "--config", str(path), "--port", str(free_port()),
                           "--admin-port", str(free_port())], cwd=ROOT, capture_output=True, text=True, timeout=60)
    return done.returncode, done.stderr


def test_config_errors_name_the_field_and_exit_2(tmp_path: Path, ca: trustme.CA) -> None:
    cert, key = write_pair(ca, tmp_path)
    other_cert, other_key = write_pair(ca, tmp_path, "other")
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    cases = [
        (config({"cert": str(tmp_path / "gone.pem"), "key": str(key)}), "server.tls.cert: cannot read"),
        (config({"cert": str(tmp_path / "junk.pem"), "key": str(key)}), "server.tls.cert: "),
        (config({"cert": str(cert), "key": str(other_key)}), "server.tls.key: "),
        (config({"cert": str(cert), "key": str(key), "client_ca": str(tmp_path / "junk.pem")}),
         "server.tls.client_ca: "),
        (config({"cert": str(cert), "key": str(key), "min_version": "1.1"}), "server.tls.min_version"),
        (config(admin_tls={"cert": str(cert), "key": str(tmp_path / "none.key")}), "admin.tls.key: cannot read"),
        (config(admin_tls={"key": str(key)}), "admin.tls.cert: required"),
    ]
    for raw, expected in cases:
        code, stderr = _exit(tmp_path, raw)
        assert code == 2, stderr
        lines = stderr.strip().splitlines()
        assert lines[0].startswith(f"config error: {expected}"), stderr
        assert "Traceback" not in stderr
