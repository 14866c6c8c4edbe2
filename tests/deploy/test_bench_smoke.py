"""Every benchmark still runs: `python -m bench.NAME --smoke` from the repository root, as its own process.

Smoke parameters are tiny (a few seconds each, the numbers mean nothing); each run must exit 0 and end with a
`SUMMARY {json}` line that parses, naming the bench, plus a check or two on what the bench is about. Benches
that need a container daemon run their stub variant only (cold_start, warm_restart: `--runtime stub`), but for
cold_start's pause mode on docker and its swarm run, marked for their daemons.
Benches that need wrk (overhead, inference) or nginx (overhead's reference) skip without them, or fail under
CI=true, where .ci/ installs them.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 180  # seconds per bench: smoke runs take 1-10 s; this only stops a hung one


def ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def have(program: str) -> bool:
    return bool(shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin"))


def need(program: str, package: str) -> None:
    """Skip without `program`, or fail under CI=true (bash .ci/tools.sh installs it there)."""
    if not have(program):
        message = f"{program} is not installed (apt-get install {package}; CI: bash .ci/tools.sh)"
        if ci():
            pytest.fail(message)
        pytest.skip(message)


def summary_of(stdout: str) -> dict[str, Any]:
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("SUMMARY "), "last line is not a SUMMARY"
    data = json.loads(lines[-1][len("SUMMARY "):])
    assert isinstance(data, dict)
    return data


def bench(name: str, *args: str, summary: str | None = None) -> dict[str, Any]:
    """Run `python -m bench.NAME --smoke ARGS` from the repository root; its parsed SUMMARY (named `summary`,
    by default NAME: a mode of a bench may report under its own name)."""
    argv = [sys.executable, "-m", f"bench.{name}", "--smoke", *args]
    res = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT,
                         stdin=subprocess.DEVNULL)
    context = f"{' '.join(argv[1:])} exited {res.returncode}\n--- stdout\n{res.stdout[-3000:]}\n" \
              f"--- stderr\n{res.stderr[-3000:]}"
    assert res.returncode == 0, context
    try:
        data = summary_of(res.stdout)
    except (AssertionError, ValueError) as exc:
        raise AssertionError(f"{exc}\n{context}") from None
    assert data["bench"] == (summary or name), context
    return data


def test_herd() -> None:
    s = bench("herd")
    assert s["starts"] == [1] and s["errors"] == 0, s


def test_autoscale() -> None:
    s = bench("autoscale")
    assert s["errors_auto"] == 0 and s["peak_ready_auto"] > 1 and s["back_to_1_s_auto"] is not None, s


def test_prewarm() -> None:
    s = bench("prewarm")
    assert s["prewarms_adaptive"] > 0 and s["waited_adaptive"] < s["waited_none"], s


def test_keys() -> None:
    s = bench("keys")
    assert s["sizes"]["2000"]["get_ns"] > 0, s


def test_cold_start_stub() -> None:
    s = bench("cold_start", "--runtime", "stub")
    rows = [(r["runtime"], r["path"], r.get("readiness"), "error" in r) for r in s["results"]]
    assert rows == [("stub", "create", "tcp", False), ("stub", "create", "http", False)], s  # one proxy per kind
    assert [line.split(":")[0] for line in s["readiness_ratios"]] == ["ratio stub create @5ms"], s


@pytest.mark.docker
def test_cold_start_pause_docker() -> None:
    """Wake from pause next to restart and create, through the proxy, on dockerd."""
    s = bench("cold_start", "--pause", "--runtime", "docker", summary="cold_start_pause")
    paths = {r["path"]: r for r in s["results"]}
    assert set(paths) == {"wake", "wake floor", "restart", "create"}, s
    assert all("error" not in r and r["median_ms"] > 0 for r in s["results"]), s


@pytest.mark.swarm
def test_cold_start_swarm() -> None:
    """The swarm cold start against its floor (the raw API), both paths, on the single-node swarm (~15-30 s)."""
    from tests.support import engines

    asyncio.run(engines.ensure_image("swarm"))  # the bench starts what the local registry serves: push it there
    s = bench("cold_start", "--runtime", "swarm")
    rows = [(r["runtime"], r["path"]) for r in s["results"]]
    assert rows == [("swarm", "create"), ("swarm", "restart")], s
    assert all("error" not in r and r["floor_p50_ms"] > 0 and r["proxy_p50_ms"] > 0 for r in s["results"]), s


def test_warm_restart_stub() -> None:
    s = bench("warm_restart", "--runtime", "stub")
    assert s["errors"] == {} and s["results"]["stub"]["start"]["n"] == 3, s


@pytest.mark.slow
def test_check_deploy() -> None:
    assert bench("check_deploy")["problems"] == []


@pytest.mark.slow
def test_soak() -> None:
    s = bench("soak")
    assert s["ok"] > 0 and s["failed"] == 0 and s["stuck_in_flight"] == [], s


@pytest.mark.slow
def test_overhead() -> None:
    need("wrk", "wrk")
    if not have("nginx") and ci():
        need("nginx", "nginx-light")
    variants = "nginx,lazy-proxy" if have("nginx") else "lazy-proxy"  # locally: without nginx, lazy-proxy alone
    s = bench("overhead", "--variants", variants)
    closed = s["closed_loop"]
    assert set(closed) == {"direct", *variants.split(",")}, s
    for name, run in closed.items():
        assert run["rps"] > 0 and run["errors"] == 0, (name, run)
    if "nginx" in closed:  # issue 27's check: lazy-proxy's per-round ratio to nginx, paired as the ratio to direct
        assert closed["lazy-proxy"]["rps_vs_nginx"] > 0 and closed["nginx"]["rps_vs_nginx"] == 1.0, closed
        assert s["goals"]["lazy-proxy_throughput_vs_nginx"]["value"] == closed["lazy-proxy"]["rps_vs_nginx"], s


@pytest.mark.slow
def test_overhead_closing_upstream() -> None:
    need("wrk", "wrk")
    need("busybox", "busybox-static")
    s = bench("overhead", "--variants", "lazy-proxy", "--upstream", "busybox")
    assert s["upstream"] == "busybox" and not s["half_load"].get("lazy-proxy"), s  # (no open loop: it closes)
    run = s["closed_loop"]["lazy-proxy"]
    assert run["rps"] > 0 and run["errors"] == 0, run


def test_overhead_floor() -> None:
    """The floor variants (bench/floor.py, issue 27's yardstick) run next to the static upstream."""
    need("wrk", "wrk")
    need("nginx", "nginx-light")
    s = bench("overhead", "--variants", "floor,floor-2w", "--upstream", "static", "--closed-only")
    for name in ("floor", "floor-2w"):
        run = s["closed_loop"][name]
        assert run["rps"] > 0 and run["errors"] == 0 and run["proxy_cpu_us_per_req"] > 0, (name, run)


async def test_the_floor_sends_what_lazy_proxy_sends_and_relays_the_answer(tmp_path: Path) -> None:
    """The floor's claim to be comparable: the instance gets Host, X-Forwarded-* and a made X-Request-Id; the client
    gets the answer without its Connection line; one JSON access line with lazy-proxy's fields."""
    got: list[bytes] = []
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\nX-A: b\r\n\r\nok"

    async def instance(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while head := await reader.readuntil(b"\r\n\r\n"):
            got.append(head)
            writer.write(answer)

    server = await asyncio.start_server(instance, "127.0.0.1", 0)
    up_port = server.sockets[0].getsockname()[1]
    log = tmp_path / "floor.log"
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.floor", "--port", str(port), "--upstream-port", str(up_port), "--log", str(log),
        cwd=ROOT)
    try:
        for _ in range(100):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                break
            except OSError:
                await asyncio.sleep(0.1)
        for _ in range(2):  # two requests on one client connection
            writer.write(b"GET /api/x?q=1 HTTP/1.1\r\nHost: front:8\r\nX-Forwarded-For: 9.9.9.9\r\nA: 1\r\n\r\n")
            relayed = await reader.readexactly(len(answer) - len(b"Connection: keep-alive\r\n"))
            assert relayed == answer.replace(b"Connection: keep-alive\r\n", b"")
        writer.close()
    finally:
        proc.terminate()
        await proc.wait()
        server.close()
    head = got[0].decode()
    assert head.startswith(f"GET /api/x?q=1 HTTP/1.1\r\nHost: 127.0.0.1:{up_port}\r\nA: 1\r\n"), head
    assert "X-Forwarded-For: 9.9.9.9, 127.0.0.1\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: front:8\r\n" in head
    assert len(got) == 2 and head.split("X-Request-Id: ")[1][:32] != got[1].decode().split("X-Request-Id: ")[1][:32]
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(x["method"], x["path"], x["status"], x["bytes"]) for x in lines] == [("GET", "/api/x", 200, 2)] * 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_fastpath_cpu() -> None:
    s = bench("fastpath_cpu")
    assert s["us_per_request"] > 0 and s["bytes_to_client"] > 0, s


