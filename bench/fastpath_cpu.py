"""The fast path's own Python CPU per request, without sockets: a deterministic breakdown.

    python -m bench.fastpath_cpu [--requests N] [--repeat R] [--profile] [--answer keepalive|plain|close|http10]
                                 [--request wrk|browser] [--new-blocks] [--smoke]

On a shared, overloaded machine sampling profilers (py-spy) charge the time a process waits to be scheduled
to whatever line it was on (mostly the `write` that woke the load generator), and wall-clock profiles of a
proxy under wrk mostly measure the neighbours. This drives the real code instead: the proxy app is built
(`create_app`, the bench's external backend), the key is started, and then one `FastProtocol` (the client
connection) and one pooled `UpstreamConnection` are given transports that only count bytes. Each request is
`data_received` on the client side (aiohttp's parser, `FastPath.plan`, the request head, the exchange) and
`data_received` of the instance's answer on the upstream side (the whole-answer shortcut, the write to the
client, the lease released, the access line and the metrics). No syscall, no event loop turn: what is
left is the interpreter's work per request, measured as CPU time (`time.process_time`), best of R runs.
`--profile` prints cProfile's top functions (deterministic call counts; times inflated by the profiler).
`--answer plain`: an aiohttp app's answer (no Connection line, as the model service sends).
`--answer close|http10`: the instance closes after each answer (a fresh UpstreamConnection per request;
the connect itself, a syscall, is not in this number).
`--request browser`: a browser's 12-header navigation instead of wrk's 2-header request.
`--new-blocks`: every request's header block is one the proxy has not seen (its User-Agent numbered, 1,024 in
turn), so proxy/http/usual.py's memo of header blocks never helps (a client whose cookie changes each request).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import itertools
import pstats
import sys
import time
from dataclasses import replace
from typing import Any

from bench.lib.common import summary
from bench.lib.launcher import ExternalBackend
from proxy.app import PROXY, create_app
from proxy.config.schema import load_config
from proxy.http.server import ProxyRunner
from proxy.wire.upstream import UpstreamConnection

REQUESTS = {  # wrk's request (as the load benches send it), and a browser's navigation (12 headers)
    "wrk": b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\n\r\n",
    "browser": b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nConnection: keep-alive\r\n"
               b'sec-ch-ua: "Chromium";v="131", "Not_A Brand";v="24"\r\nsec-ch-ua-mobile: ?0\r\n'
               b"Upgrade-Insecure-Requests: 1\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 "
               b"(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36\r\nAccept: text/html,application/xhtml+xml,"
               b"application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8\r\nSec-Fetch-Site: none\r\n"
               b"Sec-Fetch-Mode: navigate\r\nSec-Fetch-Dest: document\r\nAccept-Encoding: gzip, deflate, br, zstd\r\n"
               b"Accept-Language: en-US,en;q=0.9\r\n\r\n",
}
NEW_BLOCKS = 1024  # header blocks --new-blocks takes in turn (twice proxy/http/usual.py's MEMO: none is kept)
BODY = b'{"status":"ok"}'
ANSWERS = {
    "keepalive": b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Sun, 06 Dec 2026 09:00:00 GMT\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 15\r\nConnection: keep-alive\r\n\r\n" + BODY,
    "plain": b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: 15\r\n"
             b"Date: Sun, 06 Dec 2026 09:00:00 GMT\r\nServer: Python/3.11 aiohttp/3.14\r\n\r\n" + BODY,
    "close": b"HTTP/1.1 200 OK\r\nDate: Sun, 06 Dec 2026 09:00:00 GMT\r\nConnection: close\r\n"
             b"Content-Type: application/json\r\nContent-Length: 15\r\n\r\n" + BODY,
    "http10": b"HTTP/1.0 200 OK\r\nServer: SimpleHTTP/0.6 Python/3.11.7\r\nDate: Sun, 06 Dec 2026 09:00:00 GMT\r\n"
              b"Content-type: application/json\r\nContent-Length: 15\r\n\r\n" + BODY,
}


class CountingTransport(asyncio.Transport):
    """A transport that keeps nothing: counts what is written, closes on request."""

    def __init__(self, peer: tuple[str, int] = ("127.0.0.1", 40000)) -> None:
        super().__init__()
        self.written = 0
        self.last = b""
        self.closing = False
        self._peer = peer

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += len(data)
        self.last = bytes(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._peer if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


def config_file(log_requests: bool) -> str:
    import json
    import tempfile

    raw = {"admin": {"enabled": False, "on_proxy_port": ["health"]}, "logging": {"requests": log_requests},
           "containers": {"svc": {"sleep_after": 0}},
           "routes": [{"path": "/api/{tail:.*}", "container": "svc", "key": "shared"}]}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(raw, f)
    return f.name


async def _ready(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The instance's stand-in for the start's readiness check only: 200 to anything, then close."""
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    await writer.drain()
    writer.close()


