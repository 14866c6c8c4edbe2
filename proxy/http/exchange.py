"""The exchange both data paths use: one request to a pooled instance connection, its answer back.

An `Exchange` holds the key's lease, writes the request (head as the client sent it, hop-by-hop
removed, X-Forwarded-* set; the body streamed at the instance's pace), relays the response as it is
parsed (headers as the instance sent them, chunked re-framed, small answers in one write) and
releases everything exactly once, whichever way it ends: complete, client gone, instance reset,
garbage, body over max_body_size, or silence past upstream_timeout (one sweep for all exchanges).
Its `Client` is the connection it answers on: the fast path's protocol, or the aiohttp path's request.
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, Protocol

from aiohttp import HttpVersion11, hdrs
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader

from proxy.errors import BodyTooLarge, Refusal, UpstreamError, refusal_bytes
from proxy.http.message import Message
from proxy.http.reconnect import Handler, Reconnect
from proxy.wire.websocket import HOP_BY_HOP, PEER_MARK
from proxy.request_id import HEADER_LOWER
from proxy.http.watch import ExchangeWatch
from proxy.wire.closing import AVAILABLE as CHEAP_DIAL, dial
from proxy.wire.upstream import HOP_LINE, UpstreamConnection, UpstreamPool

if TYPE_CHECKING:
    from proxy.lifecycle.manager import Manager


_HOP = frozenset(h.encode() for h in HOP_BY_HOP)
_REQUEST_SKIP = _HOP | {b"host", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", PEER_MARK.encode()}
_REQUEST_SKIP_ID = _REQUEST_SKIP | {HEADER_LOWER}  # a client's X-Request-Id that is replaced
_RESPONSE_SKIP = _HOP
NEVER_PROCESSED = 0.1  # seconds: a connection lost this soon after the send took no request with it
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})  # safe to send twice (RFC 9110)
_LENGTH_LINE = re.compile(rb"\r\ncontent-length[ \t]*:", re.IGNORECASE)


class Client(Protocol):
    """The client side of an exchange: where the answer goes."""

    loop: asyncio.AbstractEventLoop
    peer_host: str
    scheme: str

    def write(self, data: bytes) -> None: ...

    def close_now(self) -> None: ...

    def close_after_write(self) -> None: ...

    def keeps_alive(self, message: Message) -> bool: ...

    def exchange_done(self, exchange: Exchange, clean: bool) -> None: ...


def request_head(message: Message, target: str, pool: UpstreamPool, peer: str, scheme: str,
                 rid: str, given: bool) -> bytes:
    """The request as the instance receives it: the client's headers in order, hop-by-hop removed,
    Host set to the instance, X-Forwarded-For/-Proto/-Host set (earlier X-Forwarded-For kept), and the
    request id: the client's X-Request-Id where it stands when `given`, else `rid` added at the end."""
    skip = _REQUEST_SKIP if given else _REQUEST_SKIP_ID
    headers = message.headers
    if hdrs.CONNECTION in headers:  # headers the client named as hop-by-hop stay on this hop
        named = {t.strip().lower().encode() for v in headers.getall(hdrs.CONNECTION) for t in v.split(",")}
        skip = skip | named
        given = given and HEADER_LOWER not in named  # an id named hop-by-hop still goes on: appended below
    out = [b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (message.method.encode(), target.encode("utf-8", "surrogateescape"),
                                                  pool.authority)]
    forwarded = host = b""  # (earlier X-Forwarded-For values, each followed by ", ")
    for name, value in message.raw_headers:
        lower = name.lower()
        if lower in skip:
            if lower == b"x-forwarded-for":
                forwarded += value + b", "
            elif lower == b"host":
                host = value
            continue
        out += (name, b": ", value, b"\r\n")
    if message.chunked:
        out.append(b"Transfer-Encoding: chunked\r\n")
    out.append(b"X-Forwarded-For: %s%s\r\nX-Forwarded-Proto: %s\r\n" % (forwarded, peer.encode(), scheme.encode()))
    if host:
        out.append(b"X-Forwarded-Host: %s\r\n" % host)
    out.append(b"\r\n" if given else b"X-Request-Id: %s\r\n\r\n" % rid.encode())
    return b"".join(out)


