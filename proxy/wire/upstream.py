"""Raw keep-alive HTTP/1.1 connections to one instance, for the fast path.

An `UpstreamConnection` is an asyncio.Protocol with httptools' response parser: it writes a request
already serialised by the caller and reports the response to its current `ResponseSink` as parsed pieces
(head, body bytes, end), so the exchange can pass them on without building any objects. Connections
return to their instance's `UpstreamPool` when a response ends cleanly and both sides allow reuse;
the pool is closed when the instance stops, so nothing is ever sent to a dead or reused address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from typing import Any, Protocol

import httptools

from proxy.wire.websocket import HOP_BY_HOP

MAX_IDLE = 64  # idle connections kept per instance; more are closed when they come back
MAX_HEAD = 64 * 1024  # a response head kept whole for relaying as received
# A header line whose name is hop-by-hop (in a head as received: "\r\n" starts each header line).
HOP_LINE = re.compile(b"\r\n(?:" + b"|".join(re.escape(h.encode()) for h in sorted(HOP_BY_HOP)) + b")[ \t]*:",
                      re.IGNORECASE)
# On a lowered head: each Content-Length line (its digits captured), a `Connection: close` or `keep-alive` line
# (its value captured) and each other hop-by-hop header line (a superset of HOP_BY_HOP: any proxy-*), in one
# pass. `_whole` wants one length and at most one plain Connection line.
_FRAMING = re.compile(rb"\n(?:content-length[ \t]*:[ \t]*([0-9]{1,15})[ \t]*\r"
                      rb"|connection[ \t]*:[ \t]*(close|keep-alive)[ \t]*\r"
                      rb"|(?:connection|keep-alive|proxy-[a-z-]*|te|trailers?|transfer-encoding|upgrade)[ \t]*:)")

_CONNECTION = re.compile(rb"\nconnection[ \t]*:")


class ResponseSink(Protocol):
    """What a connection reports to while it carries one exchange."""

    def on_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], raw_head: bytes | None) -> bool:
        """Relay the head; True when the body is framed (Content-Length, chunked, or none by status).

        `raw_head` is the head exactly as received (status line and header lines, without the blank
        line) when it is at hand; `headers` are the same lines parsed."""

    def on_body(self, data: bytes) -> None: ...

    def on_flush(self) -> None: ...

    def on_end(self, reusable: bool) -> None: ...

    def on_whole(self, status: int, data: bytes, head_end: int, reusable: bool) -> None:
        """A whole answer came in one read and can go out as it came (see `UpstreamConnection._whole`):
        `data[:head_end]` is the head without its blank line. The exchange ends with it; `reusable`: the
        connection may carry another request (else the instance closes it: HTTP/1.0, `Connection: close`).
        No `on_upstream_data` comes before it (the exchange ends: no silence to time), so it counts as one."""

    def on_upstream_data(self) -> None: ...

    def on_upstream_lost(self, error: str, got_response: bool) -> None: ...


class _Nothing:
    """Where a closed connection's parser would report: nowhere (see `connection_lost`)."""


_CLOSED = httptools.HttpResponseParser(_Nothing())


