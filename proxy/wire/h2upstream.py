"""HTTP/2 (h2c) connections to one instance: many streams multiplexed on one pooled connection.

Classes with `protocol: h2c` or `grpc` are relayed over these. An `H2Pool` per instance keeps one
connection open (a new one when it is closed, refused a stream, or has no stream left) and hands out
`UpstreamStream`s. Memory is bounded by HTTP/2 flow control: a stream's received DATA is acknowledged
(its window reopened) only when the caller has taken it (`UpstreamStream.read` then `consumed`), so an
instance can never send more than one window ahead of the client that reads the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Iterable, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from proxy.wire.h2writer import H2Writer, Header

WINDOW = 65535  # per-stream receive window (the protocol's default): at most this much buffered per stream


class StreamClosed(Exception):
    """The instance reset the stream or the connection went away; `got_response` says whether a head came."""

    def __init__(self, reason: str, got_response: bool) -> None:
        super().__init__(reason)
        self.got_response = got_response


class UpstreamStream:
    """One request on a pooled connection: send the body, then read the head, the body and the trailers."""

    def __init__(self, conn: H2UpstreamConnection, stream_id: int) -> None:
        self.conn = conn
        self.id = stream_id
        self.head: asyncio.Future[list[Header]] = conn.loop.create_future()
        self.trailers: list[Header] = []
        self.chunks: deque[bytes] = deque()
        self.ended = False
        self.error: StreamClosed | None = None
        self._wake: asyncio.Future[None] | None = None
        self._window: asyncio.Future[None] | None = None

    def _notify(self) -> None:
        for waiter in (self._wake, self._window):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    async def send(self, data: bytes, end: bool = False) -> None:
        """Send body bytes as the instance's flow-control window allows (waits, never buffers past it)."""
        await self.conn.send_data(self.id, data, self._failed, self._window_opened)
        if end:
            self.end()

    def window(self) -> int:
        """Body bytes the instance takes now without a window update."""
        return 0 if self.error is not None else self.conn.h2.local_flow_control_window(self.id)

    def _failed(self) -> StreamClosed | None:
        return self.error

    async def _window_opened(self) -> None:
        self._window = self.conn.loop.create_future()
        await self._window

    def end(self, trailers: Iterable[Header] | None = None) -> None:
        if self.error is None:
            self.conn.end_stream(self.id, trailers)

    async def response(self) -> list[Header]:
        """The response head (interim 1xx heads are skipped)."""
        return await self.head

    def ready(self) -> bool:
        """`read` returns without waiting."""
        return bool(self.chunks) or self.ended or self.error is not None

    async def read(self) -> bytes | None:
        """The next body chunk; None at the end (`trailers` then holds the trailers)."""
        while not self.chunks:
            if self.error is not None:
                raise self.error
            if self.ended:
                return None
            self._wake = self.conn.loop.create_future()
            await self._wake
        return self.chunks.popleft()

    def consumed(self, nbytes: int) -> None:
        """`nbytes` of the body went on to the client: the instance may send that much more."""
        if nbytes and self.error is None and not self.conn.closed:
            with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                self.conn.h2.acknowledge_received_data(nbytes, self.id)
                self.conn.flush()

    def reset(self) -> None:
        """The client went away: cancel the stream on the instance (the connection stays)."""
        if self.error is None and not self.conn.closed:
            with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                self.conn.h2.reset_stream(self.id, h2.errors.ErrorCodes.CANCEL)
                self.conn.flush()
        self.conn.streams.pop(self.id, None)
        if self.error is None:
            self._fail("the stream was cancelled")

    def _fail(self, reason: str) -> None:
        self.error = StreamClosed(reason, self.head.done())
        if not self.head.done():
            self.head.set_exception(self.error)
            self.head.exception()  # retrieved: a caller that never awaits it logs nothing
        self._notify()


