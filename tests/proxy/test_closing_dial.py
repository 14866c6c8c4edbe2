"""proxy/wire/closing.py: the cheap connect for instances that close every connection. A dial carries the
request and reports the answer through the same UpstreamConnection; a failed one sent nothing and reports the
error a `create_connection` would have raised (what Reconnect maps); nothing is left behind either way."""

from __future__ import annotations

import asyncio
import gc
import socket

import pytest

from proxy.wire.closing import SocketLink, dial
from tests.support.upstreams import silent_port
from proxy.wire.upstream import UpstreamConnection, UpstreamPool
from tests.proxy.test_upstream_whole import Recorder

CLOSE = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello"


class Sink(Recorder):
    framed = True

    def on_head(self, status, reason, headers, raw_head):
        super().on_head(status, reason, headers, raw_head)
        return self.framed


class Outcome:
    """The `done` callback of a dial, and the sink it sets: what came back, when."""

    def __init__(self, want: bool = True) -> None:
        self.want = want
        self.sink = Sink()
        self.conn: UpstreamConnection | None = None
        self.error: Exception | None = None
        self.settled = asyncio.Event()
        self.sink.on_whole = self._record(self.sink.on_whole)  # type: ignore[method-assign]
        self.sink.on_end = self._record(self.sink.on_end)  # type: ignore[method-assign]
        self.sink.on_upstream_lost = self._record(self.sink.on_upstream_lost)  # type: ignore[method-assign]

    def _record(self, method):
        def call(*args):
            method(*args)
            self.settled.set()
        return call

    def __call__(self, conn: UpstreamConnection | None, error: Exception | None) -> bool:
        self.conn, self.error = conn, error
        self.link_type = type(conn.transport) if conn is not None else None
        if conn is None:
            self.settled.set()
            return False
        if self.want:
            conn.carry(self.sink)
        return self.want


