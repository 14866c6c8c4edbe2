"""The owner replica SIGKILLed (or SIGTERMed) under steady traffic: how long until another replica serves its key,
and what failed.

    python -m bench.failover [--rounds 3] [--ttl 2 5] [--signal kill|term] [--quick | --smoke]
    python -m bench.failover --fault freeze|partition|leader [--rounds 1] [--ttl 2]

`--fault`: the owner frozen (SIGSTOP/SIGCONT) or cut off etcd (a relay blackholed) for three lease ttls, or
etcd's leader killed, under traffic over three keys with sleep_after shorter than the fault (bench/lib/fence.py):
failed requests, time to serve again, containers per key, stops or pauses by anyone during the round.

`--signal term` is a rolling restart's step instead: the owner drains, hands its running container over
(`cluster.handover`) and revokes its lease, so the gap is a drain and an adoption, not a lease expiry.

Per round: a 3-member etcd on 127.0.0.1, three `python -m proxy` replicas on it (docker backend, the same
`backend.proxy_id`), one key warmed, then `CLIENTS` clients loop requests for it through the two replicas that
do not own it (forwarded to the owner). After `KILL_AT` seconds the owner is SIGKILLed (no drain, no lease
revoke). Reported: requests and answers by status, failures in flight at the kill (sent before, answered
after) and sent after it, the gap (kill -> first 200 to a request sent after the kill), the longest wait of a
request sent after the kill, the key's running containers before and after (the same one: adopted), and real
starts (not adoptions) on the survivors.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from typing import Any

import aiohttp

from backends.docker import default_docker_socket
from backends.image.build import DEFAULT_TAG, ensure_image
from bench.lib.cluster import Etcd, Replicas, remove_containers, running_containers, starts
from bench.lib.common import summary, table, timed_get
from bench.lib.fence import FAULTS, healthy, run_fault

CLIENTS = 8
KILL_AT = 3.0  # seconds of traffic before the kill
PATH = "/s/v2/health/ready"


def config(socket: str, proxy_id: str) -> dict[str, Any]:
    return {
        "logging": {"level": "warning"},
        "server": {"upstream_timeout": "5s", "connect_timeout": "2s"},
        "backend": {"type": "docker", "proxy_id": proxy_id, "docker": {"socket": socket}},
        "containers": {"svc": {"image": DEFAULT_TAG, "port": 8080, "instance_type": {"memory": "512MiB", "cpus": 1.0},
                               "readiness": {"path": "/v2/health/ready", "interval": "20ms"},
                               "sleep_after": "120s", "start_timeout": "40s"}},
        "routes": [{"path": "/s/{tail:.*}", "container": "svc", "key": "shared", "upstream_path": "/{tail}"}],
    }


async def _traffic(session: aiohttp.ClientSession, port: int, stop: asyncio.Event,
                   log: list[tuple[float, float, int]]) -> None:
    while not stop.is_set():
        log.append(await timed_get(session, f"http://127.0.0.1:{port}{PATH}"))
        await asyncio.sleep(0.01)


async def run_round(lease_ttl: float, after: float | None = None, logdir: str | None = None,
                    sig: int = signal.SIGKILL) -> dict[str, Any]:
    """One failover; `after`: seconds of traffic after the kill (default two ttls and 6 s)."""
    await ensure_image("docker")
    socket = default_docker_socket()
    proxy_id = f"fo{uuid.uuid4().hex[:8]}"
    base = config(socket, proxy_id)
    logdir = logdir or tempfile.mkdtemp(prefix="bench-failover-")
    with Etcd(3) as etcd:
        replicas = Replicas(base, etcd.endpoints, 3, lease_ttl, logdir)
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
                async with session.get(f"http://127.0.0.1:{replicas.ports[0]}{PATH}") as response:
                    assert response.status == 200, await response.text()
                owner = replicas.owner_of("shared")
                before = await running_containers(socket, proxy_id)
                entries = [port for i, port in enumerate(replicas.ports) if i != owner]
                log: list[tuple[float, float, int]] = []
                stop = asyncio.Event()
                clients = [asyncio.create_task(_traffic(session, entries[i % 2], stop, log)) for i in range(CLIENTS)]
                await asyncio.sleep(KILL_AT)
                killed = time.monotonic()
                replicas.kill(owner, sig)
                await asyncio.sleep(after if after is not None else 2 * lease_ttl + 6)
                stop.set()
                await asyncio.gather(*clients)
                exit_code = await replicas.exited(owner)
            after_kill = [(s - killed, d - killed, code) for s, d, code in log if d > killed]
            sent_after = [(s, d, code) for s, d, code in after_kill if s >= 0]
            served = [d for s, d, code in sent_after if code == 200]
            return {
                "signal": signal.Signals(sig).name,
                "owner_exit_code": exit_code,
                "lease_ttl": lease_ttl,
                "requests": len(log),
                "by_status": dict(sorted(Counter(code for _, _, code in log).items())),
                "failed_in_flight": sum(1 for s, _, code in after_kill if s < 0 and code != 200),
                "failed_sent_after": sum(1 for _, _, code in sent_after if code != 200),
                "gap_s": round(min(served), 3) if served else None,
                "longest_wait_s": round(max(d - s for s, d, _ in sent_after), 3) if sent_after else None,
                "containers_before": len(before),
                "same_container_after": await running_containers(socket, proxy_id) == before,
                "survivor_starts": starts(entries, "proxy_container_start_duration_seconds_count"),
                "survivor_adoptions": starts(entries) - starts(entries, "proxy_container_start_duration_seconds_count"),
            }
        finally:
            replicas.stop()
            await remove_containers(socket, proxy_id)


async def main_async(ttls: list[float], rounds: int, after: float | None, sig: int) -> list[dict[str, Any]]:
    reports = []
    for ttl in ttls:
        for _ in range(rounds):
            reports.append(await run_round(ttl, after, sig=sig))
            print(f"# ttl {ttl:g}s: {reports[-1]}", flush=True)
    return reports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.failover")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ttl", type=float, nargs="+", default=[2.0, 5.0], help="cluster.lease_ttl values")
    parser.add_argument("--signal", choices=["kill", "term"], default="kill",
                        help="SIGKILL the owner (failover by lease expiry) or SIGTERM it (drain and handover)")
    parser.add_argument("--fault", choices=FAULTS, help="a fault on the owner (or etcd's leader) instead of a kill")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="one round per ttl")
    size.add_argument("--smoke", action="store_true", help="one round, ttl 2 s, 6 s after the kill")
    args = parser.parse_args(argv)
    if args.fault:
        return fault_main(args.fault, args.ttl if args.ttl != [2.0, 5.0] else [2.0], 1 if args.quick or args.smoke
                          else args.rounds)
    ttls, rounds, after = ([2.0], 1, 6.0) if args.smoke else (args.ttl, 1 if args.quick else args.rounds, None)
    sig = signal.SIGTERM if args.signal == "term" else signal.SIGKILL
    reports = asyncio.run(main_async(ttls, rounds, after, sig))
    table(["lease_ttl s", "requests", "by status", "failed in flight", "failed sent after", "gap s",
           "longest wait s", "same container", "survivor starts"],
          [[r["lease_ttl"], r["requests"], " ".join(f"{k or 'conn'}:{v}" for k, v in r["by_status"].items()),
            r["failed_in_flight"], r["failed_sent_after"], r["gap_s"], r["longest_wait_s"],
            r["same_container_after"], r["survivor_starts"]] for r in reports],
          title=f"owner {signal.Signals(sig).name}ed under traffic ({CLIENTS} clients through the two other replicas)")
    summary("failover", {"signal": signal.Signals(sig).name, "rounds": reports})
    ok = all(r["failed_sent_after"] == 0 and r["same_container_after"] and r["survivor_starts"] == 0
             and r["gap_s"] is not None and r["gap_s"] < r["lease_ttl"] + 5 for r in reports)
    return 0 if ok else 1


def fault_main(fault: str, ttls: list[float], rounds: int) -> int:
    async def run() -> list[dict[str, Any]]:
        reports = []
        for ttl in ttls:
            for _ in range(rounds):
                reports.append(await run_fault(fault, ttl))
                print(f"# {fault} ttl {ttl:g}s: {reports[-1]}", flush=True)
        return reports

    reports = asyncio.run(run())
    table(["lease_ttl s", "fault s", "requests", "by status", "failed before end", "failed sent after",
           "last failure s", "longest wait s", "max running/key", "stops+pauses", "starts", "ws after"],
          [[r["lease_ttl"], r["fault_s"], r["requests"],
            " ".join(f"{k or 'conn'}:{v}" for k, v in r["by_status"].items()),
            r["failed_before_end"], r["failed_sent_after"], r["last_failure_s"], r["longest_wait_s"],
            r["max_running_per_key"],
            r["stops_or_pauses"], r["starts"], r["ws_echo_after"]] for r in reports],
          title=f"fault {fault} on the owner of {reports[0]['keys']} keys under traffic through the two other replicas")
    summary("failover", {"fault": fault, "rounds": reports})
    return 0 if all(healthy(r) for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
