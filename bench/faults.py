"""Faults injected from outside under steady traffic, on real dockerd and podman.

    python -m bench.faults [--runtime docker|podman|both] [--fault NAME ...] [--quick | --smoke]

Per runtime and fault, a fresh proxy (its own process, `basic` instances, sleep_after 3 s, upstream_timeout
2 s, replace_after_timeouts 2) serves 20 clients looping over 10 warm keys. A third of the way in, one
fault is injected from outside the proxy: the victim key's container is stopped (`stop`, 1 s grace;
`stop-grace`, the CLI's default 10 s), removed (`rm -f`), killed (SIGKILL) or frozen (`pause`), or the
runtime's daemon/API service is down for 5 s (`daemon`). Reported per fault: requests, answers by status,
errors among requests *sent after* the fault had been applied (the ones a proxy could have saved), the 502s
among those (a proxy that cannot ask its runtime owes the outage's 503), recovery time (fault began -> the
last failed answer), and containers left running that the proxy had stopped once it exits (orphans).
`--smoke` (CI) runs `stop` and `freeze` on docker for a few seconds each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import aiodocker
import aiohttp

from bench.lib.common import ROOT, free_port, proxy, summary, table, timed_get

KEYS = [f"f{i}" for i in range(10)]
VICTIM = KEYS[0]
CLIENTS = 20
SOCKETS = {"docker": "unix:///var/run/docker.sock", "podman": "unix:///run/podman/podman.sock"}
OUTAGE_S = 5.0


@dataclass
class Round:
    """One fault's traffic: (sent, done, status) per request, and when the fault began and was applied."""
    results: list[tuple[float, float, int]] = field(default_factory=list)
    began: float = 0.0
    applied: float = 0.0

    def report(self) -> dict[str, object]:
        statuses = Counter(status for _, _, status in self.results)
        failed = [(sent, done) for sent, done, status in self.results if status != 200]
        late = sum(1 for sent, _ in failed if sent > self.applied)
        late_502 = sum(1 for sent, _, status in self.results if status == 502 and sent > self.applied)
        last_failure = max((done for _, done in failed), default=self.began)
        return {"requests": len(self.results), "by_status": dict(sorted(statuses.items())),
                "errors_sent_after_fault": late,
                "502_sent_after_fault": late_502, "recovery_s": round(max(0.0, last_failure - self.began), 3)}


Fault = Callable[[aiodocker.Docker, str, str], Awaitable[None]]


async def _victim(raw: aiodocker.Docker, proxy_id: str) -> aiodocker.containers.DockerContainer:
    listed = await raw.containers.list(filters=json.dumps(
        {"label": [f"proxy.instance={proxy_id}", f"proxy.key={VICTIM}"], "status": ["running"]}))
    if not listed:
        raise RuntimeError(f"no running container for key {VICTIM}")
    return listed[0]


async def stop(raw: aiodocker.Docker, proxy_id: str, runtime: str) -> None:
    await (await _victim(raw, proxy_id)).stop(t=1)


async def stop_grace(raw: aiodocker.Docker, proxy_id: str, runtime: str) -> None:
    """`docker stop` as typed at a shell: the default 10 s grace (the model service leaves at SIGTERM)."""
    await (await _victim(raw, proxy_id)).stop(t=10)


async def remove(raw: aiodocker.Docker, proxy_id: str, runtime: str) -> None:
    await (await _victim(raw, proxy_id)).delete(force=True)


async def kill(raw: aiodocker.Docker, proxy_id: str, runtime: str) -> None:
    await (await _victim(raw, proxy_id)).kill(signal="SIGKILL")


async def freeze(raw: aiodocker.Docker, proxy_id: str, runtime: str) -> None:
    await (await _victim(raw, proxy_id)).pause()


async def daemon(raw: aiodocker.Docker, proxy_id: str, runtime: str) -> None:
    await _daemons("down", runtime)
    await asyncio.sleep(OUTAGE_S)
    await _daemons("up")


