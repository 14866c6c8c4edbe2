"""Proxy overhead: the same small-JSON upstream (model service GET /api/health) direct vs through the proxy.

    python bench/overhead.py [--quick]

Setup A (the fair one, reported as the headline): the model service runs as its own process
(`python -m model_service`); the proxy runs as another process (bench/_proxy_launcher.py) with a tiny
backend that points every key at that process. "direct" = wrk against the model service, "proxied" =
wrk against the proxy; same upstream process, same wrk settings, runs alternate direct/proxied.
Variants: the proxy on the default asyncio loop vs uvloop (proxy/__main__.py installs uvloop when
importable), and with per-request info logging (the default) vs logging.level=warning.

Setup B (for reference): the stub backend, where the model service runs INSIDE the proxy's process
and event loop; "direct" hits the stub instance's address read from GET /container-status. This
overstates the overhead (the proxy and the upstream compete for one loop) and is printed separately.

Half load: an open-loop, rate-limited aiohttp generator (bench/_openloop.py, its own process) at 50% of
the proxied max throughput, against direct and proxied at the same rate; added p99 = proxied - direct.
Goals: throughput ratio proxied/direct >= 0.75; added p99 <= 1 ms at half load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (PY, BENCH, free_port, goal, has_wrk, http_json, median, model_service, proxy,  # noqa: E402
                     summary, table, wrk)

CONNS, THREADS = 32, 2


def proxy_config(log_level: str = "info", backend: str = "stub") -> dict:
    return {
        "logging": {"level": log_level},
        "backend": {"type": backend},
        "containers": {"svc": {"image": "lazy-proxy/model-service:latest", "sleep_after": 0,
                               "readiness": {"path": "/v2/health/ready"}}},
        "routes": [{"path": "/api/{tail:.*}", "container": "svc", "key": "shared"}],
    }


def load(url: str, seconds: float) -> dict[str, float]:
    if has_wrk():
        return wrk(url, threads=THREADS, conns=CONNS, seconds=seconds)
    # Fallback: the open-loop generator at a very high rate behaves as a closed loop of CONNS connections.
    out = openloop(url, rate=50_000, seconds=seconds)
    return {"rps": out["achieved_rps"], "p50": out["p50"], "p99": out["p99"], "errors": out["errors"], "non2xx": 0}


def openloop(url: str, rate: float, seconds: float) -> dict[str, float]:
    res = subprocess.run([PY, str(BENCH / "_openloop.py"), url, "--rate", f"{rate:.0f}", "--seconds", str(seconds),
                          "--conns", "64"], capture_output=True, text=True, timeout=seconds * 4 + 60)
    return json.loads(res.stdout.strip().splitlines()[-1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def alternate(direct_url: str, proxied_url: str, runs: int, seconds: float,
              pids: dict[str, int] | None = None) -> dict[str, list[dict[str, float]]]:
    """Alternate direct/proxied runs; with `pids` also record each process's CPU microseconds per request."""
    out: dict[str, list[dict[str, float]]] = {"direct": [], "proxied": []}
    for i in range(runs):
        order = ("direct", "proxied") if i % 2 == 0 else ("proxied", "direct")
        for which in order:
            before = {n: cpu_seconds(p) for n, p in (pids or {}).items()}
            r = load(direct_url if which == "direct" else proxied_url, seconds)
            for n, p in (pids or {}).items():
                r[f"cpu_us_per_req_{n}"] = (cpu_seconds(p) - before[n]) * 1e6 / max(1.0, r.get("requests", 0))
            out[which].append(r)
    return out


