"""One runtime's plain cold-start run (docker, podman, stub): floor and proxies alternated per path."""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Any

from bench.cold_start.harness import EngineFloor, StubFloor, _med, cleanup
from bench.cold_start.proxied import ProxyUnderTest, diagnose


# ---------------------------------------------------------------------------- one runtime


async def run_runtime(kind: str, args: argparse.Namespace, bench_id: str, logdir: str) -> dict[str, Any]:
    poll = args.poll_ms / 1000.0
    floor: EngineFloor | StubFloor = StubFloor(poll) if kind == "stub" else EngineFloor(kind, bench_id, poll)
    proxies = [ProxyUnderTest(kind, bench_id, ms, args.sleep_after, logdir, mode)
               for ms in args.intervals for mode in args.readiness]
    paths = ["create"] if kind == "stub" else ["create", "restart"]
    samples: dict[tuple[str, str], list[float]] = {}
    extra: dict[str, Any] = {}
    try:
        for p in proxies:
            p.start()
            await p.open()
        # Warm-up, discarded: client sessions, the daemons' caches, the proxies' backend/probe sessions.
        await floor.create()
        for p in proxies:
            await p.create()
        if "restart" in paths:
            assert isinstance(floor, EngineFloor)
            await floor.prime_restart()
            await floor.restart()
            for p in proxies:
                await p.prime_restart()
                await p.restart()
            for p in proxies:
                p.reused = 0
        runners: list[tuple[str, str, Any]] = []
        for path in paths:
            runners.append(("floor", path, getattr(floor, path)))
            for p in proxies:
                runners.append((f"proxy@{p.label}", path, getattr(p, path)))
        keys_by_proxy: dict[str, dict[str, list[str]]] = {}
        for cycle in range(args.cycles):
            shift = cycle % len(runners)  # rotate who goes first, to spread drift and noise
            for who, path, fn in runners[shift:] + runners[:shift]:
                result = await fn()
                samples.setdefault((who, path), []).append(result["total"])
                if who == "floor":
                    samples.setdefault(("floor-started", path), []).append(result["started"])
                else:
                    keys_by_proxy.setdefault(who, {}).setdefault(path, []).append(result["key"])
            print(f"  {kind} cycle {cycle + 1}/{args.cycles} done", file=sys.stderr, flush=True)
        # Server-side start duration (starting -> running) of the measured cycles, from each proxy's log.
        for p in proxies:
            who = f"proxy@{p.label}"
            durations = p.server_start_durations()
            for path, keys in keys_by_proxy.get(who, {}).items():
                if path == "create":
                    vals = [durations[k][-1] for k in keys if durations.get(k)]
                else:
                    vals = durations.get(p.restart_key, [])[-len(keys):]
                samples[(who + "-server", path)] = vals
            if kind != "stub":
                extra[f"{who} restart reused same container"] = f"{p.reused}/{args.cycles}"
        if kind != "stub" and not args.no_diagnose:
            rounds = max(3, min(args.cycles, 5))
            for p in proxies:
                for path in paths:
                    vals = [await p.paired(path, poll) for _ in range(rounds)]
                    extra.setdefault("paired", {})[f"{p.label} {path}"] = _med(vals)
            extra["diagnosis"] = await diagnose(kind, bench_id, rounds)
        if isinstance(floor, EngineFloor):
            extra["host_config"] = floor.host_config()
    finally:
        for p in proxies:
            with contextlib.suppress(Exception):
                await p.close()
            p.stop()  # SIGTERM: the proxy stops what it started
        with contextlib.suppress(Exception):
            await floor.close()
        extra["removed"] = await cleanup(kind, bench_id)
    return {"samples": samples, "extra": extra, "paths": paths,
            "proxies": [f"proxy@{p.label}" for p in proxies]}

