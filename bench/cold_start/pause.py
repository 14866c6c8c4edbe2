"""Wake from pause next to restart and create: what the pause tier (`pause_after`) buys, per runtime.

    python -m bench.cold_start --pause [--cycles 10] [--runtime docker podman]

Per runtime, in rotated order each cycle:
- **wake** through the proxy: a key whose instance the proxy paused by itself (`pause_after` 0.3 s, waited
  until the runtime reports it frozen), then one `GET`: request sent -> 200 received;
- **wake floor**: the runtime alone, `unpause` of a paused container then its first 200 on the readiness
  path, polled every 1 ms (no proxy);
- **restart** and **create** through a second proxy (sleep_after 0.5 s): the cold starts the pause avoids.
Medians, and each path's ratio to the wake, from the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
from typing import Any, Awaitable, Callable

from bench.cold_start.harness import READY_PATH, EngineFloor, cleanup, each_runtime, poll_ready
from bench.cold_start.proxied import ProxyUnderTest

PAUSE_AFTER = 0.3  # s: the waking proxy's pause_after
WAKE_POLL = 0.001  # s: the floor's readiness poll while it wakes


class WakeFloor(EngineFloor):
    """One container of the floor's config, frozen and thawed by the runtime directly."""

    async def prime_wake(self) -> None:
        container = await self.docker.containers.create(self.config(), name=f"lpbench-{self.bench_id}-w")
        self.restart_id = container.id
        await container.start()
        self.url = f"http://127.0.0.1:{await self._started_port(container.id)}{READY_PATH}"
        await poll_ready(self.session, self.url, self.poll, time.perf_counter() + 60)

    async def wake(self) -> float:
        assert self.restart_id is not None
        container = self.docker.containers.container(self.restart_id)
        await container.pause()
        await asyncio.sleep(PAUSE_AFTER)
        t0 = time.perf_counter()
        await container.unpause()
        await poll_ready(self.session, self.url, WAKE_POLL, t0 + 10)
        return time.perf_counter() - t0


class Waking:
    """The proxy with the pause tier: its key is paused by the proxy before each timed request."""

    key = "nap"

    def __init__(self, kind: str, bench_id: str, logdir: str) -> None:
        self.p = ProxyUnderTest(kind, f"{bench_id}-pause", 5.0, 600.0, logdir)
        self.p.log = self.p.log.replace(".log", "-pause.log")
        self.p.config["containers"]["svc"]["pause_after"] = f"{PAUSE_AFTER:g}s"  # type: ignore[index]

    async def frozen(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            (container,) = await self.p._containers(self.key)
            info = await container.show()
            if info["State"].get("Paused") and await self.p._state(self.key) == "paused":
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.key} not paused after {timeout}s")
            await asyncio.sleep(0.02)

    async def wake(self) -> float:
        await self.frozen()
        return await self.p._get(self.key)


async def run_runtime(kind: str, cycles: int, bench_id: str, logdir: str) -> dict[str, list[float]]:
    floor = WakeFloor(kind, bench_id, 0.005)
    waking = Waking(kind, bench_id, logdir)
    cold = ProxyUnderTest(kind, f"{bench_id}-cold", 5.0, 0.5, logdir)
    samples: dict[str, list[float]] = {"wake": [], "wake floor": [], "restart": [], "create": []}
    try:
        for p in (waking.p, cold):
            p.start()
            await p.open()
        await floor.prime_wake()
        await waking.p._get(waking.key)  # its first start; from here on it is only paused and woken
        await cold.prime_restart()

        async def create() -> float:
            return float((await cold.create())["total"])

        async def restart() -> float:
            return float((await cold.restart())["total"])

        paths: list[tuple[str, Callable[[], Awaitable[float]]]] = [
            ("wake", waking.wake), ("wake floor", floor.wake), ("restart", restart), ("create", create)]
        for cycle in range(cycles):
            shift = cycle % len(paths)
            for name, run in paths[shift:] + paths[:shift]:
                samples[name].append(await run())
            print(f"  {kind} cycle {cycle + 1}/{cycles} done", file=sys.stderr, flush=True)
    finally:
        for p in (waking.p, cold):
            with contextlib.suppress(Exception):
                await p.close()
            p.stop()
        with contextlib.suppress(Exception):
            await floor.close()
        await cleanup(kind, bench_id)
    return samples


async def amain(args: argparse.Namespace, bench_id: str, logdir: str) -> int:
    from bench.lib import common

    print(f"wake from pause vs restart vs create: {args.cycles} cycles per runtime, order rotated per cycle")
    rows: list[list[Any]] = []
    results: list[dict[str, Any]] = []
    async for kind, s in each_runtime(args.runtime, lambda k: run_runtime(k, args.cycles, bench_id, logdir),
                                      results):
        wake = statistics.median(s["wake"])
        for name, values in s.items():
            med = statistics.median(values)
            rows.append([kind, name, round(med * 1000, 1), round(max(values) * 1000, 1), round(med / wake, 1)])
            results.append({"runtime": kind, "path": name, "median_ms": round(med * 1000, 2),
                            "max_ms": round(max(values) * 1000, 2), "x_wake": round(med / wake, 2)})
    common.table(["runtime", "path", "median ms", "max ms", "x wake"], rows,
                 title="request -> 200 (wake, restart, create through the proxy); unpause -> 200 (floor)")
    common.summary("cold_start_pause", {"cycles": args.cycles, "results": results})
    return 0 if all("error" not in r for r in results) else 1
