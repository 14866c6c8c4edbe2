"""Rolling a new image out under traffic: `surge` vs `replace` (proxy/scale/rollout.py).

    python -m bench.rollout [--smoke | --quick] [--runtime stub docker podman] [--keys 10] [--strategy surge replace]

The proxy runs as `python -m proxy --config FILE` (its own process); this process is the client: one worker
per key asking the key's container-info in a loop. After a few seconds of traffic the config file's image (env,
on the stub) changes and the proxy gets SIGHUP; the run ends when every key answers with the new content and
/container-status shows every key on the new generation. Reported per runtime and strategy: the time to roll,
failed requests, p50/p99 before and during the rollout (and the slowest request during it: a `replace`
key's requests wait for its cold start), extra containers at peak (docker/podman: counted through
the runtime's API every 100 ms; stub: keys being replaced, from /metrics). `--smoke`: stub, 4 keys.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import tarfile
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from bench.lib.common import (PY, SEED_ENDPOINTS, Server, env_with_root, free_port, metric_sum, metrics_samples, pct,
                           summary, table)

ROLLOUT_IMAGE = "lprollout-test/model"  # the images this bench (and tests/test_rollout_engines.py) builds
BOUND = 300.0  # seconds a rollout may take before the run gives up on it


async def derived_image(socket: str, base: str, tag: str, title: str, *, never_ready: bool = False) -> str:
    """`ROLLOUT_IMAGE:tag`: `base` with a file of its own (different content) and API_TITLE=`title`; with
    `never_ready`, a process that never listens. Built by the daemon from a Dockerfile."""
    import aiodocker

    lines = [f"FROM {base}", "COPY version.txt /version.txt", f"ENV API_TITLE={title}"]
    if never_ready:
        lines.append('ENTRYPOINT ["python", "-c", "import time; time.sleep(100000)"]')
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in (("Dockerfile", "\n".join(lines) + "\n"), ("version.txt", title + "\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data.encode())
            tar.addfile(info, io.BytesIO(data.encode()))
    buffer.seek(0)
    name = f"{ROLLOUT_IMAGE}:{tag}"
    docker = aiodocker.Docker(url=socket)
    try:
        await docker.images.build(fileobj=buffer, encoding="application/x-tar", tag=name, rm=True)
        await docker.images.inspect(name)
    finally:
        await docker.close()
    return name


def config(runtime: str, image: str, strategy: str, proxy_id: str, title: str | None) -> dict[str, Any]:
    klass: dict[str, Any] = {
        "image": image, "port": 8080, "sleep_after": "10m", "start_timeout": "60s", "max_instances": 100,
        "stop_timeout": "2s", "readiness": {"path": "/v2/health/ready", "interval": "20ms"},
        "env": {"API_TITLE": title} if title is not None else {},
        "rollout": {"strategy": strategy, "steps": [10, 100], "max_surge": 1},
    }
    if runtime != "stub":
        klass.update(pull="never", instance_type={"memory": "512MiB", "cpus": 1.0})
    return {"admin": SEED_ENDPOINTS, "logging": {"level": "warning"}, "metrics": {"key_label_limit": 1000},
            "backend": {"type": runtime, "proxy_id": proxy_id},
            "containers": {"web": klass},
            "routes": [{"path": "/k/{id}/{tail:.*}", "container": "web", "key": "{id}", "upstream_path": "/{tail}"}]}


class Load:
    """One worker per key: (time, latency, ok, title) of every request."""

    def __init__(self, base: str, keys: list[str]) -> None:
        self.base, self.keys = base, keys
        self.samples: list[tuple[float, float, bool, str]] = []
        self.latest: dict[str, str] = {}
        self.stopping = False

    async def worker(self, session: aiohttp.ClientSession, key: str) -> None:
        while not self.stopping:
            began = time.monotonic()
            ok, title = False, ""
            try:
                async with session.get(f"{self.base}/k/{key}/api/container-info") as response:
                    body = await response.read()
                    ok = response.status == 200
                    title = json.loads(body).get("api_title", "") if ok else ""
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                pass
            self.samples.append((began, time.monotonic() - began, ok, title))
            if ok:
                self.latest[key] = title
            await asyncio.sleep(0.01)


async def one_run(runtime: str, strategy: str, keys: int, before: float) -> dict[str, Any]:
    proxy_id = f"lprollout-b{uuid.uuid4().hex[:6]}"
    socket = _socket(runtime)
    if runtime == "stub":
        old, new, titles = "model_service", "model_service", ("one", "two")
    else:
        from backends.image import ensure_image
        base = (await ensure_image(runtime, socket=socket)).tag
        old = await derived_image(socket, base, "one", "one")
        new = await derived_image(socket, base, "two", "two")
        titles = ("one", "two")
    port = free_port()
    fd, path = tempfile.mkstemp(prefix="bench-rollout-", suffix=".json")
    os.close(fd)
    title_one = titles[0] if runtime == "stub" else None
    Path(path).write_text(json.dumps(config(runtime, old, strategy, proxy_id, title_one)))
    base_url = f"http://127.0.0.1:{port}"
    server = Server([PY, "-m", "proxy", "--config", path, "--port", str(port)], f"{base_url}/health",
                    env=env_with_root())
    key_names = [f"b{i}" for i in range(keys)]
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                         timeout=aiohttp.ClientTimeout(total=60)) as session:
            for start in range(0, keys, 3):
                await asyncio.gather(*(session.get(f"{base_url}/k/{k}/api/container-info")
                                       for k in key_names[start:start + 3]))
            load = Load(base_url, key_names)
            workers = [asyncio.create_task(load.worker(session, k)) for k in key_names]
            await asyncio.sleep(before)
            title_two = titles[1] if runtime == "stub" else None
            Path(path).write_text(json.dumps(config(runtime, new, strategy, proxy_id, title_two)))
            reloaded = time.monotonic()
            os.kill(server.pid, signal.SIGHUP)
            peak, rolled = 0, None
            while time.monotonic() - reloaded < BOUND:
                peak = max(peak, await _extra(runtime, socket, proxy_id, base_url, keys, session))
                if all(load.latest.get(k) == titles[1] for k in key_names):
                    status = await (await session.get(f"{base_url}/container-status")).json()
                    if status.get("generations", {}).get("web") == {"1": keys}:
                        rolled = time.monotonic() - reloaded
                        break
                await asyncio.sleep(0.1)
            load.stopping = True
            await asyncio.gather(*workers)
    finally:
        server.stop()
        os.unlink(path)
        if runtime != "stub":
            await _remove(socket, proxy_id)
    pre = [s for s in load.samples if s[0] < reloaded]
    during = [s for s in load.samples if reloaded <= s[0] <= reloaded + (rolled or BOUND)]
    return {"runtime": runtime, "strategy": strategy, "keys": keys, "rolled_seconds": rolled,
            "requests": len(load.samples), "failed": sum(not s[2] for s in load.samples),
            "p50_before_ms": pct([s[1] * 1000 for s in pre], 50), "p99_before_ms": pct([s[1] * 1000 for s in pre], 99),
            "p50_during_ms": pct([s[1] * 1000 for s in during], 50),
            "p99_during_ms": pct([s[1] * 1000 for s in during], 99),
            "max_during_ms": max((s[1] * 1000 for s in during), default=float("nan")), "extra_at_peak": peak}


def _socket(runtime: str) -> str:
    if runtime == "stub":
        return ""
    from backends.docker import default_docker_socket
    from backends.podman import DEFAULT_SOCKET
    return os.environ.get("PODMAN_HOST") or DEFAULT_SOCKET if runtime == "podman" else default_docker_socket()


async def _extra(runtime: str, socket: str, proxy_id: str, base: str, keys: int,
                 session: aiohttp.ClientSession) -> int:
    """Instances beyond one per key now: the runtime's running containers of this proxy (stub: /metrics)."""
    if runtime == "stub":
        async with session.get(f"{base}/metrics") as response:
            samples = metrics_samples(await response.text())
        return int(metric_sum(samples, "proxy_rollout_instances", state="draining"))
    import aiodocker

    from backends.base import LABEL_PROXY_ID
    docker = aiodocker.Docker(url=socket)
    try:
        filters = json.dumps({"label": [f"{LABEL_PROXY_ID}={proxy_id}"], "status": ["running"]})
        return max(0, len(await docker.containers.list(filters=filters)) - keys)
    finally:
        await docker.close()