class H2UpstreamConnection(H2Writer):
    def __init__(self, pool: H2Pool) -> None:
        # The headers sent were validated on the client's connection, and what comes back is normalized there on
        # its way out. (Each validation costs as much as relaying a small body.)
        super().__init__(h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False, normalize_outbound_headers=False,
            validate_inbound_headers=False)))
        self.pool = pool
        self.streams: dict[int, UpstreamStream] = {}
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are no asyncio.Transport
        self.h2.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW, h2.settings.SettingCodes.ENABLE_PUSH: 0})
        self.h2.initiate_connection()
        self.flush()

    def available(self) -> bool:
        return not self.closed and self.h2.open_outbound_streams < self.h2.remote_settings.max_concurrent_streams

    def open(self, headers: list[Header], end: bool) -> UpstreamStream:
        stream_id = self.h2.get_next_available_stream_id()
        stream = self.streams[stream_id] = UpstreamStream(self, stream_id)
        self.h2.send_headers(stream_id, headers, end_stream=end)
        self.flush()
        return stream

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self.flush()
            self._lost(f"HTTP/2 protocol error from the instance: {exc}")
            return
        for event in events:
            stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
            if isinstance(event, h2.events.ResponseReceived) and stream is not None:
                if not stream.head.done():
                    stream.head.set_result(list(event.headers))
            elif isinstance(event, h2.events.DataReceived) and stream is not None:
                if event.data:
                    stream.chunks.append(event.data)
                stream._notify()
                pad = event.flow_controlled_length - len(event.data or b"")
                if pad:  # padding is never read by anyone: reopen its window now
                    self.h2.acknowledge_received_data(pad, event.stream_id)
            elif isinstance(event, h2.events.TrailersReceived) and stream is not None:
                stream.trailers = list(event.headers)
            elif isinstance(event, h2.events.StreamEnded) and stream is not None:
                stream.ended = True
                if not stream.head.done():
                    stream._fail("the instance ended the stream without a response")
                self.streams.pop(event.stream_id, None)
                stream._notify()
            elif isinstance(event, h2.events.StreamReset) and stream is not None:
                self.streams.pop(event.stream_id, None)
                stream._fail(f"the instance reset the stream ({event.error_code!s})")
            elif isinstance(event, h2.events.WindowUpdated):
                targets = self.streams.values() if event.stream_id == 0 else [stream] if stream else []
                for waiting in list(targets):
                    waiting._notify()
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.closed = True  # no new streams; those below last_stream_id finish
                for stream_id, dropped in list(self.streams.items()):
                    if event.last_stream_id is not None and stream_id > event.last_stream_id:
                        self.streams.pop(stream_id, None)
                        dropped._fail("the instance closed the connection (GOAWAY)")
        self.flush()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._lost("the instance closed the connection")

    def _lost(self, reason: str) -> None:
        self.closed = True
        streams, self.streams = list(self.streams.values()), {}
        for stream in streams:
            stream._fail(reason)
        self.resume_writing()
        if self.transport is not None:
            self.flush_now()
            self.transport.close()
        self.pool.discard(self)

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            with contextlib.suppress(Exception):
                self.h2.close_connection()
                self.flush()
        self._lost("the instance stopped")


class H2Pool:
    """The HTTP/2 connections to one instance (usually one, carrying every stream)."""

    def __init__(self, host: str, port: int, connect_timeout: float) -> None:
        self.host, self.port = host, port
        self.authority = (f"[{host}]:{port}" if ":" in host else f"{host}:{port}").encode()
        self.connect_timeout = connect_timeout
        self.conns: list[H2UpstreamConnection] = []
        self._connecting: asyncio.Future[H2UpstreamConnection] | None = None
        self.closed = False

    async def open(self, headers: list[Header], end: bool) -> UpstreamStream:
        """A new stream carrying `headers` (ConnectionError when the instance cannot be reached)."""
        for conn in self.conns:
            if conn.available():
                return conn.open(headers, end)
        return (await self._connect()).open(headers, end)

    async def _connect(self) -> H2UpstreamConnection:
        if self._connecting is not None:  # one connect at a time: concurrent first streams share it
            conn = await asyncio.shield(self._connecting)
            if conn.available():
                return conn
        loop = asyncio.get_running_loop()
        self._connecting = future = loop.create_future()
        try:
            _, conn = await asyncio.wait_for(loop.create_connection(lambda: H2UpstreamConnection(self),
                                                                    self.host, self.port), self.connect_timeout)
        except BaseException as exc:
            future.set_exception(exc if isinstance(exc, Exception) else ConnectionError("cancelled"))
            future.exception()
            self._connecting = None
            if isinstance(exc, asyncio.TimeoutError):
                raise ConnectionError(f"connecting to {self.host}:{self.port} timed out") from None
            raise
        self._connecting = None
        if self.closed:
            conn.close()
            raise ConnectionError("the instance stopped")
        self.conns.append(conn)
        future.set_result(conn)
        return conn

    def discard(self, conn: H2UpstreamConnection) -> None:
        if conn in self.conns:
            self.conns.remove(conn)

    def __len__(self) -> int:
        return len(self.conns)

    def close(self) -> None:
        self.closed = True
        for conn in list(self.conns):
            conn.close()
        self.conns.clear()