class UpstreamConnection(asyncio.Protocol):
    __slots__ = ("pool", "transport", "sink", "_parser", "_headers", "_reason", "_interim", "_framed",
                 "_got_response", "_complete", "_keep_alive", "_bodyless", "_drain", "_raw_head", "_head_buf",
                 "_partial")

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.sink: ResponseSink | None = None
        self._parser: httptools.HttpResponseParser | None = None  # made for the first answer `_whole` cannot take
        self._headers: list[tuple[bytes, bytes]] = []
        self._reason = b""
        self._interim = False
        self._framed = False  # Content-Length or chunked: the end is known without a close
        self._got_response = False
        self._complete = False
        self._keep_alive = False
        self._bodyless = False
        self._drain: asyncio.Future[None] | None = None
        self._raw_head: bytes | None = None  # the response head as received, for relaying it unchanged
        self._head_buf = b""
        self._partial = b""  # a whole-able answer's first part, its short body still on its way (`_whole`)

    # ---------------------------------------------------------------- use by an exchange

    def send(self, sink: ResponseSink, data: bytes, bodyless: bool = False) -> None:
        """Write a request; `bodyless` for HEAD, whose answer ends with its head."""
        self.carry(sink, bodyless)
        assert self.transport is not None
        self.transport.write(data)

    def carry(self, sink: ResponseSink, bodyless: bool = False) -> None:
        """Report to `sink` from now on: its request is written (by `send`, or by a cheap connect's first send)."""
        self.sink = sink
        self._got_response = self._complete = False
        self._bodyless = bodyless
        self._raw_head, self._head_buf, self._partial = None, b"", b""

    async def drain(self) -> None:
        """Wait while the instance's socket buffer is full (request bodies stream at its pace)."""
        if self._drain is not None:
            await self._drain

    def abandon(self) -> None:
        """The exchange ended early: this connection's state is unknown, so it is never reused."""
        self.sink = None
        if self.transport is not None:
            self.transport.abort()

    # ---------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        sink = self.sink
        if sink is None:  # bytes on an idle connection: the instance broke the protocol
            self.abandon()
            return
        if not self._got_response:
            if self._partial:
                data, self._partial = self._partial + data, b""
            if not self._head_buf and not self._bodyless and self._whole(sink, data):
                return  # (`on_whole` counts as the instance's answer: no clock read for `on_upstream_data`)
            self._find_head(data)
        sink.on_upstream_data()
        self._parse(sink, data)

    def _parse(self, sink: ResponseSink, data: bytes) -> None:
        parser = self._parser
        if parser is None:  # (most closing answers are whole: their connection never needs one)
            parser = self._parser = httptools.HttpResponseParser(self)
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.sink = None
            self.abandon()
            sink.on_upstream_lost(f"invalid response from instance: {exc}", self._got_response)
            return
        if self._complete:
            self.sink = None
            sink.on_end(self._keep_alive)
        else:
            sink.on_flush()

    def _whole(self, sink: ResponseSink, data: bytes) -> bool:
        """The common answer, whole in one read: HTTP/1.1 or 1.0, a final status with a body, one Content-Length
        that matches what came, nothing hop-by-hop but one `Connection: close|keep-alive`. It is relayed without
        the parser's callbacks (a few µs per request), the Connection line left out and a 1.0 status line sent
        as 1.1 (as nginx answers); the parser, which has not seen it, stays at a message boundary. Such an answer
        whose short body is still on its way (busybox httpd writes the head, then sends the file) is kept until it
        is whole (`_partial`; an instance that closes first has it parsed as before). Anything else (chunked, 1xx,
        a body read to EOF, odd framing, a head split over reads) goes through the parser. What a head allows is
        a function of its bytes alone (`_shape`), remembered per pool: an instance repeats its heads (they
        differ by the Date line once a second), so most answers cost one dictionary look-up here."""
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = data[:end]
        shapes = self.pool.shapes
        shape = shapes.get(head)
        if shape is None:
            shape = _shape(head)
            if end <= MAX_SHAPE_HEAD:
                if len(shapes) >= MAX_SHAPES:
                    shapes.clear()
                shapes[head] = shape
        prefix, status, length, reusable = shape
        if length < 0:  # _NOT_WHOLE (by value, not identity: a compiled build may copy tuples)
            return False
        came = len(data) - end - 4
        if came != length:
            if came > length or end + 4 + length > MAX_HEAD:
                return False
            self._partial = data  # the rest of a short body is on its way: relayed whole when it came
            sink.on_upstream_data()
            return True
        self.sink = None
        if prefix is None:  # relayed as it came
            sink.on_whole(status, data, end + 2, reusable)
        else:
            sink.on_whole(status, prefix + data[end + 2:], len(prefix), reusable)
        return True

    def _find_head(self, data: bytes) -> None:
        """Keep the head's bytes: a response starts its connection's next chunk (one request at a time)."""
        buf = self._head_buf + data if self._head_buf else data
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            self._raw_head, self._head_buf = buf[:end + 2], b""
        elif len(buf) < MAX_HEAD:
            self._head_buf = buf
        else:
            self._head_buf = b""  # the parser's own limits decide; the head is relayed line by line

    def connection_lost(self, exc: Exception | None) -> None:
        if self._partial and self.sink is not None:  # a kept answer cut short: parsed as it would have been
            partial, self._partial = self._partial, b""
            self._find_head(partial)
            self._parse(self.sink, partial)
        self.pool.discard(self)
        self.transport = None  # (both cycles broken: a closed connection is freed at once, not by the GC)
        self._parser = _CLOSED
        sink, self.sink = self.sink, None
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        if sink is None:
            return
        if self._got_response and not self._framed and not self._interim:
            sink.on_end(False)  # a body delimited by the close: this is its end
        else:
            reason = f"{type(exc).__name__}: {exc}" if exc else "connection closed by instance"
            sink.on_upstream_lost(reason, self._got_response)

    def pause_writing(self) -> None:
        if self._drain is None or self._drain.done():
            self._drain = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._drain = None

    # ---------------------------------------------------------------- httptools callbacks

    def on_message_begin(self) -> None:
        self._headers = []
        self._framed = False

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self._parser is not None  # (its own callback)
        status = self._parser.get_status_code()
        reason, self._reason = self._reason, b""
        self._interim = 100 <= status < 200  # 1xx interim answers are not relayed
        raw_head, self._raw_head = self._raw_head, None
        if self._interim:
            return  # (the final head that follows is relayed line by line)
        self._got_response = True
        assert self.sink is not None
        self._framed = self.sink.on_head(status, reason, self._headers, raw_head)
        if self._bodyless:  # the parser would wait for a body a HEAD answer never has: end here, reuse never
            self._complete, self._keep_alive = True, False

    def on_body(self, data: bytes) -> None:
        if self.sink is not None:
            self.sink.on_body(data)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self._complete = True
        assert self._parser is not None
        self._keep_alive = self._parser.should_keep_alive()  # only valid inside the callback


