"""The README's "Run your own app" examples, run as a new user would: `docker build` the example, then
`python -m proxy --config examples/<name>/lazy-proxy.yaml`, then plain HTTP and WebSocket clients.

Nothing here uses the model: a FROM scratch busybox site, a standard-library Python app on $PORT, a WebSocket
echo server. The site is also pushed to the local registry (.ci/daemons.sh runs it on 127.0.0.1:5000),
removed locally, and pulled by the proxy on the first request.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.engines import REGISTRY, ensure_image

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
RUN = uuid.uuid4().hex[:8]  # image tags of this test session: nothing else on the daemon is touched

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def docker(*args: str, timeout: float = 120) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"docker {' '.join(args)}: {done.stderr.strip()}"
    return done.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, timeout: float = 60) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


class Proxy:
    """`python -m proxy --config <example>` in a subprocess, on free ports; SIGTERM at the end."""

    def __init__(self, example: str, env: dict[str, str]) -> None:
        self.port, self.admin_port = free_port(), free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "--config", str(EXAMPLES / example / "lazy-proxy.yaml"),
             "--port", str(self.port), "--admin-port", str(self.admin_port)],
            cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, self.stop()
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/health", timeout=1)
                return
            except OSError:
                assert time.monotonic() < deadline, "the proxy did not come up"
                time.sleep(0.05)

    def __enter__(self) -> "Proxy":
        return self

    def __exit__(self, *exc: object) -> None:
        err = self.stop()
        assert "Traceback" not in err, err

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> str:
        """SIGTERM (the proxy stops its containers), then its stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err


def build(example: str, tag: str, tmp_path: Path, base: str) -> str:
    """`docker build` the example's directory as the README says (the busybox binary copied in for the site;
    Python examples on the model image, the one Python base image this machine has without a registry)."""
    context = tmp_path / example
    shutil.copytree(EXAMPLES / example, context)
    args = ["build", "-q", "-t", tag]
    if example == "static-site":
        busybox = shutil.which("busybox") or "/bin/busybox"
        if not Path(busybox).exists():
            pytest.fail("busybox-static is not installed (bash .ci/tools.sh)")
        shutil.copy(busybox, context / "busybox")
    else:
        args += ["--build-arg", f"BASE={base}"]
    docker(*args, str(context), timeout=300)
    return tag


@pytest.fixture
async def model_image() -> str:
    return await ensure_image("docker")  # skips (fails under CI=true) without a docker daemon


@pytest.fixture
def cleanup() -> Iterator[list[str]]:
    """Images of this test: their containers and then the images are removed at the end."""
    images: list[str] = []
    yield images
    for image in images:
        ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"ancestor={image}"], capture_output=True,
                             text=True).stdout.split()
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
        subprocess.run(["docker", "rmi", "-f", image], capture_output=True)


async def test_static_site_from_scratch_is_started_on_the_first_request(tmp_path, cleanup, model_image):
    tag = build("static-site", f"lazy-proxy-example/my-site:{RUN}", tmp_path, model_image)
    cleanup.append(tag)
    with Proxy("static-site", {"SITE_IMAGE": tag}) as proxy:
        status, body = get(proxy.url("/"))
        assert status == 200 and "Hello from a FROM scratch image" in body
        status, _ = get(proxy.url("/no-such-page.html"))
        assert status == 404  # the app's own 404, relayed
        running = docker("ps", "-q", "--filter", f"ancestor={tag}").split()
        assert len(running) == 1


async def test_an_image_only_a_registry_has_is_pulled_on_the_first_request(tmp_path, cleanup, model_image):
    local = build("static-site", f"lazy-proxy-example/my-site:{RUN}-push", tmp_path, model_image)
    remote = f"{REGISTRY}/lazy-proxy-example/my-site:{RUN}"
    cleanup += [local, remote]
    docker("tag", local, remote)
    docker("push", remote)
    docker("rmi", remote, local)  # only the registry has it now
    assert subprocess.run(["docker", "image", "inspect", remote], capture_output=True).returncode != 0
    with Proxy("static-site", {"SITE_IMAGE": remote}) as proxy:
        status, body = get(proxy.url("/"))
        assert status == 200 and "Hello from a FROM scratch image" in body
        docker("image", "inspect", remote)  # pulled


async def test_python_app_on_port_one_instance_per_user(tmp_path, cleanup, model_image):
    tag = build("python-app", f"lazy-proxy-example/my-python-app:{RUN}", tmp_path, model_image)
    cleanup.append(tag)
    with Proxy("python-app", {"APP_IMAGE": tag, "GREETING": "hi"}) as proxy:
        answers = {}
        for user in ("alice", "bob", "alice"):
            status, body = get(proxy.url(f"/u/{user}/hello?x=1"))
            assert status == 200, body
            answers.setdefault(user, set()).add(json.loads(body)["instance"])
            assert json.loads(body)["greeting"] == "hi" and json.loads(body)["path"] == "/hello?x=1"
        assert len(answers["alice"]) == 1 and answers["alice"] != answers["bob"]  # two instances, each kept
        assert len(docker("ps", "-q", "--filter", f"ancestor={tag}").split()) == 2


async def test_websocket_app_started_by_the_upgrade(tmp_path, cleanup, model_image):
    import websockets

    tag = build("websocket-app", f"lazy-proxy-example/my-ws-app:{RUN}", tmp_path, model_image)
    cleanup.append(tag)
    with Proxy("websocket-app", {"WS_IMAGE": tag}) as proxy:
        async with websockets.connect(f"ws://127.0.0.1:{proxy.port}/chat/lobby", open_timeout=60) as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"
            await ws.send(b"\x00" * 100_000)
            assert await ws.recv() == b"\x00" * 100_000