def test_inference() -> None:
    need("wrk", "wrk")
    s = bench("inference")
    if s.get("skipped") == "1 core":
        pytest.skip("inference needs 2 cores")
    assert s["micro_batching_preds_per_s"] > 0 and s["v2_batched_preds_per_s"] > 0, s


def test_run_all_runs_the_modules() -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    res = subprocess.run(["bash", str(ROOT / "bench" / "run_all"), "--smoke", "keys", "warm_restart"], cwd="/",
                         env=env, capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    benches = [json.loads(line[len("SUMMARY "):])["bench"] for line in res.stdout.splitlines()
               if line.startswith("SUMMARY ")]
    assert benches == ["keys", "warm_restart"], res.stdout[-3000:]


@pytest.mark.docker
def test_faults() -> None:
    """A stopped and a frozen container under traffic, on dockerd: nothing orphaned, the stop costs no request
    sent after it, the frozen instance is replaced."""
    rounds = {r["fault"]: r for r in bench("faults")["rounds"]}
    assert set(rounds) == {"stop", "freeze"} and all(r["orphans"] == 0 for r in rounds.values())
    assert rounds["stop"]["errors_sent_after_fault"] == 0 and rounds["stop"]["by_status"]["200"] > 0
    assert rounds["freeze"]["by_status"]["200"] > 0 and set(rounds["freeze"]["by_status"]) <= {"200", "504"}


def test_protocols_tls() -> None:
    """TLS handshakes and HTTPS requests through lazy-proxy and nginx, each terminating TLS itself."""
    need("nginx", "nginx-light")
    need("h2load", "nghttp2-client")
    need("openssl", "openssl")
    s = bench("protocols")
    for kind in ("handshakes", "https"):
        assert all(v["rate"] > 0 and v["cpu_us"] > 0 for v in s["results"][kind].values()), s


@pytest.mark.slow
def test_scale() -> None:
    need("wrk", "wrk")
    need("nginx", "nginx-light")
    need("busybox", "busybox-static")
    (s,) = bench("scale")["rounds"]
    assert s["n"] == 20 and s["starts_per_s"] > 0 and s["rss_kib_per_key"] > 0, s
    for name in ("closing", "closing_nginx", "keepalive", "keepalive_nginx"):
        assert s[name]["rps"] > 0 and s[name]["errors"] == 0, (name, s)


def test_rollout() -> None:
    runs = {r["strategy"]: r for r in bench("rollout")["runs"]}
    assert set(runs) == {"surge", "replace"}
    assert all(r["rolled_seconds"] is not None and r["failed"] == 0 for r in runs.values()), runs
    assert runs["surge"]["extra_at_peak"] <= 1 and runs["replace"]["extra_at_peak"] == 0