# What `_whole` may do with an answer whose head (status line and header lines, no blank line) is the key:
# _NOT_WHOLE, or (the head to send with its last line's CRLF, None when it goes as it came; the status; the
# Content-Length; whether the instance keeps the connection).
_Shape = tuple[bytes | None, int, int, bool]
_NOT_WHOLE: _Shape = (None, 0, -1, False)
MAX_SHAPES = 16  # heads remembered per pool; all forgotten when it is full (a new Date each second)
MAX_SHAPE_HEAD = 1024  # longer heads are not remembered (at most 16 KiB per pool)


def _shape(head: bytes) -> _Shape:
    """`_whole`'s rules for one head: see there."""
    data = head + b"\r\n"
    if data[12:13] not in (b" ", b"\r"):
        return _NOT_WHOLE
    changed = False
    if data.startswith(b"HTTP/1.1 "):
        reusable = True
    elif data.startswith(b"HTTP/1.0 "):
        reusable, changed = False, True
        data = b"HTTP/1.1" + data[8:]
    else:
        return _NOT_WHOLE
    status_text = data[9:12]
    if not status_text.isdigit() or status_text in (b"204", b"304") or status_text[0] in b"01":
        return _NOT_WHOLE
    lowered = data.lower()
    found = _FRAMING.findall(lowered)  # (length, connection value) per matched line; ("", "") other hop-by-hop
    if len(found) == 2 and not found[0][0]:
        found.reverse()  # (the Connection line came first)
    if not 0 < len(found) <= 2 or not found[0][0] or len(found) == 2 and not found[1][1]:
        return _NOT_WHOLE  # no length, a second one, or another hop-by-hop header
    if len(found) == 2:  # hop-by-hop: the client's connection is ours to keep or close
        reusable, changed = found[1][1] == b"keep-alive", True
        start = _CONNECTION.search(lowered).start() + 1  # type: ignore[union-attr]  # (findall saw it)
        stop = lowered.find(b"\n", start) + 1
        data = data[:start] + data[stop:]
    return (data if changed else None), int(status_text), int(found[0][0]), reusable


