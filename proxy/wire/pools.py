"""Upstream connection pools per instance, closed when that instance stops.

Each running instance has an aiohttp ClientSession (the aiohttp path: cold starts, WebSockets) and a
raw `UpstreamPool` (the fast path). A single shared pool would keep idle keep-alive connections to
stopped instances until its own cleanup ran, and could offer a new instance on a reused port a
connection meant for the old one.
"""

from __future__ import annotations

import asyncio

import aiohttp

from backends.base import Instance
from proxy.wire.h2upstream import H2Pool
from proxy.wire.upstream import UpstreamPool

# aiohttp's client adds these when absent; a proxy must not send headers the client did not.
NO_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")


class Pools:
    def __init__(self, connect_timeout: float) -> None:
        self.connect_timeout = connect_timeout
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._upstreams: dict[str, UpstreamPool] = {}
        self._h2: dict[str, H2Pool] = {}  # classes with `protocol: h2c|grpc`
        self._closing: set[asyncio.Task[None]] = set()

    def session(self, instance: Instance) -> aiohttp.ClientSession:
        session = self._sessions.get(instance.id)
        if session is None:
            # auto_decompress off: bodies pass through byte for byte, Content-Encoding and all.
            session = self._sessions[instance.id] = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
                auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(), skip_auto_headers=NO_AUTO_HEADERS)
        return session

    def upstream(self, instance: Instance) -> UpstreamPool:
        pool = self._upstreams.get(instance.id)
        if pool is None:
            pool = self._upstreams[instance.id] = UpstreamPool(instance.host, instance.port, self.connect_timeout)
        return pool

    def h2(self, instance: Instance) -> H2Pool:
        pool = self._h2.get(instance.id)
        if pool is None:
            pool = self._h2[instance.id] = H2Pool(instance.host, instance.port, self.connect_timeout)
        return pool

    def __len__(self) -> int:
        """Instances that have pools (any kind)."""
        return len(self._sessions.keys() | self._upstreams.keys() | self._h2.keys())

    def session_connections(self) -> tuple[int, int]:
        """(idle, in use) connections of the aiohttp-path sessions (diagnostics; reads aiohttp internals here only)."""
        idle = in_use = 0
        for session in self._sessions.values():
            connector = session.connector
            idle += sum(len(v) for v in getattr(connector, "_conns", {}).values())
            in_use += len(getattr(connector, "_acquired", ()))
        return idle, in_use

    def fast_idle(self) -> int:
        """Idle keep-alive connections held for the fast path, over all instances."""
        return sum(len(pool) for pool in self._upstreams.values())

    def forget(self, instance: Instance) -> None:
        """The instance is gone (stopped, failed, crashed): close its connections now."""
        upstream = self._upstreams.pop(instance.id, None)
        if upstream is not None:
            upstream.close()
        h2 = self._h2.pop(instance.id, None)
        if h2 is not None:
            h2.close()
        session = self._sessions.pop(instance.id, None)
        if session is not None:
            task = asyncio.get_running_loop().create_task(session.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        for upstream in self._upstreams.values():
            upstream.close()
        self._upstreams.clear()
        for h2 in self._h2.values():
            h2.close()
        self._h2.clear()
        sessions, self._sessions = list(self._sessions.values()), {}
        await asyncio.gather(*(s.close() for s in sessions), *self._closing, return_exceptions=True)
