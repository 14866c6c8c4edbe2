"""An HTTP/2 stream to an HTTP/1.1 instance over the fast path's pooled connections (`H1Sink` takes the answer).

The stream's request becomes an HTTP/1.1 request on a keep-alive `UpstreamConnection` of the instance's
`UpstreamPool` (proxy/wire/upstream.py: the same connections, the same httptools response parsing as the
fast path); the response comes back as a `ResponseSink`'s callbacks and is written to the stream as the client's
flow-control window allows. Memory stays bounded: past BUFFERED bytes not yet taken by the client, the
instance's socket is no longer read. A request sent on a reused connection that the instance had closed
(nothing came back) is sent once more on a new one when it has no body.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import AsyncIterator

from proxy.errors import UpstreamError
from proxy.wire.upstream import UpstreamConnection, UpstreamPool

Header = tuple[bytes, bytes]
BUFFERED = 256 * 1024  # response bytes held for a slow client before the instance's socket is paused
_NO_BODY_STATUS = (204, 304)


class H1Sink:
    """One request/response on an instance connection; `Relay` for `UpstreamConnection`."""

    def __init__(self, pool: UpstreamPool, bodyless: bool) -> None:
        self.pool = pool
        self.bodyless = bodyless
        self.loop = asyncio.get_running_loop()
        self.conn: UpstreamConnection | None = None
        self.head: asyncio.Future[tuple[int, list[Header]]] = self.loop.create_future()
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.ended = False
        self.error: str | None = None
        self.got_response = False
        self._wake: asyncio.Future[None] | None = None
        self._paused = False

    # ---------------------------------------------------------------- Relay (called by the connection)

    def on_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], raw_head: bytes | None) -> bool:
        self.got_response = True
        if not self.head.done():
            self.head.set_result((status, headers))
        names = {name.lower() for name, _ in headers}
        return (b"content-length" in names or b"transfer-encoding" in names or status in _NO_BODY_STATUS
                or self.bodyless)

    def on_body(self, data: bytes) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered > BUFFERED and not self._paused and self.conn is not None and self.conn.transport:
            self._paused = True
            self.conn.transport.pause_reading()  # a slow client slows the instance, not our memory
        self._notify()

    def on_flush(self) -> None:
        pass

    def on_end(self, reusable: bool) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            if self._paused and conn.transport is not None:
                conn.transport.resume_reading()
            if reusable:
                self.pool.put(conn)
            else:
                conn.abandon()
                self.pool.discard(conn)
        self.ended = True
        self._notify()

    def on_whole(self, status: int, data: bytes, head_end: int, reusable: bool) -> None:
        lines = data[:head_end].split(b"\r\n")[1:]
        headers = [(name, value.strip()) for name, _, value in (line.partition(b":") for line in lines if line)]
        self.on_head(status, b"", headers, None)
        body = data[head_end + 2:]
        if body:
            self.on_body(body)
        self.on_end(reusable)

    def on_upstream_data(self) -> None:
        pass

    def on_upstream_lost(self, error: str, got_response: bool) -> None:
        self.conn = None
        self.error = error
        if not self.head.done():
            self.head.set_exception(ConnectionResetError(error))
            self.head.exception()
        self._notify()

    def _notify(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    # ---------------------------------------------------------------- the stream's side

    def ready(self) -> bool:
        """`read` returns without waiting."""
        return bool(self.chunks) or self.ended or self.error is not None

    async def read(self) -> bytes | None:
        """The next body piece; None at its end. ConnectionResetError when the instance broke off."""
        while not self.chunks:
            if self.ended:
                return None
            if self.error is not None:
                raise ConnectionResetError(self.error)
            self._wake = self.loop.create_future()
            await self._wake
        data = self.chunks.popleft()
        self.buffered -= len(data)
        if self._paused and self.buffered <= BUFFERED // 2 and self.conn is not None and self.conn.transport:
            self._paused = False
            self.conn.transport.resume_reading()
        return data

    def abandon(self) -> None:
        """The client went away or the deadline passed: the connection's state is unknown, never reused."""
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.sink = None
            conn.abandon()
            self.pool.discard(conn)


async def exchange(pool: UpstreamPool, method: str, head: bytes, body: AsyncIterator[bytes] | None,
                   chunked: bool, timeout: float, key: str) -> H1Sink:
    """Send the request (`head` ends with its blank line); the relay whose head has come."""
    for attempt in (1, 2):
        conn = pool.take()
        reused = conn is not None
        if conn is None:
            try:
                conn = await pool.connect()
            except (OSError, asyncio.TimeoutError) as exc:
                raise ConnectionRefusedError(f"{type(exc).__name__}: {exc}") from None
        relay = H1Sink(pool, method == "HEAD")
        relay.conn = conn
        conn.send(relay, head, bodyless=relay.bodyless)
        try:
            if body is not None:
                async for chunk in body:
                    if relay.error is not None:
                        break
                    if relay.conn is not None and relay.conn.transport is not None:
                        relay.conn.transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                        await conn.drain()
                if chunked and relay.error is None and relay.conn is not None and relay.conn.transport is not None:
                    relay.conn.transport.write(b"0\r\n\r\n")
            if not relay.head.done():
                async with asyncio.timeout(timeout):
                    await asyncio.shield(relay.head)
            return relay
        except asyncio.TimeoutError:
            relay.abandon()
            raise UpstreamError(504, f"no response within upstream_timeout={timeout:g}s", key=key) from None
        except ConnectionResetError as exc:
            if attempt == 1 and reused and body is None and not relay.got_response:
                continue  # a keep-alive connection the instance had closed: once more on a new one
            raise UpstreamError(502, str(exc), key=key) from None
        except BaseException:
            relay.abandon()
            raise
    raise AssertionError("unreachable")
