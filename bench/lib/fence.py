"""A fault on a key's owner under traffic through the other replicas, and what fencing must keep true.

Faults: `freeze` (the owner SIGSTOPped for longer than the lease, then SIGCONTed, like a long GC pause or a VM
stall), `partition` (the owner's etcd traffic blackholed by a TCP relay this process controls, then healed) and
`leader` (etcd's leader SIGKILLed). Shared by bench/failover.py (`--fault`) and tests/engines/test_cluster_etcd.py.

Checked from docker's own event stream (labels name the key) and the clients' log: running containers per key
never above one, no container of the keys stopped, killed or paused during the round (sleep_after is shorter
than the fault, so a stale owner's idle timer falls due), every request sent after the fault ended answered
200, and a WebSocket opened through a peer after the fault echoes (the one container of its key).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import tempfile
import time
import uuid
from collections import Counter
from typing import Any

import aiohttp

from backends.base import LABEL_KEY, LABEL_PROXY_ID
from backends.docker import default_docker_socket
from backends.image.build import DEFAULT_TAG, ensure_image
from bench.lib.cluster import Etcd, Replicas, remove_containers
from bench.lib.common import timed_get
from proxy.cluster.store import Member, rendezvous

FAULTS = ("freeze", "partition", "leader")
KEYS = 3
CLIENTS = 6


class Relay:
    """A TCP relay to one etcd member that the caller can blackhole: while cut, nothing it carries moves and
    new connections hang; healing closes the connections cut meanwhile (their bytes are lost) and lets new
    ones through."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.cut = asyncio.Event()
        self.flowing = asyncio.Event()
        self.flowing.set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{self.port}"

    def blackhole(self) -> None:
        self.flowing.clear()

    def heal(self) -> None:
        for writer in list(self._writers):
            writer.close()
        self.flowing.set()

    async def close(self) -> None:
        self.heal()
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            await self.flowing.wait()
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            self._writers.add(up_writer)
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        except OSError:
            pass
        finally:
            writer.close()
            self._writers.discard(writer)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if not self.flowing.is_set():
                    return  # cut while in transit: dropped, and the connection with it
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()
            self._writers.discard(writer)


def config(socket: str, proxy_id: str, sleep_after: float) -> dict[str, Any]:
    return {
        "logging": {"level": "info", "requests": False},
        "server": {"upstream_timeout": "30s", "connect_timeout": "2s"},
        "backend": {"type": "docker", "proxy_id": proxy_id, "docker": {"socket": socket}},
        "containers": {"svc": {"image": DEFAULT_TAG, "port": 8080, "instance_type": {"memory": "512MiB", "cpus": 1.0},
                               "env": {"MODEL_SERVICE_DEBUG_ROUTES": "1"},
                               "readiness": {"path": "/v2/health/ready", "interval": "20ms"},
                               "sleep_after": f"{sleep_after}s", "start_timeout": "40s", "max_instances": 20}},
        "routes": [{"path": "/k/{id}/{tail:.*}", "container": "svc", "key": "{id}", "upstream_path": "/{tail}"}],
    }


async def _events(socket: str, proxy_id: str, since: float, until: float) -> list[dict[str, Any]]:
    """docker's container events of this round's containers (labelled with `proxy_id`)."""
    filters = json.dumps({"type": ["container"], "label": [f"{LABEL_PROXY_ID}={proxy_id}"]})
    connector = aiohttp.UnixConnector(path=socket.removeprefix("unix://"))
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get("http://docker/events", params={"since": f"{since:.3f}", "until": f"{until + 1:.3f}",
                                                               "filters": filters}) as response:
            return [json.loads(line) for line in (await response.read()).decode().splitlines() if line.strip()]