def med(runs: list[dict[str, float]], field: str) -> float:
    return median([r.get(field, float("nan")) for r in runs])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    runs = 3
    seconds = 2 if args.quick else 8
    half_seconds = 2 if args.quick else 5
    half_runs = 1 if args.quick else 3
    tool = "wrk" if has_wrk() else "aiohttp open-loop generator (wrk missing)"
    print(f"proxy overhead: GET /api/health, {tool} -t{THREADS} -c{CONNS}, {seconds}s per run, {runs} runs "
          f"each, alternating direct/proxied; medians shown")
    print("setup A: model service in its own process; proxy in another process pointed at it "
          "(bench/_proxy_launcher.py --upstream)")
    try:
        import uvloop  # noqa: F401
        have_uvloop = True
    except ImportError:
        have_uvloop = False
    variants = [("asyncio, log=info", False, "info")]
    if have_uvloop:
        variants += [("uvloop, log=info", True, "info"), ("uvloop, log=warning", True, "warning")]
    if args.quick:
        variants = variants[:2]

    rows, results = [], {}
    up_port = free_port()
    with model_service(up_port) as upstream:
        direct_url = f"http://127.0.0.1:{up_port}/api/health"
        for name, uv, level in variants:
            port = free_port()
            with proxy(proxy_config(level), port, uvloop=uv, upstream=f"http://127.0.0.1:{up_port}") as px:
                proxied_url = f"http://127.0.0.1:{port}/api/health"
                http_json(proxied_url)  # warm: the (external) instance is "started" and the pool is open
                load(proxied_url, 1)
                r = alternate(direct_url, proxied_url, runs, seconds, pids={"upstream": upstream.pid, "proxy": px.pid})
                half = None
                if level == "info":
                    rate = 0.5 * med(r["proxied"], "rps")
                    hd, hp = [], []
                    for i in range(half_runs):
                        pair = [("direct", direct_url), ("proxied", proxied_url)]
                        for which, url in (pair if i % 2 == 0 else pair[::-1]):
                            (hd if which == "direct" else hp).append(openloop(url, rate, half_seconds))
                    half = {"rate": rate, "direct": hd, "proxied": hp}
            d_rps, p_rps = med(r["direct"], "rps"), med(r["proxied"], "rps")
            res = {"direct_rps": d_rps, "proxied_rps": p_rps, "ratio": p_rps / d_rps,
                   "direct_p50_ms": med(r["direct"], "p50"), "proxied_p50_ms": med(r["proxied"], "p50"),
                   "direct_p99_ms": med(r["direct"], "p99"), "proxied_p99_ms": med(r["proxied"], "p99"),
                   "errors": sum(x["errors"] + x["non2xx"] for x in r["direct"] + r["proxied"]),
                   "cpu_us_per_req_upstream": med(r["direct"], "cpu_us_per_req_upstream"),
                   "cpu_us_per_req_proxy": med(r["proxied"], "cpu_us_per_req_proxy"),
                   "runs_rps_direct": [x["rps"] for x in r["direct"]],
                   "runs_rps_proxied": [x["rps"] for x in r["proxied"]]}
            res["added_p50_ms"] = res["proxied_p50_ms"] - res["direct_p50_ms"]
            res["added_p99_ms"] = res["proxied_p99_ms"] - res["direct_p99_ms"]
            if half:
                res["half_rate"] = half["rate"]
                for side in ("direct", "proxied"):
                    res[f"half_{side}_p50_ms"] = med(half[side], "p50")
                    res[f"half_{side}_p99_ms"] = med(half[side], "p99")
                    res[f"half_{side}_achieved_rps"] = med(half[side], "achieved_rps")
                    res["errors"] += sum(x["errors"] for x in half[side])
                res["half_added_p99_ms"] = res["half_proxied_p99_ms"] - res["half_direct_p99_ms"]
            results[name] = res
            rows.append([name, d_rps, p_rps, f"{res['ratio']:.2f}", res["direct_p50_ms"], res["proxied_p50_ms"],
                         res["added_p50_ms"], res["direct_p99_ms"], res["proxied_p99_ms"], res["added_p99_ms"],
                         res["cpu_us_per_req_upstream"], res["cpu_us_per_req_proxy"], int(res["errors"])])

    table(["variant (setup A)", "direct rps", "proxied rps", "ratio", "dir p50", "prx p50", "+p50 ms",
           "dir p99", "prx p99", "+p99 ms", "upstream CPU us/req", "proxy CPU us/req", "errors"], rows,
          title=f"closed loop, {CONNS} connections (latencies in ms, medians of {runs} runs)")
    hrows = [[n, r["half_rate"], r["half_direct_achieved_rps"], r["half_proxied_achieved_rps"], r["half_direct_p50_ms"],
              r["half_proxied_p50_ms"], r["half_direct_p99_ms"], r["half_proxied_p99_ms"], r["half_added_p99_ms"]]
             for n, r in results.items() if "half_rate" in r]
    table(["variant (setup A)", "target rps", "dir achieved", "prx achieved", "dir p50", "prx p50", "dir p99",
           "prx p99", "+p99 ms"], hrows,
          title=f"half load: open loop at 50% of the proxied max, {half_seconds}s x {half_runs} runs (ms, medians)")

    # Setup B: stub backend, upstream inside the proxy's process.
    port = free_port()
    with proxy(proxy_config("info"), port, uvloop=have_uvloop):
        proxied_url = f"http://127.0.0.1:{port}/api/health"
        http_json(proxied_url)
        addr = next(k["address"] for k in http_json(f"http://127.0.0.1:{port}/container-status")["keys"]
                    if k["key"] == "shared")
        stub_direct = f"{addr}/api/health"
        load(proxied_url, 1)
        rb = alternate(stub_direct, proxied_url, runs, seconds)
    b = {"direct_rps": med(rb["direct"], "rps"), "proxied_rps": med(rb["proxied"], "rps"),
         "direct_p50_ms": med(rb["direct"], "p50"), "proxied_p50_ms": med(rb["proxied"], "p50"),
         "direct_p99_ms": med(rb["direct"], "p99"), "proxied_p99_ms": med(rb["proxied"], "p99")}
    b["ratio"] = b["proxied_rps"] / b["direct_rps"]
    table(["setup B (stub in-process)", "direct rps", "proxied rps", "ratio", "dir p50", "prx p50", "dir p99", "prx p99"],
          [["uvloop" if have_uvloop else "asyncio", b["direct_rps"], b["proxied_rps"], f"{b['ratio']:.2f}",
            b["direct_p50_ms"], b["proxied_p50_ms"], b["direct_p99_ms"], b["proxied_p99_ms"]]],
          title="reference: stub backend (upstream shares the proxy's process and loop)")

    head_name = "uvloop, log=info" if have_uvloop else "asyncio, log=info"
    head = results[head_name]
    print(f"\nheadline ({head_name}, what `python -m proxy` runs with uvloop installed):")
    print("  " + goal(f"throughput ratio proxied/direct = {head['ratio']:.2f} (goal >= 0.75)", head["ratio"] >= 0.75))
    print("  " + goal(f"added p99 at half load = {head['half_added_p99_ms']:.2f} ms (goal <= 1 ms)",
                      head["half_added_p99_ms"] <= 1.0))
    print(f"  CPU per request: upstream {head['cpu_us_per_req_upstream']:.0f} us (direct runs), proxy process "
          f"{head['cpu_us_per_req_proxy']:.0f} us (proxied runs): the proxied path is bound by the proxy's CPU")
    if have_uvloop:
        a, u = results["asyncio, log=info"], results["uvloop, log=info"]
        print(f"  uvloop vs asyncio (proxied rps): {u['proxied_rps']:.0f} vs {a['proxied_rps']:.0f} "
              f"({(u['proxied_rps'] / a['proxied_rps'] - 1) * 100:+.0f}%); half-load added p99 "
              f"{u['half_added_p99_ms']:.2f} vs {a['half_added_p99_ms']:.2f} ms")
        if "uvloop, log=warning" in results:
            w = results["uvloop, log=warning"]
            print(f"  per-request info logging costs: {w['proxied_rps']:.0f} rps at warning vs "
                  f"{u['proxied_rps']:.0f} rps at info")
    summary("overhead", {"quick": args.quick, "tool": tool, "setup_a": results, "setup_b_stub": b,
                         "goal_ratio_met": head["ratio"] >= 0.75,
                         "goal_added_p99_met": head["half_added_p99_ms"] <= 1.0})
    return 0


if __name__ == "__main__":
    sys.exit(main())
