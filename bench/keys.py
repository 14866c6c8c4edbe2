"""Key scale: memory and lookup cost of many idle managers (stub backend, never started).

    python -m bench.keys [--quick | --smoke]

For each size (10k, 100k) a fresh subprocess builds the app with create_app, measures RSS (VmRSS), creates
N managers with Registry.get(key, "svc"), measures RSS again (gc.collect() first), then times:
  - Registry.get on an existing key (median ns per call over batches),
  - aiohttp route resolution of /container/{id}/api/x: app.router.resolve(make_mocked_request(...))
    (the request object is built outside the timed region).
Goal: 100k keys < 300 MB RSS (the whole process, after creating the keys). `--smoke` (CI) measures 2k keys
only, so it checks no goal.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import subprocess
import sys
import time

from bench.lib.common import ROOT, env_with_root, goal, median, module, rss_kib, summary, table

CONFIG = {
    "logging": {"level": "warning"},
    "containers": {"svc": {"image": "lazy-proxy/model-service:latest", "sleep_after": "5m"}},
    "routes": [
        {"path": "/api/{tail:.*}", "container": "svc", "key": "shared"},
        {"path": "/warm/api/{tail:.*}", "container": "svc", "key": "shared", "mode": "warm",
         "upstream_path": "/api/{tail}"},
        {"path": "/container/{id}/api/{tail:.*}", "container": "svc", "key": "{id}", "upstream_path": "/api/{tail}"},
        {"path": "/lb/api/{tail:.*}", "container": "svc", "key": "lb", "mode": "lb", "instances": 3,
         "upstream_path": "/api/{tail}"},
        {"path": "/v2/{tail:.*}", "container": "svc", "key": "shared"},
    ],
}


def child(n: int) -> dict:
    from aiohttp.test_utils import make_mocked_request

    from proxy.app import PROXY, create_app
    from proxy.config.schema import parse_config

    app = create_app(parse_config(CONFIG))
    registry = app[PROXY].registry
    gc.collect()
    before = rss_kib()
    keys = [f"user-{i:06d}" for i in range(n)]  # the key strings count: the registry keeps them
    t0 = time.perf_counter()
    for k in keys:
        registry.get(k, "svc")
    create_s = time.perf_counter() - t0
    gc.collect()
    after = rss_kib()

    rng = random.Random(1)
    sample = [rng.choice(keys) for _ in range(1000)]
    get = registry.get
    per_call = []
    for _ in range(200):
        t = time.perf_counter_ns()
        for k in sample:
            get(k, "svc")
        per_call.append((time.perf_counter_ns() - t) / len(sample))

    async def resolve_times() -> tuple[list[float], str]:
        router = app.router
        reqs = [make_mocked_request("GET", f"/container/{k}/api/x", app=app) for k in sample[:200]]
        times = []
        info = await router.resolve(reqs[0])
        for _ in range(50):
            t = time.perf_counter_ns()
            for r in reqs:
                await router.resolve(r)
            times.append((time.perf_counter_ns() - t) / len(reqs))
        return times, info.route.resource.canonical

    resolve_ns, canonical = asyncio.run(resolve_times())
    return {"n": n, "rss_before_kib": before, "rss_after_kib": after, "create_s": create_s,
            "bytes_per_key": (after - before) * 1024 / n, "get_ns": median(per_call), "resolve_ns": median(resolve_ns),
            "resolved_to": canonical, "managers": len(registry.managers)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny, for CI: 2k keys once (no goal check)")
    ap.add_argument("--child", type=int)
    ap.add_argument("--repeat", type=int, default=None)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return 0
    repeat = args.repeat or (1 if args.quick or args.smoke else 3)
    sizes = [2_000] if args.smoke else [10_000, 100_000]
    print(f"key scale: idle managers via Registry.get in a fresh subprocess per size, {repeat} run(s) each (medians)")
    rows, out = [], {}
    for n in sizes:
        runs = []
        for _ in range(repeat):
            res = subprocess.run(module("bench.keys", "--child", str(n)), capture_output=True, text=True,
                                 cwd=str(ROOT), env=env_with_root(), timeout=300)
            if res.returncode != 0:
                print(res.stderr[-2000:])
                return 1
            runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
        m = {f: median([r[f] for r in runs]) for f in ("rss_before_kib", "rss_after_kib", "bytes_per_key", "get_ns",
                                                       "resolve_ns", "create_s")}
        m["resolved_to"] = runs[0]["resolved_to"]
        out[str(n)] = m
        rows.append([f"{n:,}", m["rss_before_kib"] / 1024, m["rss_after_kib"] / 1024, m["bytes_per_key"],
                     m["create_s"] * 1000, m["get_ns"], m["resolve_ns"]])
    table(["keys", "RSS before MB", "RSS after MB", "bytes/key", "create ms", "Registry.get ns", "router.resolve ns"],
          rows, title="idle managers (RSS is the whole process: Python + aiohttp + app; MB = MiB)")
    print(f"  route resolved to {out[str(sizes[-1])]['resolved_to']}")
    rss_100k_mb: float | None = None
    met: bool | None = None
    if "100000" in out:
        rss_100k_mb = out["100000"]["rss_after_kib"] / 1024
        met = rss_100k_mb < 300
        print("  " + goal(f"100k keys RSS = {rss_100k_mb:.0f} MB (goal < 300 MB)", met))
    else:
        print("  goal (100k keys < 300 MB): not checked, 100k keys not measured")
    summary("keys", {"quick": args.quick, "smoke": args.smoke, "sizes": out, "rss_100k_mb": rss_100k_mb,
                     "goal_met": met})
    return 0


if __name__ == "__main__":
    sys.exit(main())