async def _daemons(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec("bash", str(ROOT / ".ci/daemons.sh"), *args,
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    if await proc.wait() != 0:
        raise RuntimeError(f".ci/daemons.sh {' '.join(args)} failed")


FAULTS: dict[str, Fault] = {"stop": stop, "stop-grace": stop_grace, "remove": remove, "kill": kill,
                            "freeze": freeze, "daemon": daemon}


def config(runtime: str, proxy_id: str) -> dict[str, object]:
    return {
        "logging": {"level": "warning"},
        "server": {"upstream_timeout": "2s", "connect_timeout": "2s"},
        "backend": {"type": runtime, "proxy_id": proxy_id},
        "containers": {"svc": {"image": "lazy-proxy/model-service:latest", "instance_type": "basic",
                               "sleep_after": "3s", "start_timeout": "30s", "max_instances": 20,
                               "replace_after_timeouts": 2}},
        "routes": [{"path": "/k/{id}/{tail:.*}", "container": "svc", "key": "{id}", "upstream_path": "/{tail}"}],
    }


async def traffic(base: str, seconds: float, inject: Callable[[], Awaitable[None]]) -> Round:
    out = Round()
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=CLIENTS)) as session:
        async def client(i: int) -> None:
            n = i
            while time.monotonic() < end:
                key = KEYS[n % len(KEYS)]
                n += 1
                out.results.append(await timed_get(session, f"{base}/k/{key}/api/health"))

        async def warm(key: str) -> None:
            async with session.get(f"{base}/k/{key}/api/health") as resp:
                await resp.read()

        await asyncio.gather(*(warm(key) for key in KEYS))
        end = time.monotonic() + seconds
        clients = [asyncio.create_task(client(i)) for i in range(CLIENTS)]
        await asyncio.sleep(seconds / 3)
        out.began = time.monotonic()
        await inject()
        out.applied = time.monotonic()
        await asyncio.gather(*clients)
    return out


async def orphans(raw: aiodocker.Docker, proxy_id: str) -> int:
    """Containers of this proxy still running after it exited (it stops what it started on SIGTERM)."""
    filters = json.dumps({"label": [f"proxy.instance={proxy_id}"], "status": ["running"]})
    return len(await raw.containers.list(filters=filters))


async def clean(raw: aiodocker.Docker, proxy_id: str) -> None:
    for c in await raw.containers.list(all=True, filters=json.dumps({"label": [f"proxy.instance={proxy_id}"]})):
        try:
            await c.delete(force=True)
        except aiodocker.DockerError:
            pass


async def one(runtime: str, name: str, seconds: float) -> dict[str, object]:
    proxy_id = f"bf{uuid.uuid4().hex[:8]}"
    port = free_port()
    raw = aiodocker.Docker(url=SOCKETS[runtime])
    try:
        with proxy(config(runtime, proxy_id), port) as server:
            result = await traffic(f"http://127.0.0.1:{port}", seconds, lambda: FAULTS[name](raw, proxy_id, runtime))
            code = server.stop()
        report = result.report()
        report.update(runtime=runtime, fault=name, proxy_exit=code, orphans=await orphans(raw, proxy_id))
        return report
    finally:
        await clean(raw, proxy_id)
        await raw.close()


async def main_async(runtimes: list[str], faults: list[str], seconds: float) -> list[dict[str, object]]:
    reports = []
    for runtime in runtimes:
        for name in faults:
            began = time.monotonic()
            reports.append(await one(runtime, name, seconds))
            print(f"# {runtime} {name}: {json.dumps(reports[-1]['by_status'])} in {time.monotonic() - began:.1f} s",
                  flush=True)
    return reports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults")
    parser.add_argument("--runtime", choices=["docker", "podman", "both"], default="both")
    parser.add_argument("--fault", choices=list(FAULTS), action="append", help="only these (repeatable)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="12 s of traffic per fault")
    size.add_argument("--smoke", action="store_true", help="stop and freeze on docker, 4 s each (CI)")
    args = parser.parse_args(argv)
    runtimes = ["docker", "podman"] if args.runtime == "both" else [args.runtime]
    faults = args.fault or list(FAULTS)
    seconds = 12.0 if args.quick else 20.0
    if args.smoke:
        runtimes, faults, seconds = ["docker"], ["stop", "freeze"], 4.0
    reports = asyncio.run(main_async(runtimes, faults, seconds))
    statuses = sorted({s for r in reports for s in r["by_status"]})  # type: ignore[attr-defined]
    table(["runtime", "fault", "requests", *[f"{s or 'conn err'}" for s in statuses], "errors sent after",
           "502 sent after", "recovery s", "orphans"],
          [[r["runtime"], r["fault"], r["requests"], *[r["by_status"].get(s, 0) for s in statuses],  # type: ignore[attr-defined]
            r["errors_sent_after_fault"], r["502_sent_after_fault"], r["recovery_s"], r["orphans"]] for r in reports],
          title=f"faults under traffic ({CLIENTS} clients, {len(KEYS)} keys, {seconds:g} s per fault)")
    summary("faults", {"rounds": reports})
    return 0 if all(r["orphans"] == 0 and r["proxy_exit"] == 0 for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
