"""Open-loop, rate-limited HTTP load generator (wrk2 is not packaged): run as its own process.

    python -m bench.lib.openloop URL --rate R --seconds S [--conns 64]

Requests are scheduled at fixed intervals regardless of how fast answers come back; each latency is
measured from its *scheduled* send time, so a stalled server (or a generator falling behind) shows up
in the percentiles instead of being hidden (no coordinated omission). Prints one JSON line.

By default GETs go through a minimal HTTP/1.1 keep-alive client on asyncio protocols (a pool of
`--conns` connections; responses must carry Content-Length): it costs a fraction of aiohttp's client
per request, so on a 2-core machine the generator steals less CPU from the servers it measures.
`--client aiohttp` uses aiohttp's ClientSession instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.fut: asyncio.Future[int] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0 or self.fut is None:
            return
        head = bytes(self.buf[:end]).lower()
        i = head.find(b"content-length:")
        if i < 0:
            self.fut.set_exception(RuntimeError("no content-length"))
            return
        length = int(head[i + 15:].split(b"\r\n", 1)[0])
        if len(self.buf) >= end + 4 + length:
            status = int(head[9:12])
            del self.buf[:end + 4 + length]
            fut, self.fut = self.fut, None
            fut.set_result(status)
            if b"\r\nconnection: close" in head and self.transport is not None:
                self.transport.close()  # the server's last answer on it: `one` connects anew

    def connection_lost(self, exc: Exception | None) -> None:
        if self.fut is not None and not self.fut.done():
            self.fut.set_exception(ConnectionError("closed"))


async def run_raw(url: str, rate: float, seconds: float, conns: int) -> dict[str, float]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    request = (f"GET {parts.path or '/'}{'?' + parts.query if parts.query else ''} HTTP/1.1\r\n"
               f"Host: {parts.netloc}\r\nUser-Agent: bench-openloop\r\n\r\n").encode()
    loop = asyncio.get_running_loop()
    idle: asyncio.Queue[_Conn] = asyncio.Queue()
    for _ in range(conns):
        _, proto = await loop.create_connection(_Conn, parts.hostname, parts.port)
        idle.put_nowait(proto)
    lat: list[float] = []
    errors = 0

    async def one(target: float) -> None:
        nonlocal errors
        conn = await idle.get()
        if conn.transport is None or conn.transport.is_closing():  # closed by the server while idle (nginx closes
            _, conn = await loop.create_connection(_Conn, parts.hostname, parts.port)  # a client's after 1000)
        conn.fut = loop.create_future()
        assert conn.transport is not None
        conn.transport.write(request)
        try:
            status = await conn.fut
        except Exception:  # noqa: BLE001 - counted; replace the connection
            errors += 1
            _, conn = await loop.create_connection(_Conn, parts.hostname, parts.port)
            idle.put_nowait(conn)
            return
        idle.put_nowait(conn)
        if status >= 400:
            errors += 1
        else:
            lat.append(time.perf_counter() - target)

    for _ in range(min(conns, 16)):  # warm
        await one(time.perf_counter())
    lat.clear()
    n, elapsed = await _open_loop(one, rate, seconds)
    while not idle.empty():
        c = idle.get_nowait()
        if c.transport is not None:
            c.transport.close()
    return _result(lat, n, errors, elapsed)


async def _open_loop(one, rate: float, seconds: float) -> tuple[int, float]:
    """Fire `one(target_time)` at a fixed rate whatever the answers do (open loop); (requests, elapsed)."""
    n = int(rate * seconds)
    tasks = []
    t0 = time.perf_counter() + 0.05
    for i in range(n):
        target = t0 + i / rate
        delay = target - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(target)))
    await asyncio.gather(*tasks)
    return n, time.perf_counter() - t0


def _result(lat: list[float], n: int, errors: int, elapsed: float) -> dict[str, float]:
    lat.sort()

    def p(q: float) -> float:
        return lat[min(len(lat) - 1, int(round(q / 100 * (len(lat) - 1))))] * 1000 if lat else float("nan")

    return {"requests": n, "ok": len(lat), "errors": errors, "achieved_rps": n / elapsed,
            "p50": p(50), "p90": p(90), "p99": p(99), "max": p(100)}


async def run(url: str, rate: float, seconds: float, conns: int) -> dict[str, float]:
    connector = aiohttp.TCPConnector(limit=conns, keepalive_timeout=60)
    lat: list[float] = []
    errors = 0
    async with aiohttp.ClientSession(connector=connector) as session:
        # warm the pool
        await asyncio.gather(*(session.get(url) for _ in range(min(conns, 16))), return_exceptions=True)

        async def one(target: float) -> None:
            nonlocal errors
            try:
                async with session.get(url) as resp:
                    await resp.read()
                    if resp.status >= 400:
                        errors += 1
                        return
            except Exception:  # noqa: BLE001 - counted
                errors += 1
                return
            lat.append(time.perf_counter() - target)

        n, elapsed = await _open_loop(one, rate, seconds)
    return _result(lat, n, errors, elapsed)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--rate", type=float, required=True)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--client", choices=("raw", "aiohttp"), default="raw")
    args = ap.parse_args()
    try:
        import uvloop  # type: ignore[import-not-found]

        uvloop.install()
    except ImportError:
        pass
    fn = run_raw if args.client == "raw" else run
    print(json.dumps(asyncio.run(fn(args.url, args.rate, args.seconds, args.conns))))


if __name__ == "__main__":
    main()
