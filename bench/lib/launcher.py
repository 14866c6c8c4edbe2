"""Run the proxy like `python -m proxy`, plus what the benchmarks need.

    python -m bench.lib.launcher --config FILE --port P [--uvloop 0|1] [--upstream http://127.0.0.1:N]

- `--uvloop 1` installs uvloop before the loop is created (as proxy/__main__.py does when importable);
  `--uvloop 0` keeps the default asyncio loop even if uvloop is installed.
- `--upstream URL`: a tiny backend whose "start" returns an instance at URL (a model service running as its
  own process), so the proxy and its upstream do not share a process or an event loop. Stop only forgets
  the instance id (the upstream process keeps running).
- `GET /_bench/stats`: asyncio tasks, open fds, RSS, upstream connector connections, event loop class.

Only public proxy API is used.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
from dataclasses import replace
from urllib.parse import urlsplit

from aiohttp import web

from backends.base import ContainerSpec, Instance, InstanceState
from proxy.app import PROXY, create_app
from proxy.config.schema import load_config
from proxy.observe.logs import configure
from proxy.http.server import serve

from bench.lib.common import rss_kib


class ExternalBackend:
    """A `backends.base.Backend` whose every key maps to one already-running upstream process.

    Starting hands out a new instance id at that address; stopping forgets the id (the process keeps running,
    it is not ours). tests/engines/test_backend_contract.py checks this class against the protocol's signatures.
    """

    name = "external"

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self._ids = itertools.count(1)
        self._started: set[str] = set()

    async def start(self, key: str, spec: ContainerSpec) -> Instance:
        instance = Instance(key=key, class_name=spec.name, host=self.host, port=self.port,
                            id=f"ext-{key}-{next(self._ids)}")
        self._started.add(instance.id)
        return instance

    async def stop(self, instance: Instance) -> None:
        self._started.discard(instance.id)

    async def inspect(self, instance: Instance) -> InstanceState:
        return InstanceState.RUNNING if instance.id in self._started else InstanceState.MISSING

    async def exit_reason(self, instance: Instance) -> str | None:
        return None  # the upstream process is not ours to explain

    async def list_instances(self) -> list[Instance]:
        return []  # nothing survives this process to adopt

    async def cleanup_stopped(self) -> list[str]:
        return []  # a stopped instance leaves nothing behind

    async def close(self) -> None:
        self._started.clear()


async def stats(request: web.Request) -> web.Response:
    proxy = request.app[PROXY]
    idle, acquired = proxy.pools.session_connections()
    managers = list(proxy.registry)
    kinds: dict[str, int] = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        kind = target.split(":")[0] if ":" in target else ("file" if target.startswith("/") else target)
        kinds[kind] = kinds.get(kind, 0) + 1
    return web.json_response({
        "tasks": len(asyncio.all_tasks()),
        "fds": len(os.listdir("/proc/self/fd")),
        "fd_kinds": kinds,
        "rss_kib": rss_kib(),
        "upstream_idle_conns": idle,
        "upstream_acquired_conns": acquired,
        "upstream_fast_idle_conns": proxy.pools.fast_idle(),
        "managers": len(managers),
        "running": sum(1 for m in managers if m.state.value == "running"),
        "in_flight": sum(m.in_flight for m in managers),
        "loop": type(asyncio.get_running_loop()).__module__,
    })


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--uvloop", default="1")
    parser.add_argument("--upstream")
    args = parser.parse_args()
    config = replace(load_config(args.config), host=args.host, port=args.port)
    configure(config.log_level)
    if args.uvloop == "1":
        import uvloop  # type: ignore[import-not-found]

        uvloop.install()
    if os.environ.get("BENCH_GC") == "off":  # diagnostics: is a latency tail the cyclic GC?
        import gc

        gc.disable()
    backend = ExternalBackend(args.upstream) if args.upstream else None

    async def run() -> None:
        app = create_app(config, backend)
        app.router.add_get("/_bench/stats", stats)
        await serve(app, config.host, config.port, config.drain_timeout, tls=config.tls)

    asyncio.run(run())  # on uvloop's loop when installed above
    return 0


if __name__ == "__main__":
    sys.exit(main())
