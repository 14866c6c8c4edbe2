"""The floor: the least a Python reverse proxy on uvloop can do per request, to compare lazy-proxy with.

    python -m bench.floor --port P --upstream-port U [--log FILE] [--workers N]
    python -m bench.floor --cpu      # its Python CPU per request with no sockets (as bench/fastpath_cpu.py)

    # compiled (optional): a copy built by mypyc, then BENCH_FLOOR_MYPYC=/tmp/fm for the `floor-mypyc` variant
    mkdir /tmp/fm && cp bench/floor.py /tmp/fm && (cd /tmp/fm && mypyc floor.py && rm floor.py)

Issue 27 asks lazy-proxy for >= 0.9 x nginx's throughput at <= 1.3 x its CPU per request on a cheap keep-alive
upstream. Before calling that out of reach for Python, this measures the cheapest proxy that still does the
product's per-request duties, on the product's event loop (uvloop), side by side with nginx and the product
(`python -m bench.overhead --upstream static --variants nginx,lazy-proxy,floor`):

- asyncio protocols on both sides (duck-typed, not subclasses of asyncio.Protocol, so mypyc can compile this
  module as it is: see `--variants floor-mypyc`); one pooled keep-alive instance connection per request in
  flight (taken from a pool, put back after a whole answer);
- the request head found with bytes.find, its header lines walked once: hop-by-hop and X-Forwarded-* left
  out, `Host` replaced by the instance's address, X-Forwarded-For/-Proto/-Host and a made X-Request-Id (a
  random prefix plus a counter, as proxy/request_id.py) added, as lazy-proxy sends them;
- an answer with a Content-Length relayed whole in one write once all of it came, its `Connection` line left
  out (as lazy-proxy's whole-answer shortcut does); request bodies with a Content-Length are passed on;
- one JSON access line per request with lazy-proxy's fields, buffered and written every 50 ms or 64 KiB,
  and a request counter plus a latency histogram per status (what `proxy_requests_total` and the duration
  histogram cost at their cheapest).

What it leaves out (so it is a floor, not a product): routes and keys, lazy starts, leases and idle
deadlines, chunked or streamed bodies, pipelining, timeouts, error answers beyond a bare 502. `--workers N`
forks N processes that each accept on the port (SO_REUSEPORT), the kernel spreading connections over them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import time
from bisect import bisect_left
from json.encoder import encode_basestring_ascii as _json_str
from typing import Any

FLUSH_SECONDS = 0.05
FLUSH_BYTES = 64 * 1024
BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
# Request header names (lowered) not passed on as they came: hop-by-hop, replaced (Host, X-Forwarded-*).
SKIP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
                  b"upgrade", b"host", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})
BAD_GATEWAY = (b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: application/json\r\nContent-Length: 27\r\n"
               b"Connection: close\r\n\r\n{\"error\": \"upstream error\"}")


class Shared:
    """What every connection of one worker shares: the instance's address and pool, ids, the log, counters."""

    def __init__(self, loop: asyncio.AbstractEventLoop, host: str, port: int, log_fd: int) -> None:
        self.loop = loop
        self.host = host
        self.port = port
        self.authority = f"{host}:{port}".encode()
        self.idle: list[Upstream] = []
        self.id_base = int.from_bytes(os.urandom(8), "big") << 64
        self.id_next = 0
        self.log_fd = log_fd
        self.lines: list[str] = []
        self.size = 0
        self.timer: asyncio.TimerHandle | None = None
        self.second = -1
        self.stamp = ""
        self.requests: dict[int, int] = {}  # status -> count (proxy_requests_total)
        self.histogram: dict[int, list[float]] = {}  # status -> bucket counts, then sum

    def request_id(self) -> str:
        self.id_next += 1
        return "%032x" % (self.id_base + self.id_next)

    def record(self, method: str, path: str, status: int, seconds: float, client: str, rid: str, sent: int,
               received: int) -> None:
        """The counter, the histogram and the access line (lazy-proxy's fields and shape)."""
        self.requests[status] = self.requests.get(status, 0) + 1
        hist = self.histogram.get(status)
        if hist is None:
            hist = self.histogram[status] = [0.0] * (len(BUCKETS) + 2)
        hist[bisect_left(BUCKETS, seconds)] += 1
        hist[-1] += seconds
        now = time.time()
        if int(now) != self.second:
            self.second = int(now)
            self.stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.second))
        line = (f'{{"route": "/api/{{tail:.*}}", "key": "shared", "method": {_json_str(method)}, '
                f'"path": {_json_str(path)}, "status": {status}, "ms": {seconds * 1000:.2f}, "bytes": {sent}, '
                f'"request_bytes": {received}, "client": "{client}", "request_id": "{rid}", "event": "request", '
                f'"level": "info", "timestamp": "{self.stamp}.{int((now % 1) * 1e6):06d}Z"}}\n')
        self.lines.append(line)
        self.size += len(line)
        if self.size >= FLUSH_BYTES:
            self.flush()
        elif self.timer is None:
            self.timer = self.loop.call_later(FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.lines:
            data = "".join(self.lines).encode()
            self.lines, self.size = [], 0
            if self.log_fd >= 0:
                os.write(self.log_fd, data)


class Upstream:
    """One keep-alive connection to the instance; carries one request at a time for a `Client`."""

    def __init__(self, shared: Shared) -> None:
        self.shared = shared
        self.transport: Any = None
        self.client: Client | None = None
        self.buf = b""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            self.buf = buf
            return
        head = buf[:end + 2]
        at = head.find(b"\r\nContent-Length:")
        if at < 0:
            at = head.lower().find(b"\r\ncontent-length:")
        if at < 0:  # (not in this floor: chunked or read-to-close answers)
            self.fail()
            return
        total = end + 4 + int(head[at + 17:head.find(b"\r\n", at + 2)])
        if len(buf) < total:
            self.buf = buf
            return
        self.buf = b""
        conn = head.find(b"\r\nConnection:")
        head_len = end + 4
        if conn >= 0:  # hop-by-hop: the client's connection is the proxy's to keep
            cut = head.find(b"\r\n", conn + 2) - conn
            buf = buf[:conn] + buf[conn + cut:total]
            head_len -= cut
        elif len(buf) > total:
            buf = buf[:total]
        client, self.client = self.client, None
        self.shared.idle.append(self)
        if client is not None:
            client.answer(int(buf[9:12]), buf, head_len)

    def fail(self) -> None:
        client, self.client = self.client, None
        if self.transport is not None:
            self.transport.abort()
        if client is not None:
            client.bad_gateway()

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.shared.idle:
            self.shared.idle.remove(self)
        self.transport = None
        client, self.client = self.client, None
        if client is not None:
            client.bad_gateway()

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass


class Client:
    """A client connection: one request at a time (no pipelining in this floor)."""

    def __init__(self, shared: Shared) -> None:
        self.shared = shared
        self.transport: Any = None
        self.peer = ""
        self.buf = b""
        self.busy = False
        self.close_after = False
        self.method = ""
        self.path = ""
        self.rid = ""
        self.began = 0.0
        self.received = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.peer = transport.get_extra_info("peername")[0]

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        if self.busy:
            self.buf = buf
            return
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            self.buf = buf
            return
        first = buf.find(b"\r\n")
        method, target, version = buf[:first].split(b" ")
        shared = self.shared
        rid = shared.request_id()
        out = [method, b" ", target, b" HTTP/1.1\r\nHost: ", shared.authority, b"\r\n"]
        host = b""
        forwarded = b""
        length = 0
        close = version != b"HTTP/1.1"
        for line in buf[first + 2:end].split(b"\r\n"):
            name, _, value = line.partition(b":")
            lower = name.lower()
            if lower in SKIP:
                if lower == b"host":
                    host = value.strip()
                elif lower == b"x-forwarded-for":
                    forwarded += value.strip() + b", "
                elif lower == b"connection":
                    close = value.strip().lower() == b"close"
                continue
            if lower == b"content-length":
                length = int(value)
            out += (line, b"\r\n")
        total = end + 4 + length
        if len(buf) < total:  # (the body's rest comes later: wait for it whole)
            self.buf = buf
            return
        self.buf = buf[total:]
        out += (b"X-Forwarded-For: ", forwarded, self.peer.encode(), b"\r\nX-Forwarded-Proto: http\r\n")
        if host:
            out += (b"X-Forwarded-Host: ", host, b"\r\n")
        out += (b"X-Request-Id: ", rid.encode(), b"\r\n\r\n", buf[end + 4:total])
        self.busy, self.close_after = True, close
        self.method, self.path = method.decode(), target.decode().partition("?")[0]
        self.rid, self.received = rid, length
        self.began = shared.loop.time()
        request = b"".join(out)
        if shared.idle:
            up = shared.idle.pop()
            up.client = self
            up.transport.write(request)
        else:
            shared.loop.create_task(self.connect(request))

    async def connect(self, request: bytes) -> None:
        shared = self.shared
        try:
            _, up = await shared.loop.create_connection(lambda: Upstream(shared),  # type: ignore[type-var]
                                                        shared.host, shared.port)
        except OSError:
            self.bad_gateway()
            return
        up.client = self
        up.transport.write(request)

    def answer(self, status: int, data: bytes, head_len: int) -> None:
        if self.transport is None:
            return
        self.transport.write(data)
        self.done(status, len(data) - head_len)

    def bad_gateway(self) -> None:
        if self.transport is not None:
            self.transport.write(BAD_GATEWAY)
            self.close_after = True
            self.done(502, 27)

    def done(self, status: int, sent: int) -> None:
        shared = self.shared
        shared.record(self.method, self.path, status, shared.loop.time() - self.began, self.peer, self.rid, sent,
                      self.received)
        self.busy = False
        if self.close_after:
            self.transport.close()
        elif self.buf:
            self.data_received(b"")

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass


async def serve(sock: socket.socket, upstream_host: str, upstream_port: int, log_fd: int) -> None:
    loop = asyncio.get_running_loop()
    shared = Shared(loop, upstream_host, upstream_port, log_fd)
    stop = loop.create_future()
    def stopped() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped)
    server = await loop.create_server(lambda: Client(shared), sock=sock)  # type: ignore[arg-type,return-value]
    try:
        await stop
    finally:
        server.close()
        shared.flush()


