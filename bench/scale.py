"""Many running instances (issue 28): what N running keys cost the proxy, per size N.

    python -m bench.scale [--sizes 100,1000,5000] [--seconds 5] [--docker N] [--smoke]

Per size, a fresh `python -m proxy` on the process backend, each key a `busybox httpd` child (a real, tiny,
non-Python server that answers and closes every connection), then:
  - starts: N cold keys, 50 at a time (GET /k/<key>/ each): starts per second, proxy CPU per start;
  - RSS per running key: the proxy's VmRSS after the starts minus before, over N (children not counted);
  - status and /metrics latency: GET /container-status (the first page, each running key on it probed live),
    ?limit=5000, /metrics, 3 times each (median ms);
  - the worst event-loop lag: from `proxy_event_loop_lag_seconds` (the smallest bucket bound holding every tick
    observed during the status/metrics phase, during 3 s of nothing (the host's noise floor: wall-clock lag
    includes the time the OS ran other processes), and during the whole run);
  - proxy CPU per request with wrk: over random keys of the N (closing upstream), and to a keep-alive upstream
    (one key running the model service), each side by side with nginx (bench/lib/nginx.py) in front of one of
    the same upstreams, in the same run.
`--docker N`: the same on docker (one size, N containers of a FROM-scratch busybox image built here).
`--smoke`: N=20, 1 s of wrk, for CI.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.lib.common import (SEED_ENDPOINTS, Server, cpu_seconds, free_port, median, metrics_samples, module,
                           process_tree, summary, table, tool, wrk)
from backends.base import LABEL_PROXY_ID
from bench.lib.nginx import nginx

CONCURRENCY = 50  # cold starts at once
IMAGE = "lazy-proxy-scale/busybox:bench"  # --docker: built here from the busybox binary


def busybox() -> str:
    found = shutil.which("busybox") or "/bin/busybox"
    if not Path(found).exists():
        raise SystemExit("bench.scale: busybox is not installed (busybox-static, .ci/tools.sh)")
    return found


def config(n: int, www: Path, backend: str) -> dict[str, Any]:
    if backend == "process":  # `$$`: a literal `$` in the config file (proxy/config/interpolate.py)
        web: dict[str, Any] = {"image": "busybox", "entrypoint": ["/bin/sh", "-c"],
                               "command": [f"exec {busybox()} httpd -f -p 127.0.0.1:$$PORT -h {www}"]}
    else:
        web = {"image": IMAGE, "port": 8080}
    web.update({"sleep_after": "1h", "max_instances": n + 10, "start_timeout": "120s"})
    return {
        "backend": {"type": backend, **({"proxy_id": f"scale{os.getpid()}"} if backend != "process" else {})},
        "logging": {"level": "info", "requests": True},  # a request line each, as nginx's access log
        "errors": {"detail": "full"},  # a failed start's own reason in its 503 (the bench prints the first ones)
        "admin": SEED_ENDPOINTS,
        "containers": {"web": web, **({"ka": {"image": "model_service", "sleep_after": "1h"}}
                                      if backend == "process" else {})},
        "routes": [{"path": "/k/{id}/{tail:.*}", "container": "web", "key": "{id}", "upstream_path": "/{tail}"},
                   *([{"path": "/ka/{tail:.*}", "container": "ka", "key": "ka", "upstream_path": "/{tail}"}]
                     if backend == "process" else [])],
    }


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def lag_buckets(text: str) -> tuple[dict[float, float], float]:
    """The loop-lag histogram's cumulative buckets and its count."""
    samples = metrics_samples(text)
    buckets = {float(dict(labels)["le"]): value for (name, labels), value in samples.items()
               if name == "proxy_event_loop_lag_seconds_bucket"}
    return buckets, samples.get(("proxy_event_loop_lag_seconds_count", ()), 0.0)


def worst_lag(before: tuple[dict[float, float], float], after: tuple[dict[float, float], float]) -> float:
    """The smallest bucket bound that holds every tick observed between the two scrapes (seconds)."""
    (b0, c0), (b1, c1) = before, after
    ticks = c1 - c0
    for bound in sorted(b1):
        if b1[bound] - b0.get(bound, 0.0) >= ticks:
            return bound
    return float("inf")