async def run(args: argparse.Namespace, result: dict[str, Any]) -> None:
    config = replace(load_config(config_file(not args.no_log)), host="127.0.0.1", port=0)
    ready = await asyncio.start_server(_ready, "127.0.0.1", 0)
    app = create_app(config, ExternalBackend(f"http://127.0.0.1:{ready.sockets[0].getsockname()[1]}"))
    runner = ProxyRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    proxy = app[PROXY]
    manager = next(iter(proxy.registry), None)
    if manager is None:  # the key's manager: made and started as a first request would
        handler = proxy.fast_path(app).router.resolve("/api/health")[0].only
        manager = handler.manager_for("shared")
    await manager.ensure_running(reason="request")
    server = runner.server
    assert server is not None
    client = server()
    client_tr = CountingTransport()
    client.connection_made(client_tr)
    answer = ANSWERS[args.answer]
    request = REQUESTS[args.request]
    variants = [request.replace(b"User-Agent: ", b"User-Agent: %04d-" % n) for n in range(NEW_BLOCKS)]
    turn = itertools.cycle(variants)
    new_blocks = args.new_blocks
    closing = args.answer != "keepalive"
    pool = proxy.pools.upstream(manager.instance)

    def upstream() -> UpstreamConnection:
        conn = UpstreamConnection(pool)
        conn.connection_made(CountingTransport())
        return conn

    if not closing:
        pool.put(upstream())

    def one() -> None:
        if closing:  # what a fresh connect hands the exchange (the connect's syscalls are not measured)
            pool.put(upstream())
        client.data_received(next(turn) if new_blocks else request)
        exchange = client._exchange  # noqa: SLF001 - the harness drives the exchange's connection itself
        assert exchange is not None and exchange.conn is not None, "the request did not take the fast path"
        conn = exchange.conn
        conn.data_received(answer)
        if closing:
            conn.connection_lost(None)

    one()
    assert client_tr.last.endswith(BODY), client_tr.last
    best = float("inf")
    for _ in range(args.repeat):
        t0 = time.process_time()
        for _ in range(args.requests):
            one()
        reqlog = proxy.reqlog
        if reqlog is not None:  # (timed too: the lines' last batch is part of their cost)
            reqlog.flush()
        best = min(best, (time.process_time() - t0) / args.requests)
    print(f"request {args.request}{' (new blocks)' if new_blocks else ''}, answer {args.answer}, "
          f"request log {'off' if args.no_log else 'on'}: "
          f"{best * 1e6:.2f} us of CPU per request (best of {args.repeat} x {args.requests})")
    result.update(us_per_request=best * 1e6, bytes_to_client=client_tr.written)
    if args.profile:
        prof = cProfile.Profile(time.process_time)  # CPU time: wall clock on a busy machine counts the neighbours
        prof.enable()
        for _ in range(args.requests):
            one()
        prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(args.top)
        print(out.getvalue())
    await runner.cleanup()
    ready.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--answer", choices=sorted(ANSWERS), default="keepalive")
    ap.add_argument("--request", choices=sorted(REQUESTS), default="wrk")
    ap.add_argument("--no-log", action="store_true", help="logging.requests: false")
    ap.add_argument("--new-blocks", action="store_true", help="a header block not seen before in each request")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--smoke", action="store_true", help="200 requests once: only proves it runs (CI)")
    args = ap.parse_args()
    if args.smoke:
        args.requests, args.repeat = 200, 1
    import logging

    logging.disable(logging.CRITICAL)
    sys.stderr = open("/dev/null", "w")  # the access lines
    try:
        import uvloop  # type: ignore[import-not-found]

        uvloop.install()
    except ImportError:
        pass
    result: dict[str, Any] = {"answer": args.answer, "requests": args.requests, "repeat": args.repeat}
    asyncio.run(run(args, result))
    summary("fastpath_cpu", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
