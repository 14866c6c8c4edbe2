"""The operator's first hour: each mistake is one line on stderr and an exit code, never a traceback; the
start-up line; console or JSON logs; --check, --version; /ready; the bounded drain and the second signal."""

from __future__ import annotations

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
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from proxy import __version__
from proxy.__main__ import main
from proxy.app import create_app
from proxy.compile import running
from proxy.config.schema import parse_config
from proxy.admin.ctl import duration, table
from proxy.observe.request_log import RequestLog, console_line
from tests.support.engines import ensure_image
from backends.podman import podman_socket

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
STUB = {"backend": {"type": "stub"}, "containers": {"svc": {"image": "model_service"}},
        "routes": [{"path": "/api/{tail:.*}", "container": "svc", "key": "shared", "upstream_path": "/{tail}"}]}
BAD_DOCKER = {"backend": {"type": "docker", "docker": {"socket": "unix:///nonexistent/lp-ops.sock"}},
              "containers": {"svc": {"image": "lp-ops-nowhere:1"}}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write(tmp_path: Path, raw: dict[str, Any], name: str = "config.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def one_line(stderr: str) -> str:
    """The single line a mistake prints (and no traceback)."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env={**os.environ, **(env or {})})


# ---------------------------------------------------------------- mistakes: one line, an exit code


def test_version_and_the_entry_point(capsys):
    done = run("-m", "proxy", "--version")
    assert done.returncode == 0 and done.stdout.strip() == f"lazy-proxy {__version__} ({running()})"
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])  # what the `lazy-proxy` console script calls
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"lazy-proxy {__version__} ({running()})"


@pytest.mark.parametrize("field", ["server.port", "admin.port"])
def test_a_port_in_use_is_one_line_naming_the_field_and_exit_2(tmp_path, field):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        port, admin = (busy, free_port()) if field == "server.port" else (free_port(), busy)
        done = run("-m", "proxy", "--config", write(tmp_path, STUB), "--port", str(port), "--admin-port", str(admin))
    assert done.returncode == 2
    assert one_line(done.stderr) == f"config error: {field}: {busy} on 127.0.0.1 is in use"


def test_check_a_good_config_a_bad_one_and_an_unreachable_backend(tmp_path, capsys):
    assert main(["--check", "--config", write(tmp_path, STUB)]) == 0
    out = capsys.readouterr()
    assert "config ok" in out.out and "backend stub: ok" in out.out and out.err == ""

    bad = {**STUB, "containers": {"svc": {"image": "model_service", "sleep_after": "soon"}}}
    assert main(["--check", "--config", write(tmp_path, bad, "bad.yaml")]) == 2
    assert "containers.svc.sleep_after" in one_line(capsys.readouterr().err)

    assert main(["--check", "--config", write(tmp_path, BAD_DOCKER, "docker.yaml")]) == 1
    out = capsys.readouterr()
    assert "backend docker: unreachable: docker daemon unreachable at unix:///nonexistent/lp-ops.sock: no such socket" \
        in out.out and out.err == ""


@pytest.mark.docker
def test_check_reports_whether_each_image_is_present(tmp_path, capsys):
    raw = {"backend": {"type": "docker"}, "containers": {"gone": {"image": "lp-ops-never-built:1"}}}
    assert main(["--check", "--config", write(tmp_path, raw)]) == 0
    out = capsys.readouterr().out
    assert "backend docker: ok" in out and "class gone: image lp-ops-never-built:1 not present locally" in out


def test_podman_finds_podman_remotes_socket_variable_and_a_rootless_users_socket(tmp_path):
    """`CONTAINER_HOST` (podman's own variable) is read as `PODMAN_HOST` is; without either, root gets
    /run/podman/podman.sock and any other user the rootless socket (`systemctl --user start podman.socket`)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PODMAN_HOST", "CONTAINER_HOST")}
    raw = {"backend": {"type": "podman"}, "containers": {"svc": {"image": "model_service"}}}
    done = subprocess.run([sys.executable, "-m", "proxy", "--check", "--config", write(tmp_path, raw)], cwd=ROOT,
                          env={**env, "CONTAINER_HOST": "unix:///nonexistent/podman.sock"}, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1 and "unreachable at unix:///nonexistent/podman.sock: no such socket" in done.stdout
    assert podman_socket({}, 0) == "unix:///run/podman/podman.sock"
    assert podman_socket({"XDG_RUNTIME_DIR": "/run/user/1000"}, 1000) == "unix:///run/user/1000/podman/podman.sock"
    assert podman_socket({}, 1000) == "unix:///run/user/1000/podman/podman.sock"
    assert podman_socket({"CONTAINER_HOST": "ssh://me@host/run/podman.sock"}, 0) == "unix:///run/podman/podman.sock"
    assert podman_socket({"PODMAN_HOST": "unix:///a", "CONTAINER_HOST": "unix:///b"}, 0) == "unix:///a"


@pytest.mark.parametrize("runtime", ["docker", "podman"])
async def test_check_says_when_the_image_exposes_other_ports_than_the_class_port(tmp_path, runtime):
    """The model image EXPOSEs 8080: a class on port 9000 (a forgotten or mistyped `port`) would only time out
    at its first start with `connection refused`; `--check` says so before (the real CLI, on the real daemon)."""
    image = await ensure_image(runtime)
    raw = {"backend": {"type": runtime}, "containers": {"off": {"image": image, "port": 9000},
                                                        "on": {"image": image, "port": 8080}}}
    done = subprocess.run([sys.executable, "-m", "proxy", "--check", "--config", write(tmp_path, raw)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    lines = done.stdout.splitlines()
    assert f"class off: image {image} present; it EXPOSEs 8080/tcp, not port 9000" in lines, lines
    assert f"class on: image {image} present" in lines, lines


@pytest.mark.parametrize("runtime, how", [("podman", "--socket"), ("docker", "DOCKER_HOST")])
def test_image_build_without_a_daemon_is_one_line_and_exit_1(runtime, how):
    sock = "unix:///nonexistent/lp-ops.sock"
    args = ["--socket", sock] if how == "--socket" else []
    done = run("-m", "backends.image", "build", "--runtime", runtime, *args,
               env={"DOCKER_HOST": sock} if how == "DOCKER_HOST" else None)
    assert done.returncode == 1
    expected = f"python -m backends.image build: {runtime} API unreachable at {sock}: no such socket"
    assert one_line(done.stderr) == expected


# ---------------------------------------------------------------- a running proxy as an operator sees it


class Running:
    """`python -m proxy` in a subprocess, stderr read as it comes."""

    def __init__(self, config: str, *args: str) -> None:
        self.port, self.admin = free_port(), free_port()
        self.proc = subprocess.Popen([PY, "-m", "proxy", "--config", config, "--port", str(self.port),
                                      "--admin-port", str(self.admin), *args],
                                     cwd=ROOT, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_line(self, text: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if found := [line for line in self.lines if text in line]:
                return found[0]
            assert self.proc.poll() is None or self._reader.is_alive(), "\n".join(self.lines)
            time.sleep(0.05)
        raise AssertionError(f"no line with {text!r} in:\n" + "\n".join(self.lines))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self._reader.join(timeout=10)
        return code


def test_the_start_up_line_in_console_format(tmp_path):
    proxy = Running(write(tmp_path, STUB), "--log-format", "console")
    try:
        line = proxy.wait_line("listening on")
        assert f"lazy-proxy {__version__} ({running()}) listening on http://127.0.0.1:{proxy.port} " \
               f"(admin http://127.0.0.1:{proxy.admin}), backend stub ok, 1 class (svc: model_service), " \
               "1 route (/api/{tail:.*})" in line
        assert line[2] == ":" and "[info]" in line and "\x1b[" not in line  # HH:MM:SS, no colours off a TTY
        urllib.request.urlopen(f"http://127.0.0.1:{proxy.port}/api/v2/health/ready", timeout=30).read()
        request = proxy.wait_line("] request ")
        assert "method=GET path=/api/v2/health/ready status=200" in request and not request.startswith("{")
    finally:
        assert proxy.stop() == 0
    assert any("shutting down on SIGTERM: draining 0 requests for up to 30s" in line for line in proxy.lines)
    assert not any(line.startswith("{") for line in proxy.lines)


def test_json_is_the_default_off_a_terminal(tmp_path):
    proxy = Running(write(tmp_path, {**STUB, "logging": {"level": "warning"}}), "--log-level", "info")
    try:
        event = json.loads(proxy.wait_line("listening on"))
        assert event["level"] == "info"
        assert event["event"].startswith(f"lazy-proxy {__version__} ({running()}) listening on")
    finally:
        assert proxy.stop() == 0


def test_an_unreachable_daemon_at_start_up_is_a_warning_and_the_proxy_stays_up(tmp_path):
    proxy = Running(write(tmp_path, BAD_DOCKER))
    try:
        event = json.loads(proxy.wait_line("listening on"))
        assert event["level"] == "warning"
        assert "backend docker UNREACHABLE: docker daemon unreachable at unix:///nonexistent/lp-ops.sock: " \
               "no such socket" in event["event"]
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(f"http://127.0.0.1:{proxy.admin}/ready", timeout=10)
        assert answer.value.code == 503
    finally:
        assert proxy.stop() == 0
    assert not any("Traceback" in line for line in proxy.lines)


def slow_start_config(tmp_path: Path) -> str:
    """A process-backend class whose app sleeps 120 s before it listens: a request waits for a cold start."""
    app = ("import os, sys, time; time.sleep(120); "
           "os.execv(sys.executable, [sys.executable, '-m', 'http.server', os.environ['PORT'], '--bind', '127.0.0.1'])")
    return write(tmp_path, {
        "server": {"drain_timeout": "1s"}, "backend": {"type": "process"},
        "containers": {"slow": {"entrypoint": [PY, "-c", app], "readiness": {"path": "/"},
                                "start_timeout": "300s", "stop_timeout": "1s"}},
        "routes": [{"path": "/{tail:.*}", "container": "slow", "key": "one"}]})


def cold_request(port: int, seen: dict[str, Any]) -> threading.Thread:
    def get() -> None:
        try:
            seen["status"] = urllib.request.urlopen(f"http://127.0.0.1:{port}/x", timeout=200).status
        except urllib.error.HTTPError as exc:
            seen["status"] = exc.code
        except OSError as exc:
            seen["error"] = exc

    thread = threading.Thread(target=get, daemon=True)
    thread.start()
    return thread


def test_the_drain_is_bounded_by_drain_timeout_with_a_request_waiting_for_a_cold_start(tmp_path):
    """drain_timeout 1s; the instance would take 120 s to listen. The proxy does not wait it out: the waiting
    request is cut at the drain's end, the start is given up (its process stopped), the proxy exits 0."""
    proxy = Running(slow_start_config(tmp_path))
    proxy.wait_line("listening on")
    seen: dict[str, Any] = {}
    client = cold_request(proxy.port, seen)
    proxy.wait_line('"to": "starting"')
    began = time.monotonic()
    assert proxy.stop() == 0
    took = time.monotonic() - began
    client.join(timeout=30)
    assert took < 60, took  # far below the 120 s start: the drain did not wait for it
    assert "error" in seen or seen.get("status", 200) >= 500
    assert any("shutting down on SIGTERM: draining 1 request for up to 1s" in line for line in proxy.lines)
    failed = [json.loads(line) for line in proxy.lines if '"to": "failed"' in line]
    assert failed and failed[0]["reason"] == "start cancelled" and failed[0]["level"] == "warning"


def test_a_second_signal_exits_at_once_with_130(tmp_path):
    proxy = Running(slow_start_config(tmp_path))
    proxy.wait_line("listening on")
    seen: dict[str, Any] = {}
    cold_request(proxy.port, seen)
    proxy.wait_line('"to": "starting"')
    proxy.proc.send_signal(signal.SIGTERM)
    proxy.wait_line("shutting down on SIGTERM")
    proxy.proc.send_signal(signal.SIGINT)
    assert proxy.stop() == 130
    assert any("second signal: exiting now" in line for line in proxy.lines)
    assert not any("Traceback" in line for line in proxy.lines)


# ---------------------------------------------------------------- /ready, /metrics, ctl, the access line


async def test_ready_is_503_while_the_docker_socket_is_unreachable_and_200_on_the_stub():
    for raw, status in ((BAD_DOCKER, 503), (STUB, 200)):
        config = parse_config({**raw, "admin": {"on_proxy_port": ["health", "ready"]}})
        async with TestClient(TestServer(create_app(config))) as client:
            assert (await client.get("/health")).status == 200  # liveness either way
            answer = await client.get("/ready")
            body = await answer.json()
            assert answer.status == status and body["backend_ok"] is (status == 200)
            if status == 503:
                assert body["reason"] == "backend unavailable" and "sock" not in json.dumps(body)
            assert (await client.get("/ready")).status == status  # cached: same answer, no new daemon call


async def test_metrics_have_build_info_and_the_process_collectors():
    config = parse_config({**STUB, "admin": {"on_proxy_port": ["metrics"]}})
    async with TestClient(TestServer(create_app(config))) as client:
        text = await (await client.get("/metrics")).text()
    assert f'lazy_proxy_build_info{{version="{__version__}"}} 1.0' in text
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "python_gc_objects_collected_total",
                 "python_info{"):
        assert name in text


def test_ctl_table_and_idle_durations():
    keys = [{"key": "b", "container": "web", "state": "running", "in_flight": 2, "last_activity": 1000.0,
             "start_count": 3},
            {"key": "a", "container": "web", "state": "stopped", "in_flight": 0, "last_activity": None,
             "start_count": 0}]
    header, first, second = table(keys, now=1185.0).splitlines()
    assert header.split() == ["KEY", "CLASS", "STATE", "IN-FLIGHT", "IDLE", "STARTS"]
    assert first.split() == ["a", "web", "stopped", "0", "-", "0"]
    assert second.split() == ["b", "web", "running", "2", "3m05s", "3"]
    assert [duration(s) for s in (0, 59, 3600 + 120, 2 * 86400 + 7200)] == ["0s", "59s", "1h02m", "2d2h"]


def test_the_access_line_follows_the_console_format():
    line = RequestLog.prefix("/api", "k") + '"method": "GET", "path": "/x", "status": 200, "ms": 1.50, ' \
        '"event": "request", "level": "info", "timestamp": "2026-01-01T10:00:00.000001Z"}\n'
    json.loads(line)  # the shape the JSON writer makes
    out = console_line(line)
    assert out.endswith("[info] request method=GET path=/x status=200 ms=1.5 route=/api key=k\n")
