"""Soak: mixed traffic over 50 keys with a short sleep_after, so instances start and stop many times.

    python -m bench.soak [--minutes 10] [--quick | --smoke]   (--quick = 1 minute, --smoke = 4 s for CI)

The proxy (stub backend, uvloop if installed) runs as its own process via bench.lib.launcher,
which adds GET /_bench/stats (asyncio tasks, open fds, RSS, upstream connector connections).
This process drives 24 client workers; each picks a key, sends a burst of 1-4 requests, then idles
0-2.5 s, so with sleep_after=1s keys keep cycling stopped -> starting -> running -> stopping.
Mix: inference POST, health GET, streamed GET, 64 KiB upload, WebSocket echo, and deliberately
aborted requests (client gives up after 50-300 ms on a slow or streaming answer, sometimes mid start).
At the end: failed requests that should have succeeded (must be 0), in-flight per key (must be 0),
starts/stops, and the proxy's tasks/fds/RSS at baseline, after warm-up, middle, end and after quiesce.
`--smoke` (CI: does it still run?) has 8 workers, sleep_after 0.5 s and short settling; its resource checks
mean little.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass

import aiohttp

from bench.lib.common import free_port, goal, metric_sum, metrics_samples, proxy, summary, table

KEYS = [f"soak-{i:02d}" for i in range(50)]


@dataclass(frozen=True)
class Mode:
    workers: int = 24
    idle: float = 2.5          # a worker idles 0..idle s between bursts
    sleep_after: float = 1.0   # the class's sleep_after (s)
    settle: float = 2.0        # waited beyond sleep_after for the baseline sample
    quiesce: float = 3.0       # waited beyond sleep_after after the traffic, before the last samples
    late_sample: bool = True   # if fds stay up, one more sample after aiohttp's 30 s keep-alive cleanup


FULL = Mode()
SMOKE = Mode(workers=8, idle=0.5, sleep_after=0.5, settle=0.5, quiesce=1.0, late_sample=False)


def config(mode: Mode) -> dict:
    return {
        "logging": {"level": "warning"},
        "metrics": {"key_label_limit": 1000},
        "server": {"upstream_timeout": "20s"},
        "containers": {"svc": {"image": "lazy-proxy/model-service:latest", "sleep_after": f"{mode.sleep_after}s",
                               "start_timeout": "30s", "max_instances": 100,
                               "env": {"MODEL_SERVICE_DEBUG_ROUTES": "1"}}},
        "routes": [
            {"path": "/container/{id}/api/{tail:.*}", "container": "svc", "key": "{id}",
             "upstream_path": "/api/{tail}"},
            {"path": "/container/{id}/debug/{tail:.*}", "container": "svc", "key": "{id}",
             "upstream_path": "/debug/{tail}"},
        ],
    }

ACTIONS = [("inference", 40), ("health", 22), ("stream", 10), ("upload", 6), ("ws", 7), ("abort", 15)]
UPLOAD = os.urandom(64 * 1024)


class Soak:
    def __init__(self, base: str, deadline: float, seed: int = 1, idle: float = 2.5) -> None:
        self.base = base
        self.deadline = deadline
        self.idle = idle
        self.rng = random.Random(seed)
        self.ok: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.aborted = 0
        self.failures: list[str] = []
        self.cold = 0

    def fail(self, action: str, why: str) -> None:
        self.failed[action] += 1
        if len(self.failures) < 20:
            self.failures.append(f"{action}: {why}")

    async def act(self, session: aiohttp.ClientSession, action: str, key: str) -> None:
        url = f"{self.base}/container/{key}"
        try:
            if action == "inference":
                body = {"sex": self.rng.choice(["male", "female"]), "age": self.rng.randint(1, 80),
                        "pclass": self.rng.randint(1, 3)}
                async with session.post(f"{url}/api/inference", json=body) as resp:
                    data = await resp.json(content_type=None)
                    if resp.status != 200 or "prediction" not in data:
                        return self.fail(action, f"{resp.status} {str(data)[:200]}")
                    self.cold += resp.headers.get("X-Proxy-Cold-Start") == "1"
            elif action == "health":
                async with session.get(f"{url}/api/health") as resp:
                    text = await resp.text()
                    if resp.status != 200:
                        return self.fail(action, f"{resp.status} {text[:200]}")
            elif action == "stream":
                async with session.get(f"{url}/debug/stream?chunks=5&interval=0.02") as resp:
                    text = await resp.text()
                    if resp.status != 200 or "chunk-4" not in text:
                        return self.fail(action, f"{resp.status} {text[:200]}")
            elif action == "upload":
                async with session.post(f"{url}/debug/echo", data=UPLOAD) as resp:
                    data = await resp.json(content_type=None)
                    if resp.status != 200 or data.get("bytes") != len(UPLOAD):
                        return self.fail(action, f"{resp.status} {str(data)[:200]}")
            elif action == "ws":
                async with session.ws_connect(f"{url}/debug/ws", timeout=aiohttp.ClientWSTimeout(ws_close=5)) as ws:
                    for i in range(3):
                        await ws.send_str(f"m{i}")
                        msg = await asyncio.wait_for(ws.receive(), 10)
                        if msg.type != aiohttp.WSMsgType.TEXT or msg.data != f"m{i}":
                            return self.fail(action, f"echo {msg.type} {str(msg.data)[:100]}")
            elif action == "abort":
                target = self.rng.choice([f"{url}/debug/sleep?seconds=2", f"{url}/debug/stream?chunks=40&interval=0.05",
                                          f"{url}/api/health"])
                try:
                    async with asyncio.timeout(self.rng.uniform(0.05, 0.3)):
                        async with session.get(target) as resp:
                            await resp.read()
                except TimeoutError:
                    self.aborted += 1
                    return
            self.ok[action] += 1
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
            self.fail(action, f"{type(exc).__name__}: {exc}")

    async def worker(self, session: aiohttp.ClientSession, wid: int) -> None:
        rng = random.Random(wid)
        names = [a for a, _ in ACTIONS]
        weights = [w for _, w in ACTIONS]
        while time.monotonic() < self.deadline:
            key = rng.choice(KEYS)
            for _ in range(rng.randint(1, 4)):
                await self.act(session, rng.choices(names, weights)[0], key)
            await asyncio.sleep(rng.uniform(0, self.idle))


async def stats(session: aiohttp.ClientSession, base: str) -> dict:
    async with session.get(f"{base}/_bench/stats") as resp:
        return await resp.json()


async def run(base: str, seconds: float, mode: Mode) -> dict:
    samples: dict[str, dict] = {}
    async with aiohttp.ClientSession() as ctl:
        # Baseline after one full cycle of a throwaway key, so lazy one-time costs (loading the ONNX model,
        # onnxruntime thread pools, imports) are not counted as growth.
        async with ctl.get(f"{base}/container/warmup/api/health") as resp:
            await resp.read()
        await asyncio.sleep(mode.sleep_after + mode.settle)
        samples["baseline"] = await stats(ctl, base)
        began = time.monotonic()
        soak = Soak(base, began + seconds, idle=mode.idle)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
            workers = [asyncio.create_task(soak.worker(session, i)) for i in range(mode.workers)]
            # Warm-up: instance churn needs a while to reach its steady number of concurrent instances
            # (and the allocator its working set); at least 20 s, at most 40% of the run.
            warm = max(0.15, min(0.4, 20.0 / seconds))
            marks = [("after warm-up", warm), ("middle", 0.5 if warm < 0.45 else 0.7), ("at 75%", 0.75),
                     ("end of traffic", 0.97)]
            for name, frac in marks:
                await asyncio.sleep(max(0.0, began + frac * seconds - time.monotonic()))
                samples[name] = await stats(ctl, base)
            await asyncio.gather(*workers)
        # Quiesce: every instance goes idle and stops; idle upstream connections to them close.
        await asyncio.sleep(mode.sleep_after + mode.quiesce)
        async with ctl.get(f"{base}/container-status") as resp:
            status = await resp.json()
        async with ctl.get(f"{base}/metrics") as resp:
            metrics = metrics_samples(await resp.text())
        samples["after quiesce"] = await stats(ctl, base)
        if mode.late_sample and samples["after quiesce"]["fds"] > samples["baseline"]["fds"] + 2:
            await asyncio.sleep(32)  # aiohttp's connector drops closed pooled connections every keepalive_timeout (30s)
            samples["quiesce + 32s"] = await stats(ctl, base)
    return {"soak": soak, "samples": samples, "status": status, "metrics": metrics, "seconds": seconds}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--quick", action="store_true", help="1 minute")
    ap.add_argument("--smoke", action="store_true", help=f"4 s, for CI: {SMOKE}")
    args = ap.parse_args()
    minutes = 4 / 60 if args.smoke else 1.0 if args.quick else args.minutes
    mode = SMOKE if args.smoke else FULL
    try:
        import uvloop  # type: ignore[import-not-found]

        uvloop.install()
    except ImportError:
        pass
    print(f"soak: {minutes:g} min, 50 keys, {mode.workers} workers, sleep_after={mode.sleep_after:g}s, "
          f"mix {', '.join(f'{a} {w}%' for a, w in ACTIONS)}")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = f"/tmp/bench-soak-proxy-{port}.log"
    with proxy(config(mode), port, log=log) as server:
        out = asyncio.run(run(base, minutes * 60, mode))
        alive = server.proc.poll() is None
    soak: Soak = out["soak"]
    s, m = out["samples"], out["metrics"]
    total_ok = sum(soak.ok.values())
    total_failed = sum(soak.failed.values())
    table(["action", "ok", "failed"], [[a, soak.ok[a], soak.failed[a]] for a, _ in ACTIONS] +
          [["(aborted on purpose)", soak.aborted, ""]], title="requests")
    for f in soak.failures:
        print(f"  failure: {f}")
    keys = out["status"]["keys"]
    stuck = [k["key"] for k in keys if k["in_flight"]]
    states = Counter(k["state"] for k in keys)
    starts = metric_sum(m, "proxy_container_starts_total")
    stops = {r: metric_sum(m, "proxy_container_stops_total", reason=r) for r in ("idle", "shutdown", "error")}
    start_failures = metric_sum(m, "proxy_container_start_failures_total")
    per_key = [k["start_count"] for k in keys]
    table(["sample", "tasks", "fds", "RSS MB", "upstream idle conns", "upstream acquired", "running", "in_flight"],
          [[n, v["tasks"], v["fds"], v["rss_kib"] / 1024, v["upstream_idle_conns"], v["upstream_acquired_conns"],
            v["running"], v["in_flight"]] for n, v in s.items()], title="proxy process (GET /_bench/stats)")
    print(f"\nlifecycle: {int(starts)} starts, stops {({k: int(v) for k, v in stops.items()})}, "
          f"{int(start_failures)} start failures; per key starts min/median/max "
          f"{min(per_key)}/{sorted(per_key)[len(per_key) // 2]}/{max(per_key)}; states after quiesce {dict(states)}; "
          f"{soak.cold} inference answers were cold starts")
    rss_ok = s["end of traffic"]["rss_kib"] <= 1.2 * s["after warm-up"]["rss_kib"]
    base_s, q = s["baseline"], s.get("quiesce + 32s", s["after quiesce"])
    tasks_ok = q["tasks"] <= base_s["tasks"]
    fds_ok = q["fds"] <= base_s["fds"] + 2
    print("  " + goal(f"0 failed requests that should have succeeded ({total_failed} failed of "
                      f"{total_ok + total_failed})", total_failed == 0))
    print("  " + goal(f"in-flight 0 for every key ({len(stuck)} keys stuck: {stuck[:5]})", not stuck))
    print("  " + goal(f"RSS stable: end {s['end of traffic']['rss_kib'] / 1024:.1f} MB within +20% of after-warm-up "
                      f"{s['after warm-up']['rss_kib'] / 1024:.1f} MB", rss_ok))
    print("  " + goal(f"asyncio tasks back to baseline after quiesce ({q['tasks']} vs {base_s['tasks']})", tasks_ok))
    print("  " + goal(f"open fds back to baseline (+2) after quiesce ({q['fds']} vs {base_s['fds']})", fds_ok))
    print(f"  fd kinds: baseline {base_s['fd_kinds']}, after quiesce {s['after quiesce']['fd_kinds']}")
    print(f"  proxy process alive at the end: {alive}; proxy log: {log}")
    summary("soak", {"minutes": minutes, "smoke": args.smoke, "ok": total_ok, "failed": total_failed,
                     "aborted": soak.aborted,
                     "failures": soak.failures[:5], "stuck_in_flight": stuck, "starts": starts, "stops": stops,
                     "start_failures": start_failures, "samples": s, "rss_stable": rss_ok,
                     "tasks_baseline": tasks_ok, "fds_baseline": fds_ok,
                     "all_met": total_failed == 0 and not stuck and rss_ok and tasks_ok and fds_ok})
    return 0


if __name__ == "__main__":
    sys.exit(main())