class Exchange(Reconnect):
    """One relayed request: lease held, request sent, response relayed, everything released once."""

    __slots__ = ("exchanges", "client", "handler", "manager", "message", "payload", "key", "head",
                 "streaming", "conn", "sent_at", "status", "head_sent", "out", "chunked_out", "last_rx", "done",
                 "pump", "began", "retried", "extra_head", "fast", "bodyless", "sent", "rid",
                 "head_len", "ended", "kept")
    ended: float  # loop time of the exchange's end (set by _finish): the client's keep-alive timer starts there

    def __init__(self, exchanges: ExchangeWatch, client: Client, handler: Handler, manager: Manager,
                 pool: UpstreamPool, message: Message, payload: StreamReader, key: str,
                 head: bytes, rid: str, *, extra_head: bytes = b"", fast: bool = True) -> None:
        self.exchanges = exchanges
        self.client = client
        self.extra_head = extra_head  # response headers of the proxy's own (X-Proxy-Cold-Start)
        self.bodyless = message.method == "HEAD"  # the answer has a head only, whatever its headers say
        self.fast = fast  # the fast path records its own metrics; the aiohttp path's handler does
        self.handler = handler
        self.manager = manager
        self.pool = pool
        self.message = message
        self.payload = payload
        self.key = key
        self.head = head
        self.request = head
        self.streaming = False
        self.conn: UpstreamConnection | None = None
        self.sent_at = 0.0
        self.status = 0
        self.head_sent = False
        self.out: list[bytes] = []
        self.chunked_out = False
        self.done = False
        self.pump: asyncio.Task[None] | None = None
        self.retried = False  # a stale pooled connection was retried on a fresh one
        self.replaced = False  # a refused connect led to a new instance
        self.attempts = 0  # fresh connections tried (proxy/http/reconnect.py)
        self.sent = 0  # bytes written to the client: the key's egress, metered once in _finish
        self.head_len = 0  # of those, the response head's (the access line counts body bytes)
        self.rid = rid  # the request id (proxy/request_id.py)
        self.kept = False  # True: a whole answer just told the client the connection stays (on_whole)
        self.began = self.last_rx = client.loop.time()
        if fast:  # the aiohttp path's lease holds the key already: one request is one in flight
            manager.hold()
        exchanges.track(self)

    # ---------------------------------------------------------------- sending

    def start(self) -> None:
        payload = self.payload  # (no body: the request is the head, as __init__ set it)
        if payload is not EMPTY_PAYLOAD:
            if payload.is_eof():  # the whole body came with the head (most API calls)
                body = payload.read_nowait()
                if self.message.chunked and len(body) > self.exchanges.max_body:
                    self._body_too_large()
                    return
                self.request = self.head + (_chunk(body) + b"0\r\n\r\n" if self.message.chunked else body)
            else:
                self.streaming = True
        conn = self.pool.take()
        if conn is not None:
            self._send(conn, self.began)  # (sent in the same callback that began it: one clock read less)
        elif self.pool.closes and self.pool.family and not self.streaming and CHEAP_DIAL:
            self.attempts += 1  # (the first of REFUSED_RETRY_PAUSES: at once)
            dial(self.client.loop, self.pool, self.request, self._dialed)
        else:
            self.client.loop.create_task(self._connect())

    def _dialed(self, conn: UpstreamConnection | None, error: Exception | None) -> bool:
        """A cheap connect's outcome (proxy/wire/closing.py): the request is on `conn`, or nothing was sent and
        `error` is handled as any failed connect's (asked of the runtime, tried again, or the 502)."""
        if conn is None:
            if not self.done:
                self.client.loop.create_task(self._connect(error))
            return False
        if self.done:
            return False
        self.conn, self.sent_at = conn, self.client.loop.time()
        conn.carry(self, self.bodyless)
        return True

    def _send(self, conn: UpstreamConnection, now: float | None = None) -> None:
        self.conn, self.sent_at = conn, self.client.loop.time() if now is None else now
        conn.send(self, self.request, self.bodyless)
        if self.streaming:
            self.pump = self.client.loop.create_task(self._stream_body(conn))

    async def _stream_body(self, conn: UpstreamConnection) -> None:
        chunked, seen, limit = self.message.chunked, 0, self.exchanges.max_body
        try:
            async for data in self.payload.iter_any():
                seen += len(data)
                if seen > limit:
                    self._body_too_large()
                    return
                if conn.transport is None or conn.transport.is_closing():
                    return
                conn.transport.write(_chunk(data) if chunked else data)
                await conn.drain()
            if chunked and conn.transport is not None:
                conn.transport.write(b"0\r\n\r\n")
        except Exception:  # noqa: BLE001 - a broken client body ends the exchange
            self.client_lost()

    def _body_too_large(self) -> None:
        self._fail(BodyTooLarge(f"request body exceeds max_body_size={self.exchanges.max_body} bytes"), close=True)

    # ---------------------------------------------------------------- ResponseSink (called by the connection)

    def on_upstream_data(self) -> None:
        self.last_rx = self.client.loop.time()
        self._answered()

    def _answered(self) -> None:
        """The instance answers: its count of timeouts in a row starts again."""
        if self.exchanges.timeouts:
            self.exchanges.timeouts.pop(self.pool, None)

    def on_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], raw_head: bytes | None) -> bool:
        if raw_head is not None and raw_head.startswith(b"HTTP/1.1 ") and HOP_LINE.search(raw_head) is None:
            # The common case: nothing hop-by-hop in it, so the head goes out byte for byte as received.
            framed = status in (204, 304) or _LENGTH_LINE.search(raw_head) is not None
            chunked_in, lines = False, [raw_head]
        else:
            framed, chunked_in, lines = self._head_lines(status, reason, headers)
        self.status = status
        if (chunked_in or not framed) and not self.bodyless:  # chunked in, or ends with the close: chunked out
            if self.message.version >= HttpVersion11:
                self.chunked_out = True
                lines.append(b"Transfer-Encoding: chunked\r\n")
            else:  # an HTTP/1.0 client knows no chunks: the body ends with the connection
                self.client.close_after_write()
        lines.append(self._connection_line(self.client.keeps_alive(self.message)))
        lines.append(self.extra_head + b"\r\n")
        if self.extra_head:  # a request that waited for a start (the fast path never does): its first byte
            self.handler.metrics.first_byte(self.manager.klass.name, self.manager.key)
        head = b"".join(lines)
        self.head_len = len(head)
        self.out.append(head)
        self.head_sent = True
        return framed

    @staticmethod
    def _head_lines(status: int, reason: bytes,
                    headers: list[tuple[bytes, bytes]]) -> tuple[bool, bool, list[bytes]]:
        """The head rebuilt line by line, hop-by-hop headers (and those `Connection` names) left out."""
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
        has_length = chunked_in = False
        named: set[bytes] = set()
        for name, value in headers:
            lower = name.lower()
            if lower in _RESPONSE_SKIP:
                if lower == b"transfer-encoding":
                    chunked_in = True  # re-framed: the body is relayed chunked again
                elif lower == b"connection":
                    named.update(t.strip().lower() for t in value.split(b","))
                continue
            has_length = has_length or lower == b"content-length"
            lines.append(b"%s: %s\r\n" % (name, value))
        named -= {b"close", b"keep-alive"}
        if named:
            lines = lines[:1] + [line for line in lines[1:] if line.split(b":", 1)[0].lower() not in named]
        return has_length or chunked_in or status in (204, 304), chunked_in, lines

    def on_body(self, data: bytes) -> None:
        self.out.append(_chunk(data) if self.chunked_out else data)

    def on_whole(self, status: int, data: bytes, head_end: int, reusable: bool) -> None:
        self.status, self.head_sent = status, True
        self._answered()  # (not on_upstream_data: the exchange ends here, no silence to time)
        keep_alive = self.kept = self.client.keeps_alive(self.message)  # (the client's exchange_done reads it)
        self.head_len = head_end + 2  # (head_end: before the blank line)
        if self.extra_head or not keep_alive or not self.fast:  # (on the fast path: none) the lines on_head adds
            connection = self._connection_line(keep_alive)
            data = b"".join((data[:head_end], connection, self.extra_head, data[head_end:]))
            self.head_len += len(self.extra_head) + len(connection)
            if self.extra_head:
                self.handler.metrics.first_byte(self.manager.klass.name, self.manager.key)
        self._write(data)
        self.on_end(reusable)

    def _connection_line(self, keep_alive: bool) -> bytes:
        """`Connection: close` when the connection ends after this answer; `keep-alive` for an HTTP/1.0 client
        that asked for it (it keeps a connection only when told so, as nginx tells it); else none."""
        if not keep_alive:
            return b"Connection: close\r\n"
        return b"Connection: keep-alive\r\n" if self.message.version < HttpVersion11 else b""

    def on_flush(self) -> None:
        if self.out:
            self._write(b"".join(self.out))
            self.out.clear()

    def _write(self, data: bytes) -> None:
        """Every byte to the client goes through here, so egress is counted in one place."""
        self.sent += len(data)
        self.client.write(data)

    def on_end(self, reusable: bool) -> None:
        if not self.bodyless:  # (a HEAD answer is never reused, whatever the instance does)
            self.pool.closes = not reusable  # the next request to it connects cheaply (proxy/wire/closing.py)
        if self.chunked_out:
            self.out.append(b"0\r\n\r\n")
        if self.out:  # (a whole answer is written already)
            self.on_flush()
        conn, self.conn = self.conn, None
        if conn is not None:
            if reusable and (self.pump is None or self.pump.done()):
                self.pool.put(conn)
            else:
                conn.abandon()
        self._finish(self.status)

    def on_upstream_lost(self, error: str, got_response: bool) -> None:
        self.conn = None
        if (not got_response and not self.streaming and self.message.method in _IDEMPOTENT
                and self.client.loop.time() - self.sent_at < NEVER_PROCESSED):
            # Closed with no answer right after we sent: a pooled connection the instance had just closed (the
            # keep-alive race), or a port proxy that accepted for an instance that is going. The request most
            # likely never reached it: once more, on a fresh connection (which finds out what happened to the
            # instance), for idempotent requests only. A request that was on the instance longer is not sent
            # twice: that one gets its 502.
            if self.retried:  # the retry's fresh connection too: ask the runtime, as after a refusal
                self.client.loop.create_task(self._lost_again(error))
                return
            self.retried = True
            self.client.loop.create_task(self._connect())
            return
        self.manager.health.suspect()
        self._fail(UpstreamError(502, f"upstream connection failed: {error}" if not got_response
                                 else f"upstream broke mid-response: {error}"))

    # ---------------------------------------------------------------- endings

    def timed_out(self) -> None:
        if self.done:
            return
        self._fail(UpstreamError(504, "upstream did not answer within upstream_timeout"))
        self.exchanges.after_timeout(self)

    def _fail(self, refusal: Refusal, close: bool = False) -> None:
        """Answer with the refusal if nothing was sent yet, else cut the connection (the only honest signal)."""
        if self.done:
            return
        if self.conn is not None:
            self.conn.abandon()
            self.conn = None
        if self.head_sent:
            self.client.close_now()
        else:
            # (an HTTP/1.0 client would not know a refusal's connection stays: it is closed after it)
            close = close or not self.client.keeps_alive(self.message) or self.message.version < HttpVersion11
            if isinstance(refusal, UpstreamError):
                refusal.extra["key"] = self.key
            data, self.head_len = refusal_bytes(refusal, close, self.rid, self.handler.error_detail)
            self._write(data)
            if close:
                self.client.close_after_write()
        self._finish(refusal.status)

    def client_lost(self) -> None:
        """The client went away: the instance's answer has nowhere to go."""
        if self.done:
            return
        if self.conn is not None:
            self.conn.abandon()
            self.conn = None
        self._finish(499)

    def _finish(self, status: int) -> None:
        if self.done:
            return
        self.done = True
        self.status = status
        self.exchanges.active.discard(self)
        pump = self.pump
        if pump is not None and not pump.done():
            pump.cancel()
        client, manager, handler, sent, payload = self.client, self.manager, self.handler, self.sent, self.payload
        now = self.ended = client.loop.time()  # (the client's keep-alive timer starts from it too)
        if self.fast:
            manager.release(now)  # (the aiohttp path's lease releases its own hold)
            message, key = self.message, self.key
            tally = handler.tallies.get(manager)  # metrics, egress and the access line in one call
            if tally is None or tally.key != key:
                tally = handler.tally(manager, key)
            path = message.path
            tally.end(status, now - self.began, message.method, path.partition("?")[0] if "?" in path else path,
                      client.peer_host, self.rid, self.body_bytes, payload.total_bytes, sent)
        elif sent:
            handler.egress(manager.klass.name, manager.key, sent)
        client.exchange_done(self, clean=payload is EMPTY_PAYLOAD or payload.is_eof())

    @property
    def body_bytes(self) -> int:
        """Response body bytes written to the client (chunk framing included, as nginx's $body_bytes_sent)."""
        return max(0, self.sent - self.head_len)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b""

