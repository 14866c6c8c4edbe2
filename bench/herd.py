"""Thundering herd: N concurrent requests to one cold key (stub backend) -> exactly one backend start?

    python -m bench.herd [--quick | --smoke] [--requests 1000] [--rounds 3]

The proxy runs as its own process (bench.lib.launcher, uvloop if installed); this process is the client
(aiohttp, TCPConnector(limit=0): every request has its own connection, all sent at once). `--smoke`: 50
requests, 1 round, for CI.
Each round uses a fresh key (`/container/herd-R/api/health`), so every round is a cold start.
Starts are read from `/container-status` (the key's `start_count`; /metrics folds keys config does not
name into `key="_other"`, so it cannot tell herd keys apart).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time

import aiohttp

from bench.lib.common import free_port, goal, http_text, median, pct, proxy, summary, table

CONFIG = {
    "logging": {"level": "warning"},
    "metrics": {"key_label_limit": 1000},
    "containers": {"svc": {"image": "lazy-proxy/model-service:latest", "sleep_after": "10m",
                           "start_timeout": "30s", "max_instances": 100}},
    "routes": [{"path": "/container/{id}/api/{tail:.*}", "container": "svc", "key": "{id}",
                "upstream_path": "/api/{tail}"}],
}


async def herd(base: str, key: str, n: int) -> dict:
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    url = f"{base}/container/{key}/api/health"
    lat: list[float] = []
    waits: list[float] = []
    codes: dict[str, int] = {}
    gate = asyncio.Event()

    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        async def one() -> None:
            await gate.wait()
            began = time.perf_counter()
            try:
                async with session.get(url) as resp:
                    await resp.read()
                    codes[str(resp.status)] = codes.get(str(resp.status), 0) + 1
                    if resp.status == 200:
                        lat.append((time.perf_counter() - began) * 1000)
                        if "X-Proxy-Cold-Start-Wait-Ms" in resp.headers:
                            waits.append(float(resp.headers["X-Proxy-Cold-Start-Wait-Ms"]))
            except Exception as exc:  # noqa: BLE001 - counted
                name = type(exc).__name__
                codes[name] = codes.get(name, 0) + 1

        tasks = [asyncio.create_task(one()) for _ in range(n)]
        await asyncio.sleep(0.05)
        t0 = time.perf_counter()
        gate.set()
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
    errors = sum(v for k, v in codes.items() if k != "200")
    return {"ok": len(lat), "errors": errors, "codes": codes, "wall_s": wall,
            "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "max_ms": pct(lat, 100),
            "cold_wait_p50_ms": pct(waits, 50), "cold_wait_p99_ms": pct(waits, 99), "cold_marked": len(waits)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny, for CI: 50 requests, 1 round")
    ap.add_argument("--requests", type=int, default=None, help="default 1000 (--smoke: 50)")
    ap.add_argument("--rounds", type=int, default=None)
    args = ap.parse_args()
    args.requests = args.requests or (50 if args.smoke else 1000)
    rounds = args.rounds or (1 if args.smoke else 2 if args.quick else 5)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.requests + 200
    if soft < need:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(need, soft), hard), hard))
        except (ValueError, OSError):
            pass
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    print(f"thundering herd: {args.requests} concurrent requests to a cold key, {rounds} rounds; "
          f"RLIMIT_NOFILE soft={soft} hard={hard} (inherited by the proxy subprocess)")
    if soft < need:
        print(f"  WARNING: fd limit {soft} < {need}: each side needs ~1 fd per request; expect connect errors")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    results = []
    with proxy(CONFIG, port):
        for n in range(rounds):
            key = f"herd-{n}"
            res = asyncio.run(herd(base, key, args.requests))
            status = json.loads(http_text(f"{base}/container-status"))
            res["starts"] = sum(k["start_count"] for k in status["keys"] if k["key"] == key)
            res["key"] = key
            results.append(res)
    table(["round", "key", "starts", "ok", "errors", "p50 ms", "p99 ms", "max ms", "cold-wait p50", "cold-wait p99",
           "wall s"],
          [[i, r["key"], int(r["starts"]), r["ok"], r["errors"], r["p50_ms"], r["p99_ms"], r["max_ms"],
            r["cold_wait_p50_ms"], r["cold_wait_p99_ms"], r["wall_s"]] for i, r in enumerate(results)],
          title="per round (latency = client-measured, request sent -> body read; "
                "cold-wait = X-Proxy-Cold-Start-Wait-Ms)")
    for r in results:
        if r["errors"]:
            print(f"  {r['key']}: outcomes {r['codes']}")
    all_one = all(r["starts"] == 1 for r in results)
    errors = sum(r["errors"] for r in results)
    med = {f: median([r[f] for r in results]) for f in ("p50_ms", "p99_ms", "cold_wait_p50_ms", "cold_wait_p99_ms",
                                                        "wall_s")}
    print(f"\nmedians over rounds: p50 {med['p50_ms']:.1f} ms, p99 {med['p99_ms']:.1f} ms, "
          f"cold-wait p50 {med['cold_wait_p50_ms']:.1f} ms, all {args.requests} answered in {med['wall_s']:.2f} s")
    print("  " + goal("exactly 1 backend start per cold key in every round", all_one))
    print("  " + goal("0 errors", errors == 0))
    summary("herd", {"quick": args.quick, "smoke": args.smoke, "requests": args.requests, "rounds": rounds,
                     "starts": [r["starts"] for r in results], "errors": errors, **med,
                     "nofile_soft": soft, "single_start_met": all_one})
    return 0


if __name__ == "__main__":
    sys.exit(main())