async def _running_per_key(socket: str, proxy_id: str) -> Counter[str]:
    filters = json.dumps({"label": [f"{LABEL_PROXY_ID}={proxy_id}"], "status": ["running"]})
    connector = aiohttp.UnixConnector(path=socket.removeprefix("unix://"))
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get("http://docker/containers/json", params={"filters": filters}) as response:
            return Counter(c["Labels"].get(LABEL_KEY, "") for c in await response.json())


def _leader(etcd: Etcd) -> int:
    """The index of etcd's leader (the member whose id its status names as leader)."""
    import urllib.request
    for i, endpoint in enumerate(etcd.endpoints):
        with contextlib.suppress(OSError, ValueError):
            request = urllib.request.Request(endpoint + "/v3/maintenance/status", data=b"{}", method="POST")
            with urllib.request.urlopen(request, timeout=2) as response:
                status = json.loads(response.read())
            if status.get("leader") == status.get("header", {}).get("member_id"):
                return i
    raise RuntimeError("no etcd leader found")


async def _ws_echo(session: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with session.ws_connect(url) as ws:
            await ws.send_str("ping")
            return (await ws.receive(timeout=10)).data == "ping"
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return False


async def run_fault(fault: str, lease_ttl: float = 2.0, fault_s: float | None = None, after: float | None = None,
                    logdir: str | None = None) -> dict[str, Any]:
    """One round of `fault` on the owner of KEYS keys; the report (see the module's docstring)."""
    assert fault in FAULTS, fault
    fault_s = 3 * lease_ttl if fault_s is None else fault_s
    after = 2 * lease_ttl + 2 if after is None else after
    sleep_after = max(1.0, fault_s - lease_ttl)  # shorter than the fault: a stale owner's idle stop falls due
    await ensure_image("docker")
    socket = default_docker_socket()
    proxy_id = f"fe{uuid.uuid4().hex[:8]}"
    logdir = logdir or tempfile.mkdtemp(prefix="bench-fence-")
    relays: list[Relay] = []
    with Etcd(3) as etcd:
        for endpoint in etcd.endpoints:
            relays.append(Relay(int(endpoint.rsplit(":", 1)[1])))
        relayed = [await relay.start() for relay in relays]
        # Replica 0 (the victim) reaches etcd only through the relays; the others directly.
        replicas = await asyncio.to_thread(Replicas, config(socket, proxy_id, sleep_after), etcd.endpoints, 3,
                                           lease_ttl, logdir, {0: relayed})
        try:
            members = [Member(f"r{port}", "") for port in replicas.ports]
            keys = [k for k in (f"f{i}" for i in range(500)) if rendezvous(f"svc/{k}", members) == members[0]][:KEYS]
            entries = replicas.ports[1:]
            report = await _round(fault, replicas, etcd, relays, keys, entries, socket, proxy_id, fault_s, after,
                                  lease_ttl, sleep_after)
            report["stale_stops_or_pauses"] = _own_actions(f"{logdir}/r{replicas.ports[0]}.log")
            return report
        finally:
            await asyncio.to_thread(replicas.stop)
            for relay in relays:
                await relay.close()
            await remove_containers(socket, proxy_id)


async def _round(fault: str, replicas: Replicas, etcd: Etcd, relays: list[Relay], keys: list[str],
                 entries: list[int], socket: str, proxy_id: str, fault_s: float, after: float, lease_ttl: float,
                 sleep_after: float) -> dict[str, Any]:
    victim = replicas.servers[0]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        for key in keys:  # started on the victim, their owner
            async with session.get(f"http://127.0.0.1:{replicas.ports[0]}/k/{key}/v2/health/ready") as response:
                assert response.status == 200, await response.text()
        began_wall = time.time()
        log: list[tuple[float, float, int]] = []
        peak: Counter[str] = Counter()
        stop = asyncio.Event()

        async def traffic(i: int) -> None:
            n = i
            while not stop.is_set():
                key, port = keys[n % len(keys)], entries[n % len(entries)]
                log.append(await timed_get(session, f"http://127.0.0.1:{port}/k/{key}/v2/health/ready"))
                n += 1
                await asyncio.sleep(0.02)

        async def watch() -> None:
            while not stop.is_set():
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    for key, count in (await _running_per_key(socket, proxy_id)).items():
                        peak[key] = max(peak[key], count)
                await asyncio.sleep(0.2)

        tasks = [asyncio.create_task(traffic(i)) for i in range(CLIENTS)] + [asyncio.create_task(watch())]
        await asyncio.sleep(1.0)
        began = time.monotonic()
        if fault == "freeze":
            victim.proc.send_signal(signal.SIGSTOP)
        elif fault == "partition":
            for relay in relays:
                relay.blackhole()
        else:
            etcd.kill(_leader(etcd))
        await asyncio.sleep(fault_s if fault != "leader" else 0.0)
        if fault == "freeze":
            victim.proc.send_signal(signal.SIGCONT)
        elif fault == "partition":
            for relay in relays:
                relay.heal()
        ended = time.monotonic()
        await asyncio.sleep(after)
        ws_ok = [await _ws_echo(session, f"http://127.0.0.1:{entries[0]}/k/{key}/debug/ws") for key in keys]
        stop.set()
        await asyncio.gather(*tasks)
    events = await _events(socket, proxy_id, began_wall, time.time())
    acted = Counter(e.get("Action", e.get("status", "")) for e in events)
    sent_after = [(s, d, code) for s, d, code in log if s >= ended]
    served = [d - ended for s, d, code in sent_after if code == 200]
    failed_during = [(s, code) for s, _, code in log if s < ended and code != 200]
    return {
        "fault": fault, "lease_ttl": lease_ttl, "fault_s": fault_s if fault != "leader" else 0.0,
        "sleep_after": sleep_after, "keys": len(keys), "requests": len(log),
        "by_status": dict(sorted(Counter(code for _, _, code in log).items())),
        "failed_before_end": len(failed_during), "failed_sent_after": sum(1 for *_, c in sent_after if c != 200),
        "first_200_after_s": round(min(served), 3) if served else None,  # after the fault ended
        "last_failure_s": round(max(d - began for s, d, c in log if c != 200), 3)  # after the fault began
        if any(c != 200 for *_, c in log) else None,
        "longest_wait_s": round(max((d - s for s, d, _ in log), default=0.0), 3),  # held through the fault
        "max_running_per_key": max(peak.values(), default=0),
        "stops_or_pauses": sum(acted[a] for a in ("stop", "kill", "die", "pause")),
        "starts": acted["start"], "ws_echo_after": all(ws_ok),
    }


def _own_actions(path: str) -> int:
    """Stops and pauses the victim (the stale owner) began itself, from its log: a transition to stopping or
    paused for any reason but its own shutdown at the end of the round."""
    count = 0
    with open(path, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            if '"event": "state"' not in line:
                continue
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if entry.get("to") in ("stopping", "paused") and entry.get("reason") != "shutdown":
                    count += 1
    return count


def broken(report: dict[str, Any]) -> list[str]:
    """What a round must show, as the list of what it did not: no failed request sent after the fault, never two
    running containers for one key, no stop or pause by the stale owner, a WebSocket through a peer echoes.
    (`stops_or_pauses` and `starts` count every replica's: the new owner may idle-stop a key it adopted while
    that key's requests were held by the frozen owner, and restart the same container for the next request;
    that is its right.)"""
    checks = {"a request sent after the fault failed": report["failed_sent_after"] == 0,
              "two containers ran for one key": report["max_running_per_key"] == 1,
              "the stale owner stopped or paused a container": report["stale_stops_or_pauses"] == 0,
              "no WebSocket echo through a peer": bool(report["ws_echo_after"])}
    return [what for what, ok in checks.items() if not ok]


def healthy(report: dict[str, Any]) -> bool:
    return not broken(report)
