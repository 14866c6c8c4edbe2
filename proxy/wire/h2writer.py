"""The write side of an HTTP/2 connection, the same at either end (the client's in proxy/http/h2server.py,
the instance's in proxy/wire/h2upstream.py).

The `h2` library only queues frames (`data_to_send`); this sends them once per loop turn, so the frames of
many streams go out in one write, and follows the transport's back-pressure (`pause_writing`), so a body is
written no faster than the peer reads it and no faster than its flow-control window allows. Header blocks are
encoded by proxy/wire/hpack_flat.py at both ends.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Iterable

import h2.connection

from proxy.wire.hpack_flat import install

Header = tuple[bytes, bytes]


class H2Writer(asyncio.Protocol):
    """Base of an HTTP/2 connection's protocol: the library's queued frames out, and writes that wait."""

    def __init__(self, conn: h2.connection.H2Connection) -> None:
        self.h2 = conn
        install(conn.encoder)  # header blocks without the dynamic table (proxy/wire/hpack_flat.py)
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._paused: asyncio.Future[None] | None = None
        self._flush_pending = False

    def flush(self) -> None:
        """Send what the library queued, once per loop turn: the frames of many streams go out in one write."""
        if not self._flush_pending:
            self._flush_pending = True
            self.loop.call_soon(self.flush_now)

    def flush_now(self) -> None:
        self._flush_pending = False
        data = self.h2.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def pause_writing(self) -> None:
        self._paused = self.loop.create_future()

    def resume_writing(self) -> None:
        if self._paused is not None and not self._paused.done():
            self._paused.set_result(None)
        self._paused = None

    async def drained(self) -> None:
        if self._paused is not None:
            await asyncio.shield(self._paused)

    async def send_data(self, stream_id: int, data: bytes, failed: Callable[[], BaseException | None],
                        window: Callable[[], Awaitable[None]]) -> None:
        """Send body bytes as the peer's flow-control window allows: waits (`window`) rather than buffer past it,
        and for the transport to drain; raises what `failed` returns once the stream is gone."""
        view = memoryview(data)
        while view:
            if (error := failed()) is not None:
                raise error
            size = min(self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size, len(view))
            if size <= 0:
                await window()
                continue
            self.h2.send_data(stream_id, bytes(view[:size]))
            view = view[size:]
            self.flush()
            await self.drained()

    def end_stream(self, stream_id: int, trailers: Iterable[Header] | None = None) -> None:
        """End our side of the stream, with trailers when there are any."""
        if trailers:
            self.h2.send_headers(stream_id, list(trailers), end_stream=True)
        else:
            self.h2.end_stream(stream_id)
        self.flush()