async def cold_starts(base: str, n: int) -> float:
    """Start keys k0..k<n-1>, CONCURRENCY at a time; the seconds it took (every start must answer 200)."""
    gate = asyncio.Semaphore(CONCURRENCY)
    failed: list[str] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        async def one(i: int) -> None:
            async with gate, session.get(f"{base}/k/k{i}/") as resp:
                body = await resp.read()
                if resp.status != 200:
                    failed.append(f"k{i}: {resp.status} {body[:300].decode(errors='replace')}")
        began = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        elapsed = time.perf_counter() - began
    if failed:
        raise SystemExit(f"bench.scale: {len(failed)} of {n} starts failed: {failed[:3]}")
    return elapsed


async def timed(session: aiohttp.ClientSession, url: str, times: int = 3) -> tuple[float, int]:
    """Median ms of `times` GETs and the body's size."""
    took, size = [], 0
    for _ in range(times):
        began = time.perf_counter()
        async with session.get(url) as resp:
            size = len(await resp.read())
            assert resp.status == 200, (url, resp.status)
        took.append((time.perf_counter() - began) * 1000)
    return median(took), size


def random_keys_script(n: int, workdir: Path) -> str:
    path = workdir / "random_keys.lua"
    path.write_text(f'math.randomseed(os.time())\nrequest = function()\n  return wrk.format("GET", "/k/k" .. '
                    f'math.random(0, {n - 1}) .. "/")\nend\n')
    return str(path)


def cpu_per_request(pids: list[int], url: str, seconds: float, script: str | None = None) -> dict[str, float]:
    """wrk against `url`; CPU µs per request of the processes `pids` (and their children: nginx's workers)."""
    tree = [p for pid in pids for p in process_tree(pid)]
    before = cpu_seconds(tree)
    result = wrk(url, seconds=seconds, script=script)
    spent = cpu_seconds(tree) - before
    requests = result.get("requests", 0.0)
    return {"rps": result["rps"], "cpu_us": spent / requests * 1e6 if requests else float("nan"),
            "errors": result["errors"] + result["non2xx"]}


def child_port(status: dict[str, Any]) -> int:
    address = status["keys"][0]["address"]
    return int(re.search(r":(\d+)$", address.rstrip("/")).group(1))  # type: ignore[union-attr]


async def one_size(n: int, seconds: float, backend: str, workdir: Path) -> dict[str, Any]:
    www = workdir / "www"
    www.mkdir(exist_ok=True)
    (www / "index.html").write_text("hello from busybox httpd\n")
    port = free_port()
    path = workdir / f"proxy-{backend}-{n}.json"
    path.write_text(json.dumps(config(n, www, backend)))
    base = f"http://127.0.0.1:{port}"
    out: dict[str, Any] = {"backend": backend, "n": n}
    with Server(module("proxy", "--config", str(path), "--port", str(port)), f"{base}/health",
                log=str(workdir / f"proxy-{backend}-{n}.log")) as proxy:
        pid = proxy.pid
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
            await timed(session, f"{base}/health", 1)
            rss0, cpu0 = rss_kib(pid), cpu_seconds([pid])
            elapsed = await cold_starts(base, n)
            out["starts_per_s"] = n / elapsed
            out["start_cpu_ms"] = (cpu_seconds([pid]) - cpu0) / n * 1000
            await asyncio.sleep(1)
            out["rss_kib_per_key"] = (rss_kib(pid) - rss0) / n
            out["rss_mib"] = rss_kib(pid) / 1024
            idle = lag_buckets(await (await session.get(f"{base}/metrics")).text())
            await asyncio.sleep(3)  # the noise floor: the same reading over 3 s of nothing but the running keys
            lag0 = lag_buckets(await (await session.get(f"{base}/metrics")).text())
            out["lag_idle_ms"] = worst_lag(idle, lag0) * 1000
            out["status_ms"], out["status_kb"] = await timed(session, f"{base}/container-status")
            out["status_all_ms"], out["status_all_kb"] = await timed(session, f"{base}/container-status?limit=5000")
            out["metrics_ms"], out["metrics_kb"] = await timed(session, f"{base}/metrics")
            out["status_kb"], out["status_all_kb"], out["metrics_kb"] = (
                out["status_kb"] / 1024, out["status_all_kb"] / 1024, out["metrics_kb"] / 1024)
            text = await (await session.get(f"{base}/metrics")).text()
            out["lag_status_ms"] = worst_lag(lag0, lag_buckets(text)) * 1000
            out["lag_run_ms"] = worst_lag(({}, 0.0), lag_buckets(text)) * 1000
            first = await (await session.get(f"{base}/container-status?limit=1&state=running")).json()
            closing_port = child_port(first)
            ka_port = None
            if backend == "process":
                await timed(session, f"{base}/ka/v2/health/ready", 1)
                ka_port = child_port(await (await session.get(f"{base}/container-status?class=ka")).json())
        script = random_keys_script(n, workdir)
        out["closing"] = cpu_per_request([pid], base + "/", seconds, script)
        with nginx(closing_port, free_port(), workdir / f"nginx-closing-{n}") as server:
            out["closing_nginx"] = cpu_per_request([server.pid], server.ready_url, seconds)
        if ka_port is not None:
            out["keepalive"] = cpu_per_request([pid], f"{base}/ka/v2/health/ready", seconds)
            with nginx(ka_port, free_port(), workdir / f"nginx-ka-{n}", ready_path="/v2/health/ready") as server:
                out["keepalive_nginx"] = cpu_per_request([server.pid], server.ready_url, seconds)
    return out


