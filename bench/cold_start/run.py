"""One runtime's plain cold-start run (docker, podman, stub): floor and proxies alternated per path."""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Any

from bench.cold_start.harness import EngineFloor, StubFloor, _med, cleanup
from bench.cold_start.proxied import ProxyUnderTest, diagnose


# ---------------------------------------------------------------------------- shared by run and swarm

Samples = dict[tuple[str, str], list[float]]


async def alternate(label: str, floor: Any, proxies: list[Any], paths: list[str], cycles: int) -> Samples:
    """The measured cycles: the floor and every proxy once per path and cycle, who goes first rotated (to
    spread drift and noise); then each proxy's server-side start durations (starting -> running, from its log).
    `floor` and `proxies` are duck-typed: harness.EngineFloor/StubFloor, swarm.SwarmFloor, ProxyUnderTest."""
    samples: Samples = {}
    runners: list[tuple[str, str, Any]] = []
    for path in paths:
        runners.append(("floor", path, getattr(floor, path)))
        runners.extend((f"proxy@{p.label}", path, getattr(p, path)) for p in proxies)
    keys: dict[tuple[str, str], list[str]] = {}
    for cycle in range(cycles):
        shift = cycle % len(runners)
        for who, path, fn in runners[shift:] + runners[:shift]:
            result = await fn()
            samples.setdefault((who, path), []).append(result["total"])
            if who == "floor":
                samples.setdefault(("floor-started", path), []).append(result["started"])
            else:
                keys.setdefault((who, path), []).append(result["key"])
        print(f"  {label} cycle {cycle + 1}/{cycles} done", file=sys.stderr, flush=True)
    for p in proxies:
        who = f"proxy@{p.label}"
        durations = p.server_start_durations()
        for path in paths:
            if path == "create":
                samples[(who + "-server", path)] = [durations[k][-1] for k in keys.get((who, path), [])
                                                    if durations.get(k)]
            else:
                samples[(who + "-server", path)] = durations.get(p.restart_key, [])[-cycles:]
    return samples


async def paired(proxies: list[Any], paths: list[str], poll: float, cycles: int) -> dict[str, float]:
    """Each proxy's start against a floor start right beside it, median of a few rounds per path."""
    rounds = max(3, min(cycles, 5))
    out: dict[str, float] = {}
    for p in proxies:
        for path in paths:
            out[f"{p.label} {path}"] = _med([await p.paired(path, poll) for _ in range(rounds)])
    return out


async def open_all(proxies: list[Any]) -> None:
    """Start every proxy under test and open its client session."""
    for p in proxies:
        p.start()
        await p.open()


async def close_all(floor: Any, proxies: list[Any]) -> None:
    """Stop the proxies (SIGTERM: each stops what it started) and close the floor, whatever failed before."""
    for p in proxies:
        with contextlib.suppress(Exception):
            await p.close()
        p.stop()
    with contextlib.suppress(Exception):
        await floor.close()


# ---------------------------------------------------------------------------- one runtime


async def run_runtime(kind: str, args: argparse.Namespace, bench_id: str, logdir: str) -> dict[str, Any]:
    poll = args.poll_ms / 1000.0
    floor: EngineFloor | StubFloor = StubFloor(poll) if kind == "stub" else EngineFloor(kind, bench_id, poll)
    proxies = [ProxyUnderTest(kind, bench_id, ms, args.sleep_after, logdir, mode)
               for ms in args.intervals for mode in args.readiness]
    paths = ["create"] if kind == "stub" else ["create", "restart"]
    extra: dict[str, Any] = {}
    try:
        await open_all(proxies)
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
        samples = await alternate(kind, floor, proxies, paths, args.cycles)
        if kind != "stub":
            for p in proxies:
                extra[f"proxy@{p.label} restart reused same container"] = f"{p.reused}/{args.cycles}"
        if kind != "stub" and not args.no_diagnose:
            extra["paired"] = await paired(proxies, paths, poll, args.cycles)
            extra["diagnosis"] = await diagnose(kind, bench_id, max(3, min(args.cycles, 5)))
        if isinstance(floor, EngineFloor):
            extra["host_config"] = floor.host_config()
    finally:
        await close_all(floor, proxies)
        extra["removed"] = await cleanup(kind, bench_id)
    return {"samples": samples, "extra": extra, "paths": paths,
            "proxies": [f"proxy@{p.label}" for p in proxies]}
