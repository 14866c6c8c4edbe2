"""Startup CPU boost: cold start through the proxy with and without it, per instance type and runtime.

    python -m bench.cold_start --boost [--cycles 5] [--runtime docker podman] [--types dev basic standard]

For each runtime and instance type, two proxies (subprocesses, as `python -m proxy`): one with the
default `startup_cpu_boost` (unlimited: all the host's CPUs while starting), one with `false`. Each cycle
times, for every proxy in turn (the order rotates per cycle): a **create** (client `GET` on a fresh key
until its 200) and a **restart** (the same key again after `sleep_after` stopped it). After each boosted
start it reads the container's CPU limit once settled, from its cgroup and (docker) `inspect`'s
NanoCpus, to show it is the instance type's. Medians and the unboosted/boosted ratios, same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import statistics
import sys
from typing import Any, cast

from bench.lib import common
from bench.cold_start.harness import cleanup, each_runtime
from bench.cold_start.proxied import ProxyUnderTest

SETTLE_WAIT = 1.0  # seconds the bench waits for the settled limit after the first 200


def cgroup_cpus(cid: str) -> float:
    """The CPU limit in force for container `cid`, from its cgroup (v1 or v2); inf when none."""
    for path in glob.glob(f"/sys/fs/cgroup/cpu/**/*{cid}*/cpu.cfs_quota_us", recursive=True):
        quota = int(open(path).read())
        period = int(open(path.replace("cfs_quota_us", "cfs_period_us")).read())
        return float("inf") if quota < 0 else quota / period
    for path in glob.glob(f"/sys/fs/cgroup/**/*{cid}*/cpu.max", recursive=True):
        quota_s, period_s = open(path).read().split()
        return float("inf") if quota_s == "max" else int(quota_s) / int(period_s)
    raise LookupError(f"no cgroup found for container {cid[:12]}")


class Variant:
    """One proxy: a runtime, an instance type, boosted or not."""

    def __init__(self, kind: str, bench_id: str, itype: str, boost: bool, logdir: str) -> None:
        self.itype, self.boost = itype, boost
        self.p = ProxyUnderTest(kind, f"{bench_id}-{itype}-{'b' if boost else 'n'}", 20.0, 0.5, logdir)
        self.p.log = self.p.log.replace(".log", f"-{itype}-{'boost' if boost else 'noboost'}.log")
        svc = cast(dict[str, Any], self.p.config["containers"])["svc"]
        svc["instance_type"] = itype
        svc["startup_cpu_boost"] = boost
        self.n = 0
        self.settled: list[list[float]] = []  # [cgroup, inspect (docker)] once ready, per boosted start

    @property
    def name(self) -> str:
        return f"{self.itype} {'boost' if self.boost else 'no boost'}"

    async def _limits(self, key: str) -> list[float]:
        """The container's CPU limit once it stops moving (the settle runs in the background after ready)."""
        (container,) = await self.p._containers(key)
        seen: list[float] = []
        deadline = asyncio.get_running_loop().time() + SETTLE_WAIT
        while asyncio.get_running_loop().time() < deadline:
            info = await container.show()
            seen = [cgroup_cpus(info["Id"])]
            if self.p.kind == "docker":
                seen.append(info["HostConfig"]["NanoCpus"] / 1e9)
            if len(set(seen)) == 1 and seen[0] < 1:  # every type here is below 1 vCPU
                break
            await asyncio.sleep(0.02)
        return seen

    async def create(self) -> float:
        self.n += 1
        key = f"c{self.n}"
        total = await self.p._get(key)
        if self.boost:
            self.settled.append(await self._limits(key))
        await self.p.wait_stopped(key)
        for c in await self.p._containers(key):
            with contextlib.suppress(Exception):
                await c.delete(force=True, v=True)
        return total

    async def restart(self) -> float:
        total = await self.p._get(self.p.restart_key)
        if self.boost:
            self.settled.append(await self._limits(self.p.restart_key))
        await self.p.wait_stopped(self.p.restart_key)
        return total


async def run_runtime(kind: str, args: argparse.Namespace, bench_id: str, logdir: str) -> dict[str, Any]:
    variants = [Variant(kind, bench_id, t, b, logdir) for t in args.types for b in (True, False)]
    samples: dict[tuple[str, str], list[float]] = {}
    try:
        for v in variants:
            v.p.start()
            await v.p.open()
        for v in variants:  # warm-up, discarded; leaves each proxy's restart key stopped
            await v.create()
            await v.p.prime_restart()
        v.settled.clear()
        runners = [(v, path) for v in variants for path in ("create", "restart")]
        for cycle in range(args.cycles):
            shift = cycle % len(runners)
            for v, path in runners[shift:] + runners[:shift]:
                samples.setdefault((v.name, path), []).append(await getattr(v, path)())
            print(f"  {kind} cycle {cycle + 1}/{args.cycles} done", file=sys.stderr, flush=True)
    finally:
        for v in variants:
            with contextlib.suppress(Exception):
                await v.p.close()
            v.p.stop()
        await cleanup(kind, bench_id)
    settled = {v.itype: sorted({tuple(s) for s in v.settled}) for v in variants if v.boost}
    return {"samples": samples, "settled": settled}


async def amain(args: argparse.Namespace, bench_id: str, logdir: str) -> int:
    print(f"startup CPU boost: {args.cycles} cycles per runtime, types {' '.join(args.types)}; "
          "boost = the default (unlimited while starting), no boost = startup_cpu_boost: false")
    rows: list[list[Any]] = []
    summary: dict[str, Any] = {"cycles": args.cycles, "results": []}
    async for kind, res in each_runtime(args.runtime, lambda k: run_runtime(k, args, bench_id, logdir),
                                        summary["results"]):
        s = res["samples"]
        for itype in args.types:
            for path in ("create", "restart"):
                on, off = s[(f"{itype} boost", path)], s[(f"{itype} no boost", path)]
                ratio = statistics.median(off) / statistics.median(on)
                limits = res["settled"][itype]
                rows.append([kind, itype, path, 1000 * statistics.median(off), 1000 * statistics.median(on),
                             f"{ratio:.1f}x", " ".join("/".join(f"{x:g}" for x in t) for t in limits)])
                summary["results"].append({
                    "runtime": kind, "type": itype, "path": path, "ratio": round(ratio, 2),
                    "no_boost_p50_ms": round(1000 * statistics.median(off), 1),
                    "boost_p50_ms": round(1000 * statistics.median(on), 1),
                    "no_boost_ms": [round(1000 * x, 1) for x in off], "boost_ms": [round(1000 * x, 1) for x in on],
                    "settled_cpus": [list(t) for t in limits]})
                print(f"{kind} {itype} {path}: no boost {rows[-1][3]:.0f} ms, boost {rows[-1][4]:.0f} ms, "
                      f"{ratio:.1f}x; limit once ready {rows[-1][6]}", flush=True)
    common.table(["runtime", "type", "path", "no boost p50 ms", "boost p50 ms", "no boost / boost",
                  "limit once ready (cgroup/inspect)"], rows,
                 title=f"Cold start to first 200 through the proxy (median of {args.cycles})")
    common.summary("cold_start_boost", summary)
    return 0
