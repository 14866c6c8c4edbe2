"""Autoscaling an lb route under a step load: 1 -> 64 concurrent -> 1 (issue 11 §1).

    python -m bench.autoscale [--quick | --smoke]

The proxy runs as its own process (stub backend); each instance is `upstream_app` below: 4 requests at a time,
50 ms each (a fixed service time; more wait for a slot), so one instance serves 80 requests/s and 64 concurrent
clients need 16 instances. Two variants, one after the other: the autoscaled route (target_concurrency 4, 1 to 16
instances, scale_window 10 s: panic window 1 s) and a fixed single instance (the seed). Reported: ready and
desired instances over time (from /metrics, every 0.25 s), p99 over the first 3 s of the step and over the rest
of it, and how long after the load ends the pool is back to one instance.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any, Mapping

import aiohttp
from aiohttp import web

from bench.lib.common import free_port, metric_sum, metrics_samples, pct, proxy, summary, table

SLOTS = 4  # requests an instance serves at once
SERVICE = 0.05  # seconds each


def upstream_app(env: Mapping[str, str]) -> web.Application:
    """An instance with a fixed service time and SLOTS workers (the stub backend serves it in-process)."""
    slots = asyncio.Semaphore(SLOTS)

    async def work(request: web.Request) -> web.Response:
        async with slots:
            await asyncio.sleep(SERVICE)
        return web.Response(text="done")

    async def ready(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/work", work)
    app.router.add_get("/ready", ready)
    return app


def config(autoscale: bool, window: str) -> dict[str, Any]:
    route: dict[str, Any] = {"path": "/w", "container": "svc", "key": "pool", "name": "w", "upstream_path": "/work"}
    if autoscale:
        route.update(mode="lb", target_concurrency=SLOTS, min_instances=1, max_instances=16, scale_window=window)
    return {"logging": {"level": "warning"},
            "containers": {"svc": {"image": "stub:bench.autoscale:upstream_app", "readiness": {"path": "/ready"},
                                   "sleep_after": "10m", "max_instances": 32}},
            "routes": [route]}


async def step_load(base: str, phases: list[tuple[float, int]]) -> dict[str, Any]:
    """Run `phases` of (seconds, concurrency); latencies with their send time, instances over time."""
    lat: list[tuple[float, float]] = []
    timeline: list[tuple[float, float, float]] = []
    errors = 0
    active = 0
    t0 = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        async def worker(i: int, stop: asyncio.Event) -> None:
            nonlocal errors
            while not stop.is_set():
                if i >= active:
                    await asyncio.sleep(0.01)
                    continue
                sent = time.perf_counter()
                try:
                    async with session.get(f"{base}/w") as resp:
                        await resp.read()
                        ok = resp.status == 200
                except aiohttp.ClientError:
                    ok = False
                if ok:
                    lat.append((sent - t0, time.perf_counter() - sent))
                else:
                    errors += 1

        async def sample(stop: asyncio.Event) -> None:
            while not stop.is_set():
                async with session.get(f"{base}/metrics") as resp:
                    samples = metrics_samples(await resp.text())
                timeline.append((time.perf_counter() - t0, metric_sum(samples, "proxy_route_ready_instances"),
                                 metric_sum(samples, "proxy_route_desired_instances")))
                await asyncio.sleep(0.25)

        stop = asyncio.Event()
        peak = max(c for _, c in phases)
        tasks = [asyncio.create_task(worker(i, stop)) for i in range(peak)] + [asyncio.create_task(sample(stop))]
        for seconds, concurrency in phases:
            active = concurrency
            await asyncio.sleep(seconds)
        stop.set()
        await asyncio.gather(*tasks)
    return {"lat": lat, "timeline": timeline, "errors": errors}


def run(autoscale: bool, phases: list[tuple[float, int]], window: str) -> dict[str, Any]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cfg = config(autoscale, window)
    cfg["admin"] = {"on_proxy_port": ["health", "metrics"]}
    with proxy(cfg, port):
        res = asyncio.run(step_load(base, phases))
    ramp_at, high_end = phases[0][0], phases[0][0] + phases[1][0]
    during = [s for t, s in res["lat"] if ramp_at <= t < ramp_at + 3]
    steady = [s for t, s in res["lat"] if ramp_at + 3 <= t < high_end]
    after = [(t, ready) for t, ready, _ in res["timeline"] if t >= high_end]
    back = next((t - high_end for t, ready in after if ready <= 1), float("nan"))
    peak = max((ready for _, ready, _ in res["timeline"]), default=0)
    reached = next((t - ramp_at for t, ready, _ in res["timeline"] if t >= ramp_at and ready >= peak), float("nan"))
    if not autoscale:  # one instance, no pool metrics
        peak, reached = 1, float("nan")
    return {"variant": "autoscaled" if autoscale else "fixed 1", "requests": len(res["lat"]), "errors": res["errors"],
            "p99_ramp_ms": pct(during, 99) * 1000, "p99_high_ms": pct(steady, 99) * 1000,
            "p50_high_ms": pct(steady, 50) * 1000, "peak_ready": peak, "to_peak_s": reached,
            "back_to_1_s": back if autoscale else float("nan"), "timeline": res["timeline"]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny, for CI: 1 s / 3 s / 3 s, scale_window 2 s")
    args = ap.parse_args()
    if args.smoke:
        phases, window = [(1.0, 1), (3.0, 64), (3.0, 1)], "2s"
    elif args.quick:
        phases, window = [(3.0, 1), (10.0, 64), (13.0, 1)], "10s"
    else:
        phases, window = [(5.0, 1), (20.0, 64), (15.0, 1)], "10s"
    print(f"step load {' -> '.join(f'{c} for {s:g}s' for s, c in phases)}; each instance {SLOTS} at a time, "
          f"{SERVICE * 1000:g} ms each; autoscaled: target {SLOTS}, 1-16 instances, scale_window {window}")
    results = [run(True, phases, window), run(False, phases, window)]
    auto = results[0]
    second = [(t, r, d) for t, r, d in auto["timeline"]]
    rows = [[f"{t:.1f}", int(r), int(d)] for i, (t, r, d) in enumerate(second) if i % 4 == 0]
    table(["t s", "ready", "desired"], rows, title="autoscaled: instances over time (every second)")
    table(["variant", "requests", "errors", "p99 first 3 s ms", "p99 rest ms", "p50 rest ms", "peak ready",
           "to peak s", "back to 1 after s"],
          [[r["variant"], r["requests"], r["errors"], r["p99_ramp_ms"], r["p99_high_ms"], r["p50_high_ms"],
            int(r["peak_ready"]), r["to_peak_s"], r["back_to_1_s"]] for r in results])
    fixed = results[1]
    print(f"\np99 during the step, autoscaled vs fixed: {auto['p99_high_ms']:.0f} vs {fixed['p99_high_ms']:.0f} ms "
          f"({fixed['p99_high_ms'] / max(auto['p99_high_ms'], 1e-9):.1f}x lower)")
    summary("autoscale", {"smoke": args.smoke, "quick": args.quick,
                          **{f"{k}_{'auto' if r is auto else 'fixed'}": v for r in results for k, v in r.items()
                             if k not in ("timeline", "variant")}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
