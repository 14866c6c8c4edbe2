"""The compiled build as `pip install .` makes it: the wheel, with mypyc's extension modules of proxy/compile.py's
HOT beside their .py files, serves real proxied requests and says it is compiled.

The wheel is built from a temp copy of the checkout (tests/support/wheel.py: `pip wheel . --no-deps
--no-build-isolation`, this venv's setuptools and mypy; or built so already by .ci/run, named by
$LAZY_PROXY_TEST_WHEEL), unpacked, and the proxy runs from there in a subprocess (bench.lib.launcher, an instance
that is a plain HTTP/1.1 server in this process), after printing the file every hot module was imported from:
each must be the extension module. Requests go on one keep-alive connection, so the first starts the key (the
aiohttp path) and the rest take the fast path through the compiled exchange, upstream connection, request log
and metrics. Cheaper checks: LAZY_PROXY_PURE=1 and a broken C compiler give a pure wheel (one warning line, no
traceback), an editable build holds no extension module, the checkout runs pure Python, `--list` is HOT.
Skipped without mypyc or a C compiler, except under CI=true (a missing tool fails). The wheel takes ~60-120 s.
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
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from proxy import __version__
from proxy.compile import HOT, built
from tests.support.conformance import free_port
from tests.support.wheel import WHEEL_ENV, build as build_wheel, checkout_copy

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
MODULES = [p.removesuffix(".py").replace("/", ".") for p in HOT]
SCRIPT = """\
import importlib, runpy, sys
from proxy.compile import running
for name in {modules!r}:
    print("module", name, importlib.import_module(name).__file__, flush=True)
print("build", running(), flush=True)
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
    """The wheel's files, unpacked (what `pip install` puts into site-packages)."""
    _tools_or_skip()
    if prebuilt := os.environ.get(WHEEL_ENV):  # .ci/run built it while installing packages: the same command
        wheel = Path(prebuilt)
    else:
        wheel, _ = build_wheel(checkout_copy(tmp_path_factory.mktemp("src")), tmp_path_factory.mktemp("wheel"))
    assert not wheel.name.endswith("-none-any.whl"), wheel.name  # a platform wheel: it holds extension modules
    out = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(out)
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
        for hot in HOT:  # the wheel's files: each extension module beside its .py, the fallback
            source = compiled / hot
            assert source.is_file() and list(source.parent.glob(source.stem + ".cpython-*.so")), hot
        assert proc.stdout.readline().split(None, 1) == ["build", f"compiled, {len(HOT)} modules\n"]
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


def test_the_wheel_says_it_is_compiled(compiled: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "proxy", "--version"], cwd=compiled, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(compiled)}, timeout=120)
    assert done.stdout.strip() == f"lazy-proxy {__version__} (compiled, {len(HOT)} modules)", done.stderr


@pytest.mark.parametrize("env", [{"LAZY_PROXY_PURE": "1"}, {"CC": "/nonexistent/cc"}], ids=["pure", "no-compiler"])
def test_a_pure_wheel_when_asked_or_without_a_compiler(env: dict[str, str], tmp_path: Path) -> None:
    if "CC" in env:
        _tools_or_skip()  # mypyc present: it is the compiler's absence that makes this wheel pure
    wheel, said = build_wheel(checkout_copy(tmp_path / "src"), tmp_path / "wheel", env)
    assert wheel.name.endswith("-py3-none-any.whl"), wheel.name
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert "proxy/http/exchange.py" in names and not [n for n in names if n.endswith(".so")]
    assert "Traceback" not in said
    if "CC" in env:
        [warning] = [line for line in said.splitlines() if "warning: lazy-proxy" in line]
        assert "builds pure Python (not compiled by mypyc): no working C compiler" in warning


def test_an_editable_build_holds_no_extension_module(tmp_path: Path) -> None:
    """What `pip install -e .` builds (the backend's build_editable hook): no mypyc, no .so anywhere."""
    src = checkout_copy(tmp_path / "src")
    hook = "import sys, lazy_proxy_build as b; print(b.build_editable(sys.argv[1]))"
    done = subprocess.run([sys.executable, "-c", hook, str(tmp_path / "out")], cwd=src, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(src / "build_backend")})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with zipfile.ZipFile(tmp_path / "out" / done.stdout.strip().splitlines()[-1]) as archive:
        assert not [n for n in archive.namelist() if n.endswith(".so")]
    assert not list(src.rglob("*.so"))


def test_the_checkout_runs_pure_python() -> None:
    """.ci/run installs -e: the tests run the .py files (unless a developer built in place: python -m proxy.compile)."""
    if built(ROOT):
        pytest.skip(f"an in-place build is here ({len(built(ROOT))} .so): python -m proxy.compile --clean")
    done = subprocess.run([sys.executable, "-m", "proxy", "--version"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.strip() == f"lazy-proxy {__version__} (pure Python)", done.stderr


def test_proxy_compile_lists_hot() -> None:
    done = subprocess.run([sys.executable, "-m", "proxy.compile", "--list"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.split() == list(HOT)
