"""Open-loop, rate-limited HTTP load generator (wrk2 is not packaged): run as its own process.

    python bench/_openloop.py URL --rate R --seconds S [--conns 64]

Requests are scheduled at fixed intervals regardless of how fast answers come back; each latency is
measured from its *scheduled* send time, so a stalled server (or a generator falling behind) shows up
in the percentiles instead of being hidden (no coordinated omission). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp


async def run(url: str, rate: float, seconds: float, conns: int) -> dict[str, float]:
    connector = aiohttp.TCPConnector(limit=conns, keepalive_timeout=60)
    lat: list[float] = []
    errors = 0
    async with aiohttp.ClientSession(connector=connector) as session:
        # warm the pool
        await asyncio.gather(*(session.get(url) for _ in range(min(conns, 16))), return_exceptions=True)

        async def one(target: float) -> None:
            nonlocal errors
            try:
                async with session.get(url) as resp:
                    await resp.read()
                    if resp.status >= 400:
                        errors += 1
                        return
            except Exception:  # noqa: BLE001 - counted
                errors += 1
                return
            lat.append(time.perf_counter() - target)

        n = int(rate * seconds)
        tasks = []
        t0 = time.perf_counter() + 0.05
        for i in range(n):
            target = t0 + i / rate
            delay = target - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(target)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - t0
    lat.sort()

    def p(q: float) -> float:
        return lat[min(len(lat) - 1, int(round(q / 100 * (len(lat) - 1))))] * 1000 if lat else float("nan")

    return {"requests": n, "ok": len(lat), "errors": errors, "achieved_rps": n / elapsed,
            "p50": p(50), "p90": p(90), "p99": p(99), "max": p(100)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--rate", type=float, required=True)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--conns", type=int, default=64)
    args = ap.parse_args()
    try:
        import uvloop  # type: ignore[import-not-found]

        uvloop.install()
    except ImportError:
        pass
    print(json.dumps(asyncio.run(run(args.url, args.rate, args.seconds, args.conns))))


if __name__ == "__main__":
    main()
