"""Readiness through the whole proxy: any app with `image` and `port` is served, and a start that never gets
ready says what its probe last saw.

- A plain app (`python3 -m http.server`, 404 on the model's readiness path) is served with the default TCP
  readiness: as a child process, and in the model image (it ships python) on docker (where docker-proxy accepts
  the published port before the app listens) and podman.
- Failed starts: `GET /nope answered 404` (stub), `connection refused` (a process that never listens).
- `readiness: healthcheck` on docker: an image built FROM the model image with a HEALTHCHECK is served once
  docker reports it healthy; the model image itself (no HEALTHCHECK) fails the start at once, not at
  start_timeout. (Podman runs HEALTHCHECKs with systemd timers, which this CI has not: docker only.)
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from typing import Any, AsyncIterator

import pytest

from proxy.lifecycle.events import State
from tests.support import engines
from tests.conftest import MakeProxy

# What is probed each time; serves the current directory (a listing on `/`, 404 on /v2/health/ready).
HTTP_SERVER = "exec {python} -m http.server --bind {host} {port}"
MODEL_PYTHON = "/usr/bin/python3.11"  # the model image's interpreter (its Cmd)
ON_DOCKER = {"backend": {"type": "docker"}}  # make_proxy's backend object is docker's; the config must say so too
HEALTHY = ("import urllib.request as u; u.urlopen('http://127.0.0.1:8080/v2/health/ready', timeout=2)")


@pytest.fixture(params=[pytest.param("stub", id="stub"), pytest.param("process", id="process"),
                        pytest.param("docker", id="docker", marks=pytest.mark.docker),
                        pytest.param("podman", id="podman", marks=pytest.mark.podman)])
def backend_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def only(backend_kind: str, *kinds: str) -> None:
    if backend_kind not in kinds:
        pytest.skip(f"not on {backend_kind}")


async def test_plain_app_is_served_with_tcp_readiness(make_proxy: MakeProxy, backend_kind: str) -> None:
    only(backend_kind, "process", "docker", "podman")
    if backend_kind == "process":
        svc: dict[str, Any] = {"entrypoint": ["sh", "-c", HTTP_SERVER.format(python=sys.executable, host="$HOST",
                                                                            port="$PORT")]}
    else:
        svc = {"entrypoint": [MODEL_PYTHON], "command": ["-m", "http.server", "8000"], "port": 8000}
    h = await make_proxy(svc={**svc, "readiness": None})  # no readiness: the default, TCP
    assert h.proxy.config.containers["svc"].readiness.kind == "tcp"
    listing = await h.client.get("/s/")
    assert listing.status == 200, await listing.text()
    assert "Directory listing" in await listing.text()
    assert (await h.client.get("/s/v2/health/ready")).status == 404  # the app's own answer, forwarded
    status = await (await h.client.get("/container-status")).json()
    [entry] = [e for e in status["keys"] if e["key"] == "shared"]
    assert entry["health"]["ok"] is True and entry["health"]["check"] == "TCP connect"


async def test_timeout_reason_says_the_path_answered_404(make_proxy: MakeProxy, backend_kind: str) -> None:
    only(backend_kind, "stub")
    h = await make_proxy(svc={"readiness": {"path": "/nope"}, "start_timeout": "1s"})
    resp = await h.client.get("/s/v2/health/ready")
    assert resp.status == 504
    m = h.manager("shared")
    await h.wait_for(lambda: m.state is State.FAILED)
    assert m.last_error == "not ready within start_timeout=1s: GET /nope answered 404"


async def test_timeout_reason_says_connection_refused(make_proxy: MakeProxy, backend_kind: str) -> None:
    only(backend_kind, "process")
    silent = [sys.executable, "-c", "import time; time.sleep(60)"]  # runs, never listens
    h = await make_proxy(svc={"command": silent, "readiness": {}, "start_timeout": "1s", "stop_timeout": "0"})
    resp = await h.client.get("/s/")
    assert resp.status == 504
    m = h.manager("shared")
    await h.wait_for(lambda: m.state is State.FAILED)
    assert m.last_error.startswith("not ready within start_timeout=1s: connection refused (nothing accepts on the ")


async def test_an_app_on_127_0_0_1_in_its_container_times_out_with_a_hint(make_proxy: MakeProxy,
                                                                          backend_kind: str) -> None:
    """Flask's and many dev servers' default: listening on 127.0.0.1 inside the container, which no published
    port reaches. The start times out (`connection refused`, on docker behind docker-proxy as on podman); the
    reason now says what to check, so a new user does not have to guess."""
    only(backend_kind, "docker", "podman")
    svc = {"entrypoint": [MODEL_PYTHON], "command": ["-m", "http.server", "--bind", "127.0.0.1", "8000"],
           "port": 8000, "readiness": None, "start_timeout": "3s"}
    h = await make_proxy(svc=svc)
    assert (await h.client.get("/s/")).status == 504
    m = h.manager("shared")
    await h.wait_for(lambda: m.state is State.FAILED)
    assert m.last_error == ("not ready within start_timeout=3s: connection refused (nothing accepts on the app's "
                            "port: is `port` right, and in a container, does the app listen on 0.0.0.0, not "
                            "127.0.0.1?)"), m.last_error


async def test_an_app_that_exits_at_once_says_what_it_printed(make_proxy: MakeProxy, backend_kind: str) -> None:
    """A typo in the command, a missing setting: the container exits before it is ready. The reason had only
    `exited with code 3`, and the app's own words were in `docker logs` of a container the user had to find."""
    only(backend_kind, "docker", "podman")
    fail = "import sys; print('starting'); sys.exit('boom: DATABASE_URL is not set')"
    h = await make_proxy(svc={"entrypoint": [MODEL_PYTHON, "-c", fail], "port": 8000, "readiness": None})
    assert (await h.client.get("/s/")).status == 503
    m = h.manager("shared")
    await h.wait_for(lambda: m.state is State.FAILED)
    assert "exited with code 1; last output: starting | boom: DATABASE_URL is not set" in m.last_error, m.last_error


