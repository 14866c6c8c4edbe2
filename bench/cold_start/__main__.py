"""`python -m bench.cold_start`: the benchmark's command line, on top of its harness and variants.

The plain run (docker, podman, stub: bench/cold_start/harness.py) and the variants (swarm.py, boost.py,
pause.py) all stand on the harness; only this module knows them all, so the arrows run one way.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import uuid
from typing import Any

from bench.lib import common
from bench.cold_start import boost as cold_start_boost
from bench.cold_start import harness
from bench.cold_start import pause as cold_start_pause
from bench.cold_start import swarm as cold_start_swarm
from bench.cold_start.harness import (CPUS, GOAL_MS, MEMORY, READY_PATH, _diff_ci, _med, _ms, each_runtime,
                                      readiness_ratios)
from bench.cold_start.run import run_runtime


async def run_one(kind: str, args: argparse.Namespace, bench_id: str, logdir: str) -> dict[str, Any]:
    if kind == "swarm":  # one service per key: its own floor and proxy (bench/cold_start/swarm.py)
        return await cold_start_swarm.run_runtime(args, bench_id, logdir)
    return await run_runtime(kind, args, bench_id, logdir)


async def amain(args: argparse.Namespace) -> int:
    bench_id = "cs" + uuid.uuid4().hex[:8]
    logdir = os.path.join("/tmp", f"lazy-proxy-{bench_id}")
    os.makedirs(logdir, exist_ok=True)
    print(f"bench id {bench_id}; proxy logs in {logdir}")
    if args.boost:
        return await cold_start_boost.amain(args, bench_id, logdir)
    if args.pause:
        return await cold_start_pause.amain(args, bench_id, logdir)
    print(f"instance type for floor and proxy: custom {CPUS:g} CPU / {MEMORY // 2**20} MiB "
          f"(not 'dev' = 1/16 vCPU, so CPU throttling is not what is measured); "
          f"floor polls {READY_PATH} every {args.poll_ms:g} ms; {args.cycles} cycles, floor and proxy alternated")
    rows: list[list[Any]] = []
    breakdown: list[list[Any]] = []
    summary: dict[str, Any] = {"cycles": args.cycles, "smoke": args.smoke, "goal_ms": GOAL_MS, "results": []}
    async for kind, res in each_runtime(args.runtime, lambda k: run_one(k, args, bench_id, logdir),
                                        summary["results"]):
        s = res["samples"]
        for path in res["paths"]:
            floor = _med(s[("floor", path)])
            floor_started = _med(s[("floor-started", path)])
            for who in res["proxies"]:
                proxy = _med(s[(who, path)])
                server = _med(s.get((who + "-server", path), []))
                diff = proxy - floor
                met = diff <= GOAL_MS
                lo, hi = _diff_ci(s[("floor", path)], s[(who, path)])
                sure = hi <= GOAL_MS if met else lo > GOAL_MS
                rows.append([kind, path, who.split("@")[1], floor, proxy, diff, f"[{lo:.0f}, {hi:.0f}]",
                             ("yes" if met else "NO") + ("" if sure else " (within noise)")])
                breakdown.append([kind, path, who.split("@")[1], floor_started, floor, server, proxy - server])
                summary["results"].append({
                    "runtime": kind, "path": path, "readiness": who.split("@")[1].split("/")[0],
                    "readiness_interval_ms": float(who.split("/")[-1][:-2]),
                    "floor_p50_ms": round(floor, 1), "proxy_p50_ms": round(proxy, 1), "diff_ms": round(diff, 1),
                    "goal_met": met, "diff_ci95_ms": [round(lo, 1), round(hi, 1)], "goal_decided_by_ci": sure,
                    "floor_started_p50_ms": round(floor_started, 1),
                    "proxy_server_start_p50_ms": round(server, 1),
                    "floor_ms": [round(_ms(v), 1) for v in s[("floor", path)]],
                    "proxy_ms": [round(_ms(v), 1) for v in s[(who, path)]],
                })
        for k, v in res["extra"].items():
            if k == "paired":
                print(f"{kind} paired: container answers 200 -> proxy client gets 200 (median ms): "
                      + ", ".join(f"{n}={x:.1f}" for n, x in v.items()))
                summary.setdefault("paired_after_ready_ms", {})[kind] = {n: round(x, 1) for n, x in v.items()}
            elif k == "diagnosis":
                print(f"{kind} backend.start breakdown (in-process, median ms): "
                      + ", ".join(f"{n}={x:.1f}" for n, x in v.items()))
                summary.setdefault("diagnosis", {})[kind] = {n: round(x, 1) for n, x in v.items()}
            else:
                print(f"{kind} {k}: {v}")
    common.table(["runtime", "path", "readiness", "floor p50 ms", "proxy p50 ms", "diff ms", "diff 95% CI",
                  f"proxy <= floor + {GOAL_MS:g} ms"], rows,
                 title=f"Cold start to first 200 (median of {args.cycles})")
    common.table(["runtime", "path", "readiness", "floor: started+port", "floor: ready",
                  "proxy: server start->running", "proxy: client - server"], breakdown,
                 title="Where the time goes (median ms; server = proxy log's starting->running duration)")
    summary["readiness_ratios"] = readiness_ratios(summary["results"])
    for line in summary["readiness_ratios"]:
        print(line)
    summary["all_goals_met"] = all(r.get("goal_met", False) for r in summary["results"])
    common.summary("cold_start", summary)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.cold_start", description=harness.__doc__.split("\n")[0])
    ap.add_argument("--cycles", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="5 cycles")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny, for CI: 2 cycles, a 5 ms readiness interval, sleep_after 0.2 s, no diagnosis")
    ap.add_argument("--runtime", nargs="+", default=["docker", "podman", "stub"],
                    choices=["docker", "podman", "stub", "swarm"])
    ap.add_argument("--intervals", nargs="+", type=float, default=[5.0],
                    help="proxy readiness.interval values in ms (default: 5, the default), one proxy each per "
                         "--readiness mode")
    ap.add_argument("--readiness", nargs="+", default=["tcp", "http"], choices=["tcp", "http", "flat"],
                    help="readiness kinds, one proxy each, interleaved: tcp (the default kind), http (GET "
                         f"{READY_PATH}), flat (http without backoff); ratio lines compare them")
    ap.add_argument("--poll-ms", type=float, default=5.0, help="floor readiness poll interval")
    ap.add_argument("--sleep-after", type=float, default=0.5, help="proxy sleep_after (s) to go cold between cycles")
    ap.add_argument("--no-diagnose", action="store_true", help="skip the in-process backend.start breakdown")
    ap.add_argument("--boost", action="store_true", help="startup CPU boost on vs off per instance type instead")
    ap.add_argument("--types", nargs="+", default=["dev", "basic", "standard"], help="instance types (--boost)")
    ap.add_argument("--pause", action="store_true", help="wake from pause vs restart vs create instead")
    args = ap.parse_args()
    if args.boost or args.pause:
        args.runtime = [r for r in args.runtime if r != "stub"]  # the stub has no CPU limits, cannot pause
    if args.quick:
        args.cycles = 5
    if args.smoke:
        args.cycles, args.intervals, args.sleep_after, args.no_diagnose = 2, [5.0], 0.2, True
    loop = asyncio.new_event_loop()
    task = loop.create_task(amain(args))
    # Ctrl-C / SIGTERM cancel the run; run_runtime's finally blocks still stop proxies and remove containers.
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return loop.run_until_complete(task)
    except asyncio.CancelledError:
        print("interrupted; cleaned up", file=sys.stderr)
        return 130
    finally:
        loop.close()


if __name__ == "__main__":
    sys.exit(main())
