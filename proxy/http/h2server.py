"""HTTP/2 from clients: one connection (h2c with prior knowledge, or TLS with ALPN `h2`), many streams.

The plain listener's `FastProtocol` hands a connection over (`take_over`) when its first bytes are the
HTTP/2 preface, or at once when TLS negotiated `h2`. Framing, HPACK, stream states and header validation
are the `h2` library's (uppercase names, connection-specific headers, `TE` other than `trailers`,
pseudo-header errors and Content-Length mismatches are refused as the RFC says; the header checks run
through proxy/http/h2checks.py's one-pass check first); each request
stream is then served by `proxy/http/h2stream.py` with the HTTP/1.1 request's lifecycle.

Limits a client cannot talk its way around: `max_concurrent_streams` (streams beyond it are refused by
the library), a header list of at most MAX_HEADER_LIST bytes (and the library's cap of 64 CONTINUATION
frames), a request body buffered at most one flow-control window per stream (WINDOW; the window reopens
only as the body goes upstream), a response body read from the instance only as the client's window
allows, and more than `max_concurrent_streams` (at least RESET_BUDGET) resets in RESET_PERIOD seconds
(the "rapid reset" attack) ends the connection with GOAWAY ENHANCE_YOUR_CALM.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Coroutine, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hyperframe.frame
import structlog

from proxy.http.h2checks import check
from proxy.wire.h2writer import H2Writer
from proxy.wire.h2writer import Header as Header  # the stream servers (h2stream, h2app, ...) name it from here

if TYPE_CHECKING:
    from proxy.http.fastpath import FastPath

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_HEADER_LIST = 32 * 1024  # bytes of decoded header names and values per request (nginx: 4 x 8k buffers)
WINDOW = 65535  # a stream's receive window: request body bytes buffered per stream at most
RESET_PERIOD = 10.0  # seconds over which client resets are counted
IDLE_TIMEOUT = 75.0  # seconds without a frame and without open streams: GOAWAY and close (aiohttp's keep-alive)
LINGER = 2.0  # seconds a connection ended for an error still reads (and drops) before it closes
RESET_BUDGET = 200  # resets allowed per period at least (the budget is max(this, 2 x max_concurrent_streams))
log = structlog.get_logger("proxy.h2")
Serve = Callable[["H2ServerProtocol", "ClientStream"], Coroutine[Any, Any, None]]


class ClientStream:
    """One client stream as the serving task sees it: its body arriving, its answer going out."""

    def __init__(self, conn: H2ServerProtocol, stream_id: int, headers: list[Header]) -> None:
        self.conn = conn
        self.id = stream_id
        self.headers = headers
        self.chunks: deque[bytes] = deque()
        self.ended = False
        self.reset = False  # the client reset it (or the connection went): nothing more is written
        self.received = 0
        self.trailers: list[Header] = []
        self.task: asyncio.Task[None] | None = None
        self._wake: asyncio.Future[None] | None = None

    def notify(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def _wait(self) -> None:
        self._wake = self.conn.loop.create_future()
        await self._wake

    async def read(self) -> bytes | None:
        """The next body chunk (its window reopens via `consumed`); None at the end of the body."""
        while not self.chunks:
            if self.reset:
                raise ConnectionResetError("the client reset the stream")
            if self.ended:
                return None
            await self._wait()
        return self.chunks.popleft()

    def consumed(self, nbytes: int) -> None:
        self.conn.acknowledge(self.id, nbytes)

    def send_headers(self, headers: list[Header], end: bool = False) -> None:
        if not self.reset:
            self.conn.h2.send_headers(self.id, headers, end_stream=end)
            self.conn.flush()

    async def send_data(self, data: bytes, end: bool = False) -> None:
        """Write body bytes as the client's window allows: a slow reader stops us reading the instance."""
        await self.conn.send_data(self.id, data, self._gone, self._wait)
        if end:
            self.end()

    def _gone(self) -> ConnectionResetError | None:
        return ConnectionResetError("the client reset the stream") if self.reset else None

    def end(self, trailers: list[Header] | None = None) -> None:
        if not self.reset:
            self.conn.end_stream(self.id, trailers)

    def abort(self, code: int = h2.errors.ErrorCodes.INTERNAL_ERROR) -> None:
        """Reset the stream (the answer cannot be finished)."""
        if not self.reset:
            self.reset = True
            with contextlib.suppress(h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError):
                self.conn.h2.reset_stream(self.id, code)
                self.conn.flush()