async def serve(answer: bytes, received: list[bytes] | None = None, expect: int = 0) -> asyncio.Server:
    """An instance that reads a request (`expect` bytes of it, else its head), answers `answer` and closes."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await (reader.readexactly(expect) if expect else reader.readuntil(b"\r\n\r\n"))
        if received is not None:
            received.append(data)
        writer.write(answer)
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def open_fds() -> int:
    """Open sockets (the loop's one epoll for cheap connections, made at its first dial, stays with the loop)."""
    os = __import__("os")
    return sum(1 for e in os.scandir("/proc/self/fd") if os.readlink(e.path).startswith("socket:"))


async def test_a_closing_answer_comes_back_whole_and_nothing_is_left():
    received: list[bytes] = []
    server = await serve(CLOSE, received)
    pool = UpstreamPool("127.0.0.1", server.sockets[0].getsockname()[1], connect_timeout=5)
    before = open_fds()
    outcome = Outcome()
    dial(asyncio.get_running_loop(), pool, b"GET /x HTTP/1.1\r\nHost: i\r\n\r\n", outcome)
    await asyncio.wait_for(outcome.settled.wait(), 10)
    assert received == [b"GET /x HTTP/1.1\r\nHost: i\r\n\r\n"]
    assert outcome.sink.calls == [("whole", 200, CLOSE[:CLOSE.index(b"\r\n\r\n") + 2].replace(
        b"Connection: close\r\n", b""), b"\r\nhello", "closes")]
    conn = outcome.conn
    assert conn is not None and outcome.link_type is SocketLink
    for _ in range(200):  # the instance's close is read: the connection leaves the pool's count
        if conn.transport is None:
            break
        await asyncio.sleep(0.01)
    assert conn.transport is None and pool.busy == 0 and len(pool) == 0
    assert open_fds() == before
    server.close()
    await server.wait_closed()


async def test_a_body_read_to_eof_ends_with_the_close():
    answer = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n" + b"x" * 300_000
    server = await serve(answer)
    pool = UpstreamPool("127.0.0.1", server.sockets[0].getsockname()[1], connect_timeout=5)
    outcome = Outcome()
    outcome.sink.framed = False  # (no Content-Length: the exchange's on_head says so)
    body: list[bytes] = []
    outcome.sink.on_body = body.append  # type: ignore[method-assign]
    dial(asyncio.get_running_loop(), pool, b"GET / HTTP/1.1\r\nHost: i\r\n\r\n", outcome)
    await asyncio.wait_for(outcome.settled.wait(), 10)
    assert ("head", 200) in outcome.sink.calls and outcome.sink.calls[-1] == ("end", False)
    assert b"".join(body) == b"x" * 300_000
    assert pool.busy == 0 and outcome.conn is not None and outcome.conn.transport is None
    server.close()
    await server.wait_closed()


async def test_a_request_larger_than_the_socket_takes_at_once_arrives_whole():
    body = bytes(range(256)) * 16_384  # 4 MiB: more than one send takes
    request = b"POST /up HTTP/1.1\r\nHost: i\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    received: list[bytes] = []
    server = await serve(CLOSE, received, expect=len(request))
    pool = UpstreamPool("127.0.0.1", server.sockets[0].getsockname()[1], connect_timeout=5)
    outcome = Outcome()
    dial(asyncio.get_running_loop(), pool, request, outcome)
    await asyncio.wait_for(outcome.settled.wait(), 20)
    assert received == [request] and outcome.sink.calls[0][:2] == ("whole", 200)
    server.close()
    await server.wait_closed()


async def test_a_refused_dial_sent_nothing_and_reports_an_oserror():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    before = open_fds()
    outcome = Outcome()
    pool = UpstreamPool("127.0.0.1", port, connect_timeout=5)
    dial(asyncio.get_running_loop(), pool, b"GET / HTTP/1.1\r\nHost: i\r\n\r\n", outcome)
    await asyncio.wait_for(outcome.settled.wait(), 10)
    assert outcome.conn is None and isinstance(outcome.error, ConnectionRefusedError)
    assert pool.busy == 0 and open_fds() == before


async def test_a_dial_to_a_pool_that_closed_is_a_refusal():
    pool = UpstreamPool("127.0.0.1", 9, connect_timeout=5)
    pool.close()
    outcome = Outcome()
    dial(asyncio.get_running_loop(), pool, b"GET / HTTP/1.1\r\n\r\n", outcome)
    assert outcome.conn is None and isinstance(outcome.error, ConnectionRefusedError)


async def test_a_silent_instance_times_out_as_reconnect_expects():
    with silent_port() as port:  # a frozen instance: SYNs unanswered
        pool = UpstreamPool("127.0.0.1", port, connect_timeout=0.3)
        for _ in range(8):  # (one may still find room in the queue: then the next one waits)
            outcome = Outcome()
            dial(asyncio.get_running_loop(), pool, b"GET / HTTP/1.1\r\nHost: i\r\n\r\n", outcome)
            await asyncio.wait_for(outcome.settled.wait(), 10)
            if outcome.conn is None:
                break
            outcome.conn.abandon()
        assert outcome.conn is None and isinstance(outcome.error, asyncio.TimeoutError)
        assert pool.busy == 0


async def test_a_dial_nobody_wants_any_more_is_closed():
    server = await serve(CLOSE)
    pool = UpstreamPool("127.0.0.1", server.sockets[0].getsockname()[1], connect_timeout=5)
    outcome = Outcome(want=False)
    dial(asyncio.get_running_loop(), pool, b"GET / HTTP/1.1\r\nHost: i\r\n\r\n", outcome)
    for _ in range(200):
        if outcome.conn is not None or outcome.error is not None:
            break
        await asyncio.sleep(0.01)
    assert outcome.conn is not None and outcome.conn.transport is None and pool.busy == 0
    server.close()
    await server.wait_closed()


async def test_a_dialed_connection_the_instance_keeps_is_pooled_and_freed_by_refcount():
    # An instance that answers keep-alive after all: its connection is pooled like any, and when the instance
    # closes it later it leaves the pool and is freed without the cyclic GC (no cycle through the link).
    hang_up = asyncio.Event()

    async def keep(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok2")
        await writer.drain()
        await hang_up.wait()
        writer.close()

    server = await asyncio.start_server(keep, "127.0.0.1", 0)
    pool = UpstreamPool("127.0.0.1", server.sockets[0].getsockname()[1], connect_timeout=5)
    outcome = Outcome()
    dial(asyncio.get_running_loop(), pool, b"GET / HTTP/1.1\r\nHost: i\r\n\r\n", outcome)
    await asyncio.wait_for(outcome.settled.wait(), 10)
    assert outcome.sink.calls[0][:2] == ("whole", 200) and "closes" not in outcome.sink.calls[0]
    conn = outcome.conn
    assert conn is not None
    pool.put(conn)
    assert pool.take() is conn
    second = Outcome()
    conn.send(second.sink, b"GET /2 HTTP/1.1\r\nHost: i\r\n\r\n")
    second.sink.on_whole = second._record(second.sink.on_whole)  # type: ignore[method-assign]
    await asyncio.wait_for(second.settled.wait(), 10)
    assert second.sink.calls[0][3] == b"\r\nok2"
    pool.put(conn)
    assert len(pool) == 1
    hang_up.set()
    for _ in range(200):
        if conn.transport is None:
            break
        await asyncio.sleep(0.01)
    assert conn.transport is None and len(pool) == 0
    ident = id(conn)
    gc.disable()
    try:
        outcome.conn = None  # (the test's own holder: an Outcome sits in a cycle with its sink's wrappers)
        del conn
        await asyncio.sleep(0)
        left = [o for o in gc.get_objects() if isinstance(o, UpstreamConnection) and id(o) == ident]
        assert not left, gc.get_referrers(*left)
    finally:
        gc.enable()
    server.close()
    await server.wait_closed()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_only_numeric_hosts_can_dial(host):
    family = UpstreamPool(host, 80, 1.0).family
    assert family == {"127.0.0.1": socket.AF_INET, "::1": socket.AF_INET6, "localhost": 0}[host]


def _epolls() -> int:
    os = __import__("os")
    return sum(1 for e in os.scandir("/proc/self/fd") if os.readlink(e.path) == "anon_inode:[eventpoll]")


def test_one_epoll_per_loop_for_every_dial_and_it_goes_with_the_loop():
    # The answers of cheap connections are waited for on one epoll of the loop's (not a loop reader each): many
    # dials on one loop add one epoll in all, and a loop that is gone leaves none behind.
    gc.collect()  # (earlier tests' loops, and their pollers, are gone first)
    before = _epolls()

    async def dials() -> int:
        server = await serve(CLOSE)
        pool = UpstreamPool("127.0.0.1", server.sockets[0].getsockname()[1], connect_timeout=5)
        counts = []
        for _ in range(5):
            outcome = Outcome()
            dial(asyncio.get_running_loop(), pool, b"GET / HTTP/1.1\r\nHost: i\r\n\r\n", outcome)
            await asyncio.wait_for(outcome.settled.wait(), 10)
            assert outcome.sink.calls[0][:2] == ("whole", 200)
            counts.append(_epolls())
        server.close()
        await server.wait_closed()
        assert len(set(counts)) == 1
        return counts[0]

    during = asyncio.run(dials())
    assert during == before + 2  # the loop's own and ours
    gc.collect()
    assert _epolls() == before


async def test_a_failing_answer_handler_is_reported_and_the_next_answers_still_come():
    # The poller calls each ready connection's reader itself: a failure is reported as the loop reports a failed
    # callback, and it stops neither the poller nor the other connections.
    loop = asyncio.get_running_loop()
    reported: list[BaseException | None] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context.get("exception")))
    server = await serve(CLOSE)
    pool = UpstreamPool("127.0.0.1", server.sockets[0].getsockname()[1], connect_timeout=5)
    broken = Outcome()

    def fail(*_args: object) -> None:
        broken.settled.set()
        raise RuntimeError("a bug in an answer's handler")

    broken.sink.on_whole = fail  # type: ignore[method-assign]
    dial(loop, pool, b"GET / HTTP/1.1\r\nHost: i\r\n\r\n", broken)
    await asyncio.wait_for(broken.settled.wait(), 10)
    assert len(reported) == 1 and isinstance(reported[0], RuntimeError)
    for _ in range(3):
        outcome = Outcome()
        dial(loop, pool, b"GET / HTTP/1.1\r\nHost: i\r\n\r\n", outcome)
        await asyncio.wait_for(outcome.settled.wait(), 10)
        assert outcome.sink.calls[0][:2] == ("whole", 200)
    assert len(reported) == 1
    assert broken.conn is not None
    broken.conn.abandon()
    loop.set_exception_handler(None)
    server.close()
    await server.wait_closed()
