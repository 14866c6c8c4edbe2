"""HTTP/2 and gRPC through lazy-proxy side by side with nginx: the HTTP/2 half of the protocol benchmarks
(bench/protocols.py has the TLS half).

    python -m bench.protocols_h2 [--quick | --smoke] [--rounds N] [--seconds S]

Method
- Proxies pinned to core 0 (nginx: one worker; lazy-proxy: bench.lib.launcher --upstream, uvloop, one JSON
  access line per request to a file, as nginx writes its access log), upstreams and load generators on core 1.
- h2: many concurrent streams. `h2load -c 4 -m 32` (4 connections, 32 streams each) for S seconds, h2c with
  prior knowledge, against nginx (`listen ... http2`, proxy_pass with keepalive) and lazy-proxy (h2c on its
  plain port), both in front of the same model service over HTTP/1.1 (GET /api/health).
- grpc: unary calls. A grpcio asyncio client keeps 32 calls in flight on one channel for S seconds against
  nginx (`grpc_pass`) and lazy-proxy (class `protocol: grpc`: one pooled HTTP/2 connection to the instance),
  both in front of the same grpcio server (bench/lib/grpc_upstream.py, a 64-byte echo).
- Per variant: requests/s and the proxy's CPU microseconds per request (utime+stime of its process tree over
  the run, divided by the requests completed). Rounds are interleaved (the order rotates); medians reported.

Goals (issue 26), against nginx measured in the same run: lazy-proxy throughput >= 0.25 x nginx's and CPU per
request <= 5 x nginx's (a Python proxy against C; recorded to show the gap, not to hide it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Iterator

from bench.lib.common import (PY, ROOT, env_with_root, free_port, goal, h2load, median, model_service, pinned, proxy,
                              rate_and_cpu, summary, table)
from bench.lib.nginx import FORWARDED, GRPC_LOCATION, nginx_front, proxy_location

PROXY_CORE, LOAD_CORE = "0", "1"
PATH = "/api/health"
GRPC_METHOD = "/bench.Echo/Echo"
THROUGHPUT_FACTOR, CPU_FACTOR = 0.25, 5.0


@dataclass(frozen=True)
class Mode:
    rounds: int
    seconds: float


FULL, QUICK, SMOKE = Mode(5, 10.0), Mode(3, 4.0), Mode(1, 1.0)

H2_LOCATION = proxy_location(*FORWARDED)


# nginx ends a client connection after 1000 requests (keepalive_requests, HTTP/2 too), and h2load does not
# reconnect: its 4 connections stopped after 4000 requests, ~1 s of a 4 s round.
CLIENT_KEEPALIVE = "        keepalive_requests 1000000;\n"


def nginx(upstream_port: int, workdir: Path, locations: str) -> ContextManager[tuple[int, int]]:
    """nginx with one worker: HTTP/2 (h2c) on the returned port; (port, pid)."""
    return nginx_front(upstream_port, workdir, listen="http2", locations=locations, server=CLIENT_KEEPALIVE,
                       cpus=PROXY_CORE)


@contextlib.contextmanager
def lazy(upstream_port: int, workdir: Path, protocol: str) -> Iterator[tuple[int, int]]:
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    route = ({"path": "/api/{tail:.*}", "container": "svc", "key": "shared"} if protocol == "http1" else
             {"path": "/bench.Echo/{method}", "container": "svc", "key": "shared"})
    config = {"containers": {"svc": {"sleep_after": 0, "protocol": protocol}}, "routes": [route]}
    with proxy(config, port, upstream=f"http://127.0.0.1:{upstream_port}", cpus=PROXY_CORE,
               log=str(workdir / "lazy.log")) as server:
        yield port, server.pid


# ---------------------------------------------------------------- load generators


def h2(port: int, seconds: float) -> int:
    """Requests answered 2xx by `h2load -c 4 -m 32` over `seconds` (h2c, prior knowledge)."""
    return h2load(f"http://127.0.0.1:{port}{PATH}", seconds, "-c", "4", "-m", "32", cpus=LOAD_CORE)


def grpc_calls(port: int, seconds: float, concurrency: int = 32) -> int:
    """Unary calls completed OK in `seconds` with `concurrency` in flight on one grpcio channel."""
    import grpc
    import grpc.aio

    async def run() -> int:
        done = 0
        payload = b"x" * 64
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary(GRPC_METHOD)
            await call(payload, timeout=30)  # connected and warm
            deadline = time.monotonic() + seconds

            async def worker() -> None:
                nonlocal done
                while time.monotonic() < deadline:
                    await call(payload, timeout=30)
                    done += 1

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done

    with pinned({int(LOAD_CORE)}):
        return asyncio.run(run())


def measure(pid: int, load: Callable[[], int]) -> dict[str, float]:
    rps, cpu_us = rate_and_cpu(pid, load)
    return {"rps": rps, "cpu_us": cpu_us}


# ---------------------------------------------------------------- the two benchmarks


def bench_h2(mode: Mode, work: Path) -> dict[str, dict[str, float]]:
    upstream_port = free_port()
    results: dict[str, list[dict[str, float]]] = {"nginx": [], "lazy-proxy": []}
    with model_service(upstream_port, cpus=LOAD_CORE) as _up, \
            nginx(upstream_port, work / "h2-nginx", H2_LOCATION) as (nport, npid), \
            lazy(upstream_port, work / "h2-lazy", "http1") as (lport, lpid):
        targets = {"nginx": (nport, npid), "lazy-proxy": (lport, lpid)}
        for port, _ in targets.values():
            h2(port, 1)  # warm: connections, the key's start
        for r in range(mode.rounds):
            for name in sorted(targets, reverse=bool(r % 2)):
                port, pid = targets[name]
                results[name].append(measure(pid, lambda p=port: h2(p, mode.seconds)))
    return {name: {k: median([x[k] for x in runs]) for k in ("rps", "cpu_us")} for name, runs in results.items()}


def bench_grpc(mode: Mode, work: Path) -> dict[str, dict[str, float]]:
    upstream_port = free_port()
    results: dict[str, list[dict[str, float]]] = {"nginx": [], "lazy-proxy": []}
    up = subprocess.Popen(["taskset", "-c", LOAD_CORE, PY, "-m", "bench.lib.grpc_upstream", str(upstream_port)],
                          cwd=str(ROOT), env=env_with_root(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
    try:
        _wait_port(upstream_port)
        with nginx(upstream_port, work / "grpc-nginx", GRPC_LOCATION) as (nport, npid), \
                lazy(upstream_port, work / "grpc-lazy", "grpc") as (lport, lpid):
            targets = {"nginx": (nport, npid), "lazy-proxy": (lport, lpid)}
            for port, _ in targets.values():
                grpc_calls(port, 0.5)
            for r in range(mode.rounds):
                for name in sorted(targets, reverse=bool(r % 2)):
                    port, pid = targets[name]
                    results[name].append(measure(pid, lambda p=port: grpc_calls(p, mode.seconds)))
    finally:
        up.terminate()
        up.wait(10)
    return {name: {k: median([x[k] for x in runs]) for k in ("rps", "cpu_us")} for name, runs in results.items()}


def _wait_port(port: int, timeout: float = 20.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"the gRPC upstream did not listen on {port}")


def report(kind: str, res: dict[str, dict[str, float]]) -> None:
    lazy_r, nginx_r = res["lazy-proxy"], res["nginx"]
    ratio = lazy_r["rps"] / nginx_r["rps"] if nginx_r["rps"] else float("nan")
    cpu = lazy_r["cpu_us"] / nginx_r["cpu_us"] if nginx_r["cpu_us"] else float("nan")
    table(["variant", "req/s", "CPU us/req"], [[n, round(v["rps"]), round(v["cpu_us"], 1)] for n, v in res.items()],
          title=f"{kind}: lazy-proxy vs nginx")
    print(goal(f"{kind}: throughput {ratio:.2f} x nginx (>= {THROUGHPUT_FACTOR})", ratio >= THROUGHPUT_FACTOR))
    print(goal(f"{kind}: CPU/request {cpu:.2f} x nginx (<= {CPU_FACTOR})", cpu <= CPU_FACTOR))
    summary(f"protocols_{kind}", {"results": res, "throughput_ratio": ratio, "cpu_ratio": cpu})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--seconds", type=float)
    ap.add_argument("--only", choices=["h2", "grpc"])
    args = ap.parse_args()
    mode = SMOKE if args.smoke else QUICK if args.quick else FULL
    mode = Mode(args.rounds or mode.rounds, args.seconds or mode.seconds)
    with tempfile.TemporaryDirectory(prefix="bench-h2-") as tmp:
        if args.only in (None, "h2"):
            report("h2", bench_h2(mode, Path(tmp)))
        if args.only in (None, "grpc"):
            report("grpc", bench_grpc(mode, Path(tmp)))


if __name__ == "__main__":
    main()