class H2ServerProtocol(H2Writer):
    """A client's HTTP/2 connection: frames in and out, one serving task per request stream."""

    def __init__(self, fast: FastPath, serve: Serve, max_streams: int, peer_host: str, scheme: str) -> None:
        self.fast = fast
        # The library's header checks off: what comes in is checked by proxy/http/h2checks.py (`data_received`);
        # every block sent is built here, an instance's fields passed through h2_to_h2.py's `answer_fields`.
        super().__init__(h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None, validate_inbound_headers=False, validate_outbound_headers=False,
            normalize_outbound_headers=False)))
        self.serve = serve  # serves one stream (proxy/http/h2stream.py's serve_stream)
        self.peer_host = peer_host
        self.scheme = scheme
        self.max_streams = max_streams
        self.streams: dict[int, ClientStream] = {}
        self._resets: deque[float] = deque()
        self._reset_budget = max(RESET_BUDGET, 2 * max_streams)
        self.closed = False
        self.draining = False  # GOAWAY sent on shutdown: new streams are refused
        self.on_close: list[Any] = []
        self._last_frame = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are no asyncio.Transport
        codes = h2.settings.SettingCodes
        # Initial values (not an update): in force from the first byte, and sent in the first SETTINGS frame.
        self.h2.local_settings = h2.settings.Settings(client=False, initial_values={
            codes.MAX_CONCURRENT_STREAMS: self.max_streams, codes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
            codes.INITIAL_WINDOW_SIZE: WINDOW, codes.ENABLE_PUSH: 0})
        self.h2.decoder.max_header_list_size = MAX_HEADER_LIST  # before the client acknowledges the setting too
        self.h2.initiate_connection()
        self.flush()
        self._last_frame = self.loop.time()
        self._idle_timer = self.loop.call_later(IDLE_TIMEOUT, self._idle_check)

    def _idle_check(self) -> None:
        """An idle connection is not kept forever (each holds a socket and its HPACK tables)."""
        if self.closed:
            return
        quiet = self.loop.time() - self._last_frame
        if not self.streams and quiet >= IDLE_TIMEOUT:
            self.goaway()
        else:
            self._idle_timer = self.loop.call_later(max(1.0, IDLE_TIMEOUT - quiet), self._idle_check)

    # ---------------------------------------------------------------- bytes in

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self._last_frame = self.loop.time()
        highest = self.h2.highest_inbound_stream_id
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._refuse(exc)
            return
        for event in events:  # the header checks, before any stream of these is served (as the library's were)
            if isinstance(event, (h2.events.RequestReceived, h2.events.TrailersReceived)):
                if isinstance(event, h2.events.RequestReceived):
                    highest = max(highest, event.stream_id or 0)
                try:
                    check(event.headers or (), isinstance(event, h2.events.TrailersReceived))
                except h2.exceptions.ProtocolError as exc:
                    with contextlib.suppress(h2.exceptions.ProtocolError):  # (the client's GOAWAY came first)
                        self.h2.close_connection(exc.error_code, last_stream_id=highest)  # the library's GOAWAY
                    self._refuse(exc)
                    return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self._request(event)
            elif isinstance(event, h2.events.DataReceived):
                self._data(event)
            elif isinstance(event, h2.events.StreamEnded):
                if (stream := self.streams.get(event.stream_id)) is not None:
                    stream.ended = True
                    stream.notify()
            elif isinstance(event, h2.events.TrailersReceived):
                if (stream := self.streams.get(event.stream_id)) is not None:
                    stream.trailers = list(event.headers)
            elif isinstance(event, h2.events.StreamReset):
                self._reset(event.stream_id)
                if self.closed:
                    return
            elif isinstance(event, h2.events.WindowUpdated):
                targets = self.streams.values() if event.stream_id == 0 else \
                    [s for s in (self.streams.get(event.stream_id),) if s is not None]
                for stream in list(targets):
                    stream.notify()
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.close()
                return
        self.flush()

    def _request(self, event: h2.events.RequestReceived) -> None:
        assert event.stream_id is not None and event.headers is not None
        if self.draining:  # after our GOAWAY: the client may retry it elsewhere
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.reset_stream(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        stream = self.streams[event.stream_id] = ClientStream(self, event.stream_id, list(event.headers))
        if event.stream_ended is not None:
            stream.ended = True
        stream.task = self.loop.create_task(self.serve(self, stream))
        stream.task.add_done_callback(lambda _: self.streams.pop(stream.id, None))

    def _data(self, event: h2.events.DataReceived) -> None:
        stream = self.streams.get(event.stream_id or 0)
        size = event.flow_controlled_length or 0
        if stream is None or stream.reset:
            self.acknowledge(event.stream_id or 0, size)  # nobody reads it: reopen the window at once
            return
        data = event.data or b""
        if size > len(data):
            self.acknowledge(stream.id, size - len(data))  # padding
        if data:
            stream.received += len(data)
            stream.chunks.append(data)
            stream.notify()

    def _reset(self, stream_id: int | None) -> None:
        now = self.loop.time()
        resets = self._resets
        resets.append(now)
        while resets and resets[0] < now - RESET_PERIOD:
            resets.popleft()
        if len(resets) > self._reset_budget:
            log.warning("h2_rapid_reset", peer=self.peer_host, resets=len(resets), seconds=RESET_PERIOD)
            self.goaway(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
            return
        stream = self.streams.get(stream_id or 0)
        if stream is not None:
            stream.reset = True
            stream.notify()
            if stream.task is not None:
                stream.task.cancel()

    def _refuse(self, exc: Exception) -> None:
        """The client broke the protocol: GOAWAY (the library chose the code) and close."""
        log.warning("bad_request", peer=self.peer_host, protocol="h2", reason=str(exc).splitlines()[0][:200]
                    if str(exc) else type(exc).__name__)
        self.close(linger=True)  # the library queued its GOAWAY

    def acknowledge(self, stream_id: int, nbytes: int) -> None:
        if nbytes <= 0 or self.closed:
            return
        with contextlib.suppress(h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError):
            self.h2.acknowledge_received_data(nbytes, stream_id)
            self.flush()

    # ---------------------------------------------------------------- endings

    def goaway(self, code: int = h2.errors.ErrorCodes.NO_ERROR) -> None:
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.h2.close_connection(error_code=code)
        self.close(linger=code != h2.errors.ErrorCodes.NO_ERROR)

    def close(self, linger: bool = False) -> None:
        """Close; `linger` (after a GOAWAY for an error): stop sending, then read and drop what the client still
        sends for LINGER seconds, so its pending bytes do not turn the close into a reset that loses the GOAWAY."""
        transport = self.transport
        if transport is not None:
            self.flush_now()  # a GOAWAY queued last goes out before the close
            if linger and transport.can_write_eof():
                transport.write_eof()
                self.loop.call_later(LINGER, transport.close)
            else:
                transport.close()
            self.transport = None  # nothing more is written
        self._end()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None
        self._end()

    def _end(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self.resume_writing()
        for stream in list(self.streams.values()):
            stream.reset = True
            stream.notify()
            if stream.task is not None:
                stream.task.cancel()
        for callback in self.on_close:
            callback(self)

    async def shutdown(self, timeout: float) -> None:
        """Drain: GOAWAY (no new streams), then the open ones get `timeout` to finish.

        The frame is written here: the library's `close_connection` would end the open streams' answers too."""
        if self.transport is not None and not self.closed:
            self.flush_now()
            frame = hyperframe.frame.GoAwayFrame(0)
            frame.last_stream_id = self.h2.highest_inbound_stream_id
            self.transport.write(frame.serialize())
        self.draining = True
        tasks = [s.task for s in self.streams.values() if s.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        self.close()


def take_over(transport: asyncio.Transport, fast: FastPath, serve: Serve, peer_host: str, scheme: str,
              first: bytes = b"") -> H2ServerProtocol:
    """Serve `transport` as HTTP/2 from here on; `first` is what the HTTP/1.1 protocol already read."""
    proto = H2ServerProtocol(fast, serve, fast.max_streams, peer_host, scheme)
    transport.set_protocol(proto)
    proto.connection_made(transport)
    if first:
        proto.data_received(first)
    return proto