def docker_image(workdir: Path) -> None:
    context = workdir / "image"
    (context / "www").mkdir(parents=True, exist_ok=True)
    shutil.copy(busybox(), context / "busybox")
    (context / "www" / "index.html").write_text("hello from busybox httpd\n")
    (context / "Dockerfile").write_text('FROM scratch\nCOPY busybox /busybox\nCOPY www /www\nEXPOSE 8080\n'
                                        'CMD ["/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]\n')
    subprocess.run(["docker", "build", "-q", "-t", IMAGE, str(context)], check=True, capture_output=True)


def remove_containers(proxy_id: str) -> None:
    listed = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={LABEL_PROXY_ID}={proxy_id}"],
                            capture_output=True, text=True).stdout.split()
    if listed:
        subprocess.run(["docker", "rm", "-f", *listed], capture_output=True)


def report(results: list[dict[str, Any]]) -> None:
    def cpu(r: dict[str, Any], name: str) -> str:
        m = r.get(name)
        return "-" if m is None else f"{m['cpu_us']:.0f} µs ({m['rps']:.0f}/s)"

    rows = []
    for r in results:
        rows.append([f"{r['backend']} {r['n']}", f"{r['starts_per_s']:.0f}", f"{r['start_cpu_ms']:.2f}",
                     f"{r['rss_kib_per_key']:.1f}", f"{r['status_ms']:.0f} ({r['status_kb']:.0f} KB)",
                     f"{r['status_all_ms']:.0f} ({r['status_all_kb']:.0f} KB)",
                     f"{r['metrics_ms']:.0f} ({r['metrics_kb']:.0f} KB)",
                     f"≤{r['lag_status_ms']:g} / ≤{r['lag_idle_ms']:g} / ≤{r['lag_run_ms']:g}",
                     cpu(r, "closing"), cpu(r, "closing_nginx"), cpu(r, "keepalive"), cpu(r, "keepalive_nginx")])
    table(["running keys", "starts/s", "CPU ms/start", "RSS KiB/key", "status ms", "status ?limit=5000 ms",
           "/metrics ms", "worst lag ms (status / idle / run)", "closing: proxy CPU/req", "nginx", "keep-alive: proxy",
           "nginx"], rows, title="bench.scale")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="100,1000,5000", help="running keys per round (process backend)")
    p.add_argument("--seconds", type=float, default=5.0, help="wrk seconds per measurement")
    p.add_argument("--docker", type=int, default=0, help="also N keys on docker (0: not)")
    p.add_argument("--smoke", action="store_true", help="N=20, 1 s of wrk (CI)")
    args = p.parse_args()
    if tool("wrk") is None or tool("nginx") is None and not Path("/usr/sbin/nginx").exists():
        raise SystemExit("bench.scale needs wrk and nginx")
    sizes = [20] if args.smoke else [int(s) for s in args.sizes.split(",") if s]
    seconds = 1.0 if args.smoke else args.seconds
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        workdir = Path(tmp)
        for n in sizes:
            results.append(asyncio.run(one_size(n, seconds, "process", workdir)))
            print(json.dumps(results[-1]), flush=True)
        if args.docker:
            docker_image(workdir)
            try:
                results.append(asyncio.run(one_size(args.docker, seconds, "docker", workdir)))
                print(json.dumps(results[-1]), flush=True)
            finally:  # the proxy stopped its containers; what it leaves (stopped) goes too
                remove_containers(f"scale{os.getpid()}")
    report(results)
    summary("scale", {"rounds": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
