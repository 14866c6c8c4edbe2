"""Warm restart of a stopped container vs remove + create + start, on real daemons.

    python -m bench.warm_restart [--cycles 12] [--quick | --smoke] [--runtime docker podman stub]
                                 [--image lazy-proxy/model-service:latest]

Measures only what the backend's `start` does up to "started and port known" (not HTTP readiness,
which is the same process start in both cases). Prints the median and p90 per runtime and mode, and one
SUMMARY JSON line. `stub` (not in the default runtimes) has no stopped state to restart: its one mode,
`start`, is a fresh in-process server each time; it is there so the bench runs without a daemon (CI smoke).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Callable

from backends.base import Backend, ContainerSpec, Resources
from backends.docker import DockerBackend
from backends.podman import PodmanBackend
from backends.stub import StubBackend
from bench.lib.common import summary

ENGINES: dict[str, type[DockerBackend] | type[PodmanBackend]] = {"docker": DockerBackend, "podman": PodmanBackend}


def modes(runtime: str, proxy_id: str) -> dict[str, Callable[[], Backend]]:
    """Mode name -> a fresh backend measured in that mode."""
    if runtime == "stub":
        return {"start": StubBackend}
    cls = ENGINES[runtime]
    return {"restart": lambda: cls(proxy_id=proxy_id, reuse_stopped=True),
            "recreate": lambda: cls(proxy_id=proxy_id, reuse_stopped=False)}


async def bench(runtime: str, image: str, cycles: int) -> dict[str, list[float]]:
    spec = ContainerSpec(name="bench", image=image, resources=Resources(256 * 2**20, 0.5))
    out: dict[str, list[float]] = {}
    for mode, make in modes(runtime, f"bench-{uuid.uuid4().hex[:8]}").items():
        b = make()
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
            if isinstance(b, (DockerBackend, PodmanBackend)):
                b.reuse_stopped = False  # stop below removes too
            await b.cleanup_stopped()
            for i in await b.list_instances():
                await b.stop(i)
            await b.close()
        out[mode] = times
    return out


async def amain() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cycles", type=int, default=None, help="default 12 (--quick: 5, --smoke: 3)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny, for CI: 3 cycles")
    ap.add_argument("--runtime", nargs="+", default=["docker", "podman"], choices=["docker", "podman", "stub"])
    ap.add_argument("--image", default="lazy-proxy/model-service:latest")
    args = ap.parse_args()
    cycles = args.cycles or (3 if args.smoke else 5 if args.quick else 12)
    results: dict[str, dict[str, dict[str, float]]] = {}
    errors: dict[str, str] = {}
    for rt in args.runtime:
        image = "model_service" if rt == "stub" else args.image
        try:
            res = await bench(rt, image, cycles)
        except Exception as exc:  # noqa: BLE001 - report and go on with the next runtime
            errors[rt] = f"{type(exc).__name__}: {exc}"
            print(f"{rt:7s} FAILED {errors[rt]}")
            continue
        for mode, ts in res.items():
            p90 = sorted(ts)[int(0.9 * (len(ts) - 1))]
            med = statistics.median(ts)
            print(f"{rt:7s} {mode:9s} n={len(ts):3d} median={med * 1000:7.1f} ms p90={p90 * 1000:7.1f} ms")
            results.setdefault(rt, {})[mode] = {"median_ms": med * 1000, "p90_ms": p90 * 1000, "n": len(ts)}
    summary("warm_restart", {"cycles": cycles, "quick": args.quick, "smoke": args.smoke, "results": results,
                             "errors": errors})
    return 1 if errors else 0


def main() -> int:
    return asyncio.run(amain())


if __name__ == "__main__":
    sys.exit(main())
