"""`python -m proxy` as users run it: serves a prediction, drains on SIGTERM, exits 0."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(port: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("proxy did not come up")


def test_shipped_config_serves_a_prediction_and_drains_on_sigterm(tmp_path):
    raw = yaml.safe_load((ROOT / "config.yaml").read_text())
    raw["containers"]["worker"]["env"]["MODEL_SERVICE_DEBUG_ROUTES"] = "1"
    raw["routes"].append({"path": "/dbg/{tail:.*}", "container": "worker", "key": "worker-container",
                          "upstream_path": "/debug/{tail}"})
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "--config", str(config), "--port", str(port),
                             "--admin-port", str(free_port())],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_up(port, proc)
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/inference", method="POST",
                                     data=json.dumps({"sex": "female", "age": 29, "pclass": 1}).encode())
        with urllib.request.urlopen(req, timeout=30) as resp:
            body = json.loads(resp.read())
        assert resp.status == 200 and body["prediction_status"] == "survived" and 0.5 < body["probability"] <= 1

        # A slow request in flight when SIGTERM arrives still completes (drain), then instances stop.
        slow: dict[str, int] = {}
        thread = threading.Thread(target=lambda: slow.update(status=_get(port, "/dbg/sleep?seconds=1.5")))
        thread.start()
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        thread.join(timeout=30)
        assert proc.wait(timeout=40) == 0
        assert slow["status"] == 200
        logs = [json.loads(line) for line in proc.stderr.read().splitlines() if line.startswith("{")]
        states = [(e["from"], e["to"], e["reason"]) for e in logs if e.get("event") == "state"]
        assert ("running", "stopping", "shutdown") in states and ("stopping", "stopped", "shutdown") in states
        assert any(e.get("event") == "request" and e["status"] == 200 for e in logs)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _get(port: int, path: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
        return r.status


def test_stdlib_log_lines_are_json_too():
    """Backends and libraries log through `logging`; their lines share the JSON stream (one object a line)."""
    code = ("from proxy.observe.logs import configure; import logging, structlog; configure('info'); "
            "logging.getLogger('backends._engine').info('restarting stopped container %s', 'lp-x'); "
            "structlog.get_logger('proxy').info('state', key='k')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=ROOT)
    lines = [json.loads(line) for line in out.stderr.splitlines()]
    assert [line["event"] for line in lines] == ["restarting stopped container lp-x", "state"]
    assert lines[0]["logger"] == "backends._engine" and lines[0]["level"] == "info"


STUB = {"backend": {"type": "stub"}, "admin": {"token_env": "LP_TEST_TOKEN"},
        "containers": {"web": {"image": "model_service", "port": 8000}},
        "routes": [{"path": "/api/{tail:.*}", "container": "web"}]}
TOKEN = "a-token-of-sixteen-chars"


@contextlib.contextmanager
def stub_proxy(tmp_path: Path, *args: str) -> Iterator[tuple[subprocess.Popen[str], int, int]]:
    """`python -m proxy --config <STUB> --port P --admin-port A *args`: (process, P, A); killed if still up."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(STUB))
    port, admin = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "--config", str(config), "--port", str(port),
                             "--admin-port", str(admin), *args],
                            cwd=ROOT, env={**os.environ, "LP_TEST_TOKEN": TOKEN}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_up(admin, proc)
        yield proc, port, admin
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_a_reload_keeps_the_command_lines_ports_and_needs_no_restart_for_them(tmp_path):
    """`--port`, `--admin-port`, `--log-format` win over the file at every reload too: an unchanged file reloaded
    needs no restart (it named `server.port`, `admin`, `logging.format`, which the file never changed)."""
    with stub_proxy(tmp_path, "--log-format", "json", "--host", "127.0.0.1") as (proc, _, admin):
        req = urllib.request.Request(f"http://127.0.0.1:{admin}/admin/config/reload", method="POST",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            body = json.loads(resp.read())
        assert body["applied"] is True and body["restart_needed"] == [], body
        proc.send_signal(signal.SIGHUP)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0
        logs = [json.loads(line) for line in proc.stderr.read().splitlines() if line.startswith("{")]
        reloads = [e for e in logs if e.get("event") == "reloaded"]
        assert len(reloads) == 2 and not any("restart_needed" in e for e in reloads), reloads


def test_a_path_no_route_matches_is_a_404_that_says_so_with_its_request_id(tmp_path):
    """Was `{"error": "not found", "reason": "404: Not Found", "status": 404}`: aiohttp's words, no request id."""
    with stub_proxy(tmp_path) as (_, port, admin):
        for url in (f"http://127.0.0.1:{port}/nowhere?x=1", f"http://127.0.0.1:{admin}/nowhere"):
            with pytest.raises(urllib.error.HTTPError) as missed:
                urllib.request.urlopen(url, timeout=10)
            body = json.loads(missed.value.read())
            assert missed.value.code == 404 and body["reason"] == "no route for /nowhere", body
            assert body["request_id"] == missed.value.headers["X-Request-Id"], body


def test_a_method_no_route_takes_is_a_405_that_names_it_and_the_allowed_ones(tmp_path):
    """Was `"reason": "405: Method Not Allowed"`: aiohttp's words, not what was refused."""
    with stub_proxy(tmp_path) as (_, port, admin):
        for url in (f"http://127.0.0.1:{admin}/health", f"http://127.0.0.1:{admin}/admin/keys"):
            path = url.split(":", 2)[2].partition("/")[2]
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(urllib.request.Request(url, data=b"{}", method="POST"), timeout=10)
            body = json.loads(refused.value.read())
            assert refused.value.code == 405 and refused.value.headers["Allow"] == "GET,HEAD", body
            assert body["reason"] == f"method POST not allowed for /{path}; allowed: GET, HEAD", body


def test_check_as_a_word_like_ctl(tmp_path):
    """`lazy-proxy check --config x` as `ctl` is written (was: usage and `unrecognized arguments: check`, exit 2)."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(STUB))
    done = subprocess.run([sys.executable, "-m", "proxy", "check", "--config", str(config)], cwd=ROOT,
                          env={**os.environ, "LP_TEST_TOKEN": TOKEN}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "config ok" in done.stdout and "backend stub: ok" in done.stdout, done.stderr


def test_without_config_the_readmes_lazy_proxy_yaml_is_read_and_else_both_names_are_said(tmp_path):
    """The README writes `lazy-proxy.yaml`; `lazy-proxy` with no --config read only ./config.yaml ('cannot read
    config.yaml'). Now ./lazy-proxy.yaml, else ./config.yaml, else one line naming both and --config."""
    run = [sys.executable, "-m", "proxy", "--check"]
    env = {**os.environ, "LP_TEST_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)}
    missing = subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and missing.stderr == (
        "config error: config: no --config given, and neither lazy-proxy.yaml nor config.yaml is here\n")
    (tmp_path / "lazy-proxy.yaml").write_text(yaml.safe_dump(STUB))
    found = subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert found.returncode == 0 and "backend stub: ok" in found.stdout, found.stderr


def run_into_a_closed_pipe(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m proxy *args | head -1` at its worst: the reader is gone before the first write."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([sys.executable, "-m", "proxy", *args], cwd=ROOT, stdout=write, stderr=subprocess.PIPE,
                              env={**os.environ, "LP_TEST_TOKEN": TOKEN}, text=True, timeout=60)
    finally:
        os.close(write)


def test_a_reader_that_closed_stdout_ends_check_and_ctl_quietly(tmp_path):
    """Was `lazy-proxy: unexpected error: BrokenPipeError: [Errno 32] Broken pipe` (and a traceback for
    --version): now nothing on stderr and exit 1, as Python's recipe for a closed stdout says."""
    with stub_proxy(tmp_path) as (_, _, admin):
        for args in (["--check", "--config", str(tmp_path / "config.yaml")], ["--version"],
                     ["ctl", "--admin", f"http://127.0.0.1:{admin}", "--token-env", "LP_TEST_TOKEN", "status"]):
            done = run_into_a_closed_pipe(*args)
            assert (done.returncode, done.stderr) == (1, ""), (args, done.returncode, done.stderr)