def listener(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def run_worker(port: int, upstream_host: str, upstream_port: int, log: str) -> None:
    import uvloop

    log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if log else -1
    uvloop.run(serve(listener(port), upstream_host, upstream_port, log_fd))


class _Counting:
    """A transport that only counts bytes (for `--cpu`: no syscall, no event loop turn)."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 40000)

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def cpu_per_request(requests: int, repeat: int, request: bytes, answer: bytes) -> float:
    """Microseconds of CPU per request for this floor's Python work alone, as bench/fastpath_cpu.py measures
    lazy-proxy's (same request and answer bytes): best of `repeat` runs of `requests`."""
    loop = asyncio.new_event_loop()
    shared = Shared(loop, "127.0.0.1", 8080, -1)
    client, up = Client(shared), Upstream(shared)
    client.connection_made(_Counting())
    up.connection_made(_Counting())
    shared.idle.append(up)
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        for _ in range(requests):
            client.data_received(request)
            up.data_received(answer)
        best = min(best, time.process_time() - start)
        shared.flush()
    loop.close()
    return best * 1e6 / requests


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="the floor: the cheapest Python reverse proxy (issue 27)")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--upstream-port", type=int, default=0)
    ap.add_argument("--upstream-host", default="127.0.0.1")
    ap.add_argument("--log", default="", help="the access log (appended; each worker writes whole lines)")
    ap.add_argument("--workers", type=int, default=1, help="processes accepting on the port (SO_REUSEPORT)")
    ap.add_argument("--cpu", action="store_true", help="print the CPU per request with no sockets and exit")
    args = ap.parse_args(argv)
    if args.cpu:
        from bench.fastpath_cpu import ANSWERS, REQUESTS  # type: ignore[import-not-found]  # (lazy-proxy's bytes)

        for answer in ("keepalive", "plain"):
            us = cpu_per_request(10000, 5, REQUESTS["wrk"], ANSWERS[answer])
            print(f"answer {answer}: {us:.2f} us of CPU per request (best of 5 x 10000)")
        return
    if args.workers <= 1:
        run_worker(args.port, args.upstream_host, args.upstream_port, args.log)
        return
    children = []
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:
            try:
                run_worker(args.port, args.upstream_host, args.upstream_port, args.log)
            finally:
                os._exit(0)
        children.append(pid)
    for pid in children:  # (SIGTERM reaches every worker: the bench signals the whole process group)
        os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
