"""The optional mypyc build (python -m proxy.compile): built into a temp copy, it serves real proxied requests.

The proxy runs in a subprocess from the copy (bench.lib.launcher, an instance that is a plain HTTP/1.1 server in
this process), after printing the file every hot module was imported from: each must be the extension module.
Requests go on one keep-alive connection, so the first starts the key (the aiohttp path) and the rest take the
fast path through the compiled exchange, upstream connection, request log and metrics. Skipped without mypyc
or a C compiler, except under CI=true (a missing tool fails). Takes ~40-60 s (the compile).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from proxy.compile import HOT
from tests.support.conformance import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
MODULES = [p.removesuffix(".py").replace("/", ".") for p in HOT]
SCRIPT = """\
import importlib, runpy, sys
for name in {modules!r}:
    print("module", name, importlib.import_module(name).__file__, flush=True)
sys.argv = ["launcher", *sys.argv[1:]]
runpy.run_module("bench.lib.launcher", run_name="__main__")
"""


def _tools_or_skip() -> None:
    missing = [what for what, ok in (("mypyc (pip install 'lazy-proxy[fast]')", _has_mypyc()),
                                     ("a C compiler (gcc)", shutil.which("gcc") or shutil.which("cc")))
               if not ok]
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"missing {', '.join(missing)}")
        pytest.skip(f"missing {', '.join(missing)}")


def _has_mypyc() -> bool:
    try:
        import mypyc  # noqa: F401
    except ImportError:
        return False
    return True


class Instance(BaseHTTPRequestHandler):
    """The instance: echoes the method, path, body, X-Forwarded-For and X-Request-Id it got, as JSON."""

    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        echo = {"method": self.command, "path": self.path, "body": body.decode(),
                "xff": self.headers.get("X-Forwarded-For"), "rid": self.headers.get("X-Request-Id")}
        data = json.dumps(echo).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    _tools_or_skip()
    out = tmp_path_factory.mktemp("mypyc")
    run = subprocess.run([sys.executable, "-m", "proxy.compile", "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    yield out


def test_compiled_build_serves_proxied_requests(compiled: Path, tmp_path: Path) -> None:
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Instance)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    port = free_port()
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"logging": {"requests": True}, "containers": {"svc": {"sleep_after": 0}},
                                  "routes": [{"path": "/api/{tail:.*}", "container": "svc", "key": "shared"}]}))
    log = (tmp_path / "proxy.log").open("w+")
    argv = [sys.executable, "-c", SCRIPT.format(modules=MODULES), "--config", str(config), "--port", str(port),
            "--upstream", f"http://127.0.0.1:{upstream.server_address[1]}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(compiled), str(ROOT)])}
    proc = subprocess.Popen(argv, cwd=compiled, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        assert proc.stdout is not None
        files = {}
        for _ in MODULES:
            _, name, path = proc.stdout.readline().split()
            files[name] = path
        assert all(path.endswith(".so") and path.startswith(str(compiled)) for path in files.values()), files
        conn = _connect(port, proc)
        answers = []
        for i in range(5):  # the first starts the key (aiohttp path); the rest take the compiled fast path
            conn.request("GET", f"/api/item/{i}?q={i}")
            answers.append(_read(conn))
        conn.request("POST", "/api/upload", body=b"x" * 3000, headers={"Content-Type": "application/octet-stream"})
        answers.append(_read(conn))
        for i, (status, headers, body) in enumerate(answers[:5]):
            assert status == 200 and body["method"] == "GET" and body["path"] == f"/api/item/{i}?q={i}"
            assert body["xff"] == "127.0.0.1" and body["rid"] and headers["content-type"] == "application/json"
        status, _, body = answers[5]
        assert status == 200 and body["method"] == "POST" and body["body"] == "x" * 3000
        conn.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        upstream.shutdown()
    log.seek(0)
    lines = [json.loads(line) for line in log if line.startswith("{")]
    access = [entry for entry in lines if entry.get("path", "").startswith("/api/")]
    assert [entry["status"] for entry in access] == [200] * 6, lines  # the (compiled) request log's lines


def _connect(port: int, proc: subprocess.Popen[str]) -> http.client.HTTPConnection:
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, "the compiled proxy exited"
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.connect()
            return conn
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _read(conn: http.client.HTTPConnection) -> tuple[int, dict[str, str], dict[str, str]]:
    response = conn.getresponse()
    body = json.loads(response.read())
    return response.status, {k.lower(): v for k, v in response.getheaders()}, body
