"""Warm restart of a stopped container vs remove + create + start, on real daemons.

    python bench/warm_restart.py [--cycles 12] [--runtime docker podman] [--image lazy-proxy/model-service:latest]

Measures only what the backend's `start` does up to "started and port known" (not HTTP readiness,
which is the same process start in both cases). Prints the median and p90 per runtime and mode.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backends.base import ContainerSpec, Resources  # noqa: E402
from backends.docker import DockerBackend  # noqa: E402
from backends.podman import PodmanBackend  # noqa: E402


async def bench(cls, image: str, cycles: int) -> dict[str, list[float]]:
    spec = ContainerSpec(name="bench", image=image, resources=Resources(256 * 2**20, 0.5))
    out: dict[str, list[float]] = {}
    for reuse in (True, False):
        b = cls(proxy_id="bench", reuse_stopped=reuse)
        times = []
        try:
            inst = await b.start("warm", spec)  # prime: container exists (stopped) for reuse mode
            await b.stop(inst)
            for _ in range(cycles):
                t0 = time.perf_counter()
                inst = await b.start("warm", spec)
                times.append(time.perf_counter() - t0)
                await b.stop(inst)
        finally:
            b.reuse_stopped = False
            await b.cleanup_stopped()
            for i in await b.list_instances():
                await b.stop(i)
            await b.close()
        out["restart" if reuse else "recreate"] = times
    return out


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=12)
    ap.add_argument("--runtime", nargs="+", default=["docker", "podman"])
    ap.add_argument("--image", default="lazy-proxy/model-service:latest")
    args = ap.parse_args()
    for rt in args.runtime:
        cls = {"docker": DockerBackend, "podman": PodmanBackend}[rt]
        res = await bench(cls, args.image, args.cycles)
        for mode, ts in res.items():
            ts_sorted = sorted(ts)
            p90 = ts_sorted[int(0.9 * (len(ts) - 1))]
            print(f"{rt:7s} {mode:9s} n={len(ts):3d} median={statistics.median(ts) * 1000:7.1f} ms "
                  f"p90={p90 * 1000:7.1f} ms")


if __name__ == "__main__":
    asyncio.run(main())