async def _remove(socket: str, proxy_id: str) -> None:
    import aiodocker

    from backends.base import LABEL_PROXY_ID
    docker = aiodocker.Docker(url=socket)
    try:
        filters = json.dumps({"label": [f"{LABEL_PROXY_ID}={proxy_id}"]})
        for container in await docker.containers.list(all=True, filters=filters):
            try:
                await container.delete(force=True)
            except aiodocker.DockerError:
                pass
    finally:
        await docker.close()


async def amain(args: argparse.Namespace) -> int:
    rows = []
    for runtime in args.runtime:
        for strategy in args.strategy:
            rows.append(await one_run(runtime, strategy, args.keys, args.before))
    table(["runtime", "strategy", "keys", "roll s", "requests", "failed", "p50 before", "p99 before",
           "p50 during", "p99 during", "max during", "extra peak"],
          [[r["runtime"], r["strategy"], r["keys"], r["rolled_seconds"], r["requests"], r["failed"],
            r["p50_before_ms"], r["p99_before_ms"], r["p50_during_ms"], r["p99_during_ms"], r["max_during_ms"],
            r["extra_at_peak"]]
           for r in rows], title="rollout: keys under traffic move to a new image (latencies in ms)")
    summary("rollout", {"runs": rows})
    return 0 if all(r["rolled_seconds"] is not None for r in rows) else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="stub, 4 keys, 2 s of traffic before")
    p.add_argument("--quick", action="store_true", help="10 keys, 5 s before (the default)")
    p.add_argument("--runtime", nargs="+", default=["stub"], choices=("stub", "docker", "podman"))
    p.add_argument("--strategy", nargs="+", default=["surge", "replace"], choices=("surge", "replace"))
    p.add_argument("--keys", type=int, default=10)
    p.add_argument("--before", type=float, default=5.0, help="seconds of traffic before the reload")
    args = p.parse_args()
    if args.smoke:
        args.runtime, args.keys, args.before = ["stub"], 4, 2.0
    return asyncio.run(amain(args))


if __name__ == "__main__":
    raise SystemExit(main())