class UpstreamPool:
    """Idle keep-alive connections to one instance, most recently used first."""

    __slots__ = ("host", "port", "authority", "connect_timeout", "_idle", "_busy", "closed", "family", "closes",
                 "shapes", "poller")

    def __init__(self, host: str, port: int, connect_timeout: float) -> None:
        self.host = host
        self.port = port
        self.authority = (f"[{host}]:{port}" if ":" in host else f"{host}:{port}").encode()  # for Host
        self.connect_timeout = connect_timeout
        self._idle: list[UpstreamConnection] = []
        self._busy: set[UpstreamConnection] = set()  # lent to exchanges: cut too if the instance goes
        self.closed = False
        self.family = _numeric_family(host)  # 0: a name (connects go through the loop's resolver)
        self.closes = False  # its last answer said the instance closes (proxy/wire/closing.py connects cheaply)
        self.shapes: dict[bytes, _Shape] = {}  # answer heads seen, and what `UpstreamConnection._whole` may do
        self.poller: Any = None  # where cheap connections wait for answers (proxy/wire/closing.py: it knows the type)

    @property
    def busy(self) -> int:
        """Connections lent to exchanges now (requests in flight on this instance)."""
        return len(self._busy)

    def take(self) -> UpstreamConnection | None:
        while self._idle:
            conn = self._idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                self._busy.add(conn)
                return conn
        return None

    async def connect(self) -> UpstreamConnection:
        if self.closed:
            raise ConnectionRefusedError("the instance is gone")
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.connect_timeout):  # (no extra task, unlike wait_for: one per closing answer)
            _, conn = await loop.create_connection(lambda: UpstreamConnection(self), self.host, self.port)
        if self.closed or conn.transport is None or conn.transport.is_closing():
            # The instance went while we connected, or a port proxy accepted for an instance that is gone and
            # hung up at once: nothing was sent, so this is a refused connect.
            conn.abandon()
            raise ConnectionRefusedError("the instance is gone")
        self._busy.add(conn)
        return conn

    def lend(self, conn: UpstreamConnection) -> None:
        """A fresh connection made elsewhere (proxy/wire/closing.py) now carries an exchange."""
        self._busy.add(conn)

    def put(self, conn: UpstreamConnection) -> None:
        self._busy.discard(conn)
        if self.closed or len(self._idle) >= MAX_IDLE:
            conn.abandon()
        else:
            self._idle.append(conn)

    def discard(self, conn: UpstreamConnection) -> None:
        self._busy.discard(conn)
        if conn in self._idle:  # (rarely: a connection closed while lent is not idle; no exception per close)
            self._idle.remove(conn)

    def __len__(self) -> int:
        return len(self._idle)

    def close(self) -> None:
        """The instance is gone: idle connections are dropped, and those still carrying an exchange are
        cut, so it learns now (and may retry elsewhere) instead of waiting out upstream_timeout."""
        self.closed = True
        idle, self._idle = self._idle, []
        busy, self._busy = self._busy, set()
        for conn in idle:
            conn.abandon()
        for conn in busy:
            if conn.transport is not None:
                conn.transport.abort()  # its exchange hears it in connection_lost


def _numeric_family(host: str) -> int:
    """The address family of a numeric host, 0 for a name."""
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return 0