@pytest.fixture
async def healthcheck_image(backend_kind: str) -> AsyncIterator[str]:
    """The model image plus a HEALTHCHECK (its own readiness path, every 100 ms), built on docker."""
    only(backend_kind, "docker")
    base = await engines.ensure_image("docker")
    tag = f"lazy-proxy-test/readiness-hc:{uuid.uuid4().hex[:10]}"
    dockerfile = (f"FROM {base}\nHEALTHCHECK --interval=100ms --timeout=2s --retries=100 "
                  f"CMD [\"{MODEL_PYTHON}\", \"-c\", \"{HEALTHY}\"]\n")
    subprocess.run(["docker", "build", "-q", "-t", tag, "-"], input=dockerfile.encode(), check=True,
                   capture_output=True, timeout=300)
    yield tag
    subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True, timeout=120)


async def test_healthcheck_readiness_waits_for_healthy(make_proxy: MakeProxy, healthcheck_image: str) -> None:
    h = await make_proxy(svc={"image": healthcheck_image, "readiness": "healthcheck"}, config=ON_DOCKER)
    assert (await h.client.get("/s/v2/health/ready")).status == 200
    m = h.manager("shared")
    assert m.instance is not None
    assert (await h.backend.health(m.instance)).status == "healthy"  # type: ignore[attr-defined]
    status = await (await h.client.get("/container-status")).json()
    [entry] = [e for e in status["keys"] if e["key"] == "shared"]
    assert entry["health"] == {**entry["health"], "ok": True, "check": "healthcheck", "seen": "healthcheck: healthy"}


async def test_healthcheck_readiness_without_one_fails_the_start(make_proxy: MakeProxy, backend_kind: str) -> None:
    only(backend_kind, "docker")
    h = await make_proxy(svc={"readiness": "healthcheck", "start_timeout": "60s"}, config=ON_DOCKER)  # no HEALTHCHECK
    resp = await h.client.get("/s/v2/health/ready")
    body = await resp.json()
    assert resp.status == 503 and body["error"] == "start failed"  # at once, not a 504 at start_timeout
    m = h.manager("shared")
    assert "the image has no HEALTHCHECK" in m.last_error
