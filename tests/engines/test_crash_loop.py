"""The crash-loop breaker and stop escalation on real runtimes (process, docker, podman).

- A key whose command exits at once gets at most `crash_loop.failures` backend starts in a burst of 100
  requests, then 503s at once with a Retry-After that grows with each failed trial; once the command is
  "fixed" (it exits only before a wall-clock time passed in its env) the next trial succeeds and the
  breaker closes.
- A stop of an instance that ignores SIGTERM completes after about the class's stop_timeout (SIGKILL).
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import pytest

from proxy.lifecycle.events import State, StopReason
from tests.conftest import WITH_PROCESS_PARAMS, MakeProxy

RUNTIMES = [p for p in WITH_PROCESS_PARAMS if p.id != "stub"]  # commands mean nothing to the stub

# Exits with 1 until FIX_AT (epoch seconds), then runs the model service: an image that gets fixed.
BROKEN_UNTIL = ("import os, sys, time\n"
                "if time.time() < float(os.environ['FIX_AT']): sys.exit(1)\n"
                "from model_service.__main__ import main\n"
                "main([])\n")
# Answers 200 on every path, and ignores SIGTERM: only SIGKILL stops it.
IGNORES_SIGTERM = ("import http.server, os, signal\n"
                   "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                   "class H(http.server.BaseHTTPRequestHandler):\n"
                   "    def do_GET(self):\n"
                   "        self.send_response(200); self.send_header('Content-Length', '2'); self.end_headers()\n"
                   "        self.wfile.write(b'ok')\n"
                   "    def log_message(self, *args): pass\n"
                   "http.server.ThreadingHTTPServer((os.environ.get('HOST', '0.0.0.0'), int(os.environ.get('PORT', "
                   "'8080'))), H).serve_forever()\n")


@pytest.fixture(params=RUNTIMES)
def backend_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def python(kind: str) -> str:
    return sys.executable if kind == "process" else "/usr/bin/python3.11"  # the image's interpreter


async def test_crash_loop_opens_the_breaker_and_a_fixed_image_closes_it(make_proxy: MakeProxy,
                                                                        backend_kind: str) -> None:
    fix_at = time.time() + 25
    h = await make_proxy(svc={
        "command": [python(backend_kind), "-c", BROKEN_UNTIL], "env": {"FIX_AT": f"{fix_at:.3f}"},
        "crash_loop": {"failures": 3, "window": "60s", "backoff": "1s", "max_backoff": "4s"},
        "start_timeout": "20s"})
    errors: list[dict[str, Any]] = []
    h.proxy.hooks.on("error", errors.append)

    async def get() -> tuple[int, dict[str, Any], str | None]:
        resp = await h.client.get("/s/v2/health/ready")
        return resp.status, await resp.json(), resp.headers.get("Retry-After")

    began = time.monotonic()
    burst = [await get() for _ in range(100)]  # one after another: without a breaker, 100 backend starts
    burst_seconds = time.monotonic() - began
    assert [b[1]["error"] for b in burst] == ["start failed"] * 3 + ["crash loop"] * 97, burst[:5]
    assert all(status == 503 and retry for status, _, retry in burst)
    assert await h.metric("proxy_container_start_failures_total", container_class="svc") == 3  # backend starts
    assert await h.metric("proxy_container_breaker_open", container_class="svc") == 1
    assert [e["breaker"] for e in errors if "breaker" in e] == ["open"]
    status = (await (await h.client.get("/container-status")).json())["keys"][0]
    assert status["breaker"]["state"] == "open"

    retry_afters = [int(burst[-1][2] or 0)]
    for _ in range(2):  # wait out the backoff; the one trial fails; the next Retry-After is longer
        await asyncio.sleep(h.manager("shared").breaker.wait(asyncio.get_running_loop().time()) + 0.05)
        trial = await get()
        assert trial[1]["error"] == "start failed", trial
        refused = await get()
        assert refused[1]["error"] == "crash loop", refused
        retry_afters.append(int(refused[2] or 0))
    assert retry_afters == [1, 2, 4], retry_afters
    assert time.time() < fix_at, f"too slow to test the growth before the fix ({burst_seconds:.1f}s burst)"

    await asyncio.sleep(max(0.0, fix_at - time.time()) + 0.1)  # the image is fixed now
    m = h.manager("shared")
    await asyncio.sleep(m.breaker.wait(asyncio.get_running_loop().time()) + 0.05)
    fixed = await h.client.get("/s/v2/health/ready")
    assert fixed.status == 200, await fixed.text()
    assert m.state is State.RUNNING and not m.breaker.is_open
    assert await h.metric("proxy_container_breaker_open", container_class="svc") == 0
    assert await h.metric("proxy_container_start_failures_total", container_class="svc") == 5


async def test_a_stop_escalates_to_sigkill_after_stop_timeout(make_proxy: MakeProxy, backend_kind: str) -> None:
    h = await make_proxy(svc={"command": [python(backend_kind), "-c", IGNORES_SIGTERM], "stop_timeout": "2s"})
    assert (await h.client.get("/s/anything")).status == 200
    m = h.manager("shared")
    instance = m.instance
    assert instance is not None
    began = time.monotonic()
    await m.stop(StopReason.ADMIN)
    took = time.monotonic() - began
    assert 1.8 <= took < 6.0, f"stop took {took:.2f}s with stop_timeout 2s"
    assert m.state is State.STOPPED
    assert (await h.backend.inspect(instance)).value != "running"
    if backend_kind != "process":  # the process backend forgets a child it stopped; its SIGKILL is in its test
        assert "137" in (await h.backend.exit_reason(instance) or ""), "not ended by SIGKILL"
