"""The floor for a Python proxy in front of an upstream that closes every connection (issue 28, item 1).

    python -m bench.closing_floor --port P --upstream-port U [--mode raw|transport]
    python -m bench.closing_floor --split nginx,lazy-proxy,floor-raw [--rounds N] [--seconds S]

A minimal relay on uvloop, the loop lazy-proxy runs on: one client connection kept alive, each request head
sent as received on a fresh upstream connection, the answer read to EOF and written back with its
`Connection: close` line left out. No routing, no config, no log, no metrics, no request id: what is left is
the cost of the connect, send, read and close themselves. `bench.overhead --variants floor-raw,floor-transport`
runs it next to nginx and lazy-proxy in the same run.

- `raw`: a plain non-blocking socket (the C `socket.SocketType`, `connect_ex`, then `send` at once: on
  loopback the handshake is usually done; else `add_writer`), `add_reader` + `recv` to EOF: no transport,
  protocol, future or task.
- `transport`: `loop.create_connection` with an asyncio.Protocol, from a task (what the product did).

`--split`: bench.overhead's variants on the busybox upstream, interleaved, each round's proxy CPU per request
split into user and system time (/proc utime and stime): the kernel's share (sockets, TCP) is the same for every
proxy; what differs is the user-space work.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import os
import socket
import tempfile
from pathlib import Path

CLOSE_LINE = b"Connection: close\r\n"


class Client(asyncio.Protocol):
    """One client connection: each whole request head is relayed by `relay` (requests without a body)."""

    def __init__(self, relay: object) -> None:
        self.relay = relay
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end >= 0:
            head, self.buf = self.buf[:end + 4], self.buf[end + 4:]
            self.relay(self, head)  # type: ignore[operator]

    def answer(self, response: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(response.replace(CLOSE_LINE, b"", 1))


def raw_relay(loop: asyncio.AbstractEventLoop, address: tuple[str, int]) -> object:
    def relay(client: Client, request: bytes) -> None:
        sock = socket.SocketType(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)  # (as the product)
        fd = sock.fileno()
        chunks: list[bytes] = []

        def readable() -> None:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if data:
                chunks.append(data)
                return
            loop.remove_reader(fd)
            sock.close()
            client.answer(b"".join(chunks))

        def send() -> None:
            sock.send(request)
            loop.add_reader(fd, readable)

        def writable() -> None:
            loop.remove_writer(fd)
            send()

        if sock.connect_ex(address) not in (0, errno.EINPROGRESS):
            sock.close()
            return
        try:
            send()
        except BlockingIOError:  # the handshake is not done yet
            loop.add_writer(fd, writable)

    return relay


class _Upstream(asyncio.Protocol):
    def __init__(self, client: Client) -> None:
        self.client = client
        self.chunks: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.answer(b"".join(self.chunks))


def transport_relay(loop: asyncio.AbstractEventLoop, address: tuple[str, int]) -> object:
    async def connect(client: Client, request: bytes) -> None:
        transport, _ = await loop.create_connection(lambda: _Upstream(client), *address)
        transport.write(request)

    def relay(client: Client, request: bytes) -> None:
        loop.create_task(connect(client, request))

    return relay


async def serve(port: int, upstream_port: int, mode: str) -> None:
    loop = asyncio.get_running_loop()
    address = ("127.0.0.1", upstream_port)
    relay = raw_relay(loop, address) if mode == "raw" else transport_relay(loop, address)
    server = await loop.create_server(lambda: Client(relay), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def _user_system(pids: list[int]) -> tuple[float, float]:
    tick = os.sysconf("SC_CLK_TCK")
    user = system = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        user, system = user + int(fields[11]), system + int(fields[12])
    return user / tick, system / tick


def split(names: list[str], rounds: int, seconds: int) -> None:
    from bench.lib.common import free_port, median, wrk
    from bench.overhead import CONNS, THREADS, VARIANTS, Setup, cores, upstream_server, warm

    proxy_cpus, upstream_cpus = cores()
    rows: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-closing-")))
        port = free_port()
        upstream = stack.enter_context(upstream_server("busybox", port, workdir, upstream_cpus))
        setup = Setup(port, upstream.pid, workdir, proxy_cpus)
        targets = [stack.enter_context(VARIANTS[n](n, setup)) for n in names]
        warm(targets, 1)
        for i in range(rounds):
            k = i % len(targets)
            for t in targets[k:] + targets[:k]:
                pids = t.proxy_pids()
                u0, s0 = _user_system(pids)
                requests = max(1.0, wrk(t.url, threads=THREADS, conns=CONNS, seconds=seconds)["requests"])
                u1, s1 = _user_system(pids)
                rows[t.name].append(((u1 - u0) * 1e6 / requests, (s1 - s0) * 1e6 / requests))
    print(f"proxy CPU us per request, user + system, busybox upstream, {rounds} interleaved rounds of {seconds} s")
    for name, runs in rows.items():
        users, systems = [u for u, _ in runs], [s for _, s in runs]
        print(f"{name:16} user {median(users):5.0f}  system {median(systems):5.0f}  total "
              f"{median([u + s for u, s in runs]):5.0f}   by round: " + " ".join(f"{u:.0f}+{s:.0f}" for u, s in runs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int)
    ap.add_argument("--upstream-port", type=int)
    ap.add_argument("--mode", choices=("raw", "transport"), default="raw")
    ap.add_argument("--split", help="comma-separated bench.overhead variants: user/system CPU split per request")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5)
    args = ap.parse_args()
    if args.split:
        split(args.split.split(","), args.rounds, args.seconds)
        return
    if args.port is None or args.upstream_port is None:
        ap.error("--port and --upstream-port are required (or --split)")
    import uvloop

    uvloop.run(serve(args.port, args.upstream_port, args.mode))


if __name__ == "__main__":
    main()
