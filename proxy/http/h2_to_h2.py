"""An HTTP/2 client stream relayed as one stream on a pooled HTTP/2 connection, trailers and all.

Two callers: an instance of an `h2c`/`grpc` class (proxy/http/h2stream.py) and, clustered, the key's owner
replica (proxy/http/h2peer.py: the hop is h2c, so gRPC trailers survive it). The client's body goes up at the
instance's pace (its window reopens only as it leaves); the answer comes down as the client's window allows.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Coroutine, Iterable, Protocol, TypeVar

from proxy.errors import BodyTooLarge, UpstreamError
from proxy.wire.h2upstream import H2Pool, StreamClosed, UpstreamStream
from proxy.wire.websocket import HOP_BY_HOP, PEER_MARK

if TYPE_CHECKING:
    from proxy.http.h2server import ClientStream, Header

SKIP = frozenset(h.encode() for h in HOP_BY_HOP) | {b"host", b"x-forwarded-for", b"x-forwarded-proto",
                                                    b"x-forwarded-host", PEER_MARK.encode()}
T = TypeVar("T")


async def within(step: Coroutine[Any, Any, T], seconds: float) -> T:
    """`step` bounded by `seconds` (a timer, not the task `asyncio.wait_for` makes on every call)."""
    async with asyncio.timeout(seconds):
        return await step


async def settled(future: asyncio.Future[T], seconds: float) -> T:
    """`future`'s result, TimeoutError after `seconds`: a timer on the loop and nothing else (asyncio.timeout
    reads the running loop twice, a getpid() each on Python 3.11, and cancels the task to wake it)."""
    if not future.done():
        loop = future.get_loop()
        waiter = loop.create_future()

        def wake(_: object = None) -> None:
            if not waiter.done():
                waiter.set_result(None)

        future.add_done_callback(wake)
        timer = loop.call_later(seconds, wake)
        try:
            await waiter
        finally:
            timer.cancel()
            future.remove_done_callback(wake)
        if not future.done():
            raise TimeoutError
    return future.result()


class Source(Protocol):
    """An answer's body as it comes from the instance (`H1Sink`, `UpstreamStream`)."""

    def ready(self) -> bool: ...

    async def read(self) -> bytes | None: ...


async def next_piece(source: Source, seconds: float) -> bytes | None:
    """The next body piece (None at its end); only a read that has to wait is bounded by `seconds` (the timer
    costs more than the read of a piece already there, the usual case for a small answer)."""
    return await (source.read() if source.ready() else within(source.read(), seconds))


async def body_of(stream: ClientStream, limit: int) -> AsyncIterator[bytes]:
    """The client's body as it comes; its window reopens as each piece goes upstream."""
    while (chunk := await stream.read()) is not None:
        if stream.received > limit:
            raise BodyTooLarge(f"the body exceeds max_body_size={limit} bytes")
        yield chunk
        stream.consumed(len(chunk))


def answer_fields(pairs: Iterable[Header]) -> list[Header]:
    """An instance's header or trailer fields as the client gets them: names in lowercase, no pseudo-header or
    hop-by-hop field, values without surrounding whitespace. (The `h2` library's own outbound normalization and
    checks are off on the client's connection: everything else sent there is the proxy's own.)"""
    out = []
    for name, value in pairs:
        lower = name.lower()
        if lower not in SKIP and lower[:1] != b":":
            out.append((lower, value.strip()))
    return out


def response_head(status: int, pairs: list[Header], extra: list[Header]) -> list[Header]:
    return [(b":status", str(status).encode()), *answer_fields(pairs), *extra]


async def relay(stream: ClientStream, pool: H2Pool, request: list[Header], limit: int, timeout: float, key: str,
                extra: list[Header], count: Callable[[int], None],
                vet: Callable[[list[Header]], None] | None = None, public: str | None = None) -> tuple[int, int]:
    """(status, body bytes sent). OSError when no stream could be opened, StreamClosed when it closed before an
    answer; `vet` sees the answer's head before the client does (and may raise); `public` is the sentence a
    failed relay's 504 shows."""
    bodyless = stream.ended and not stream.chunks
    upstream = await pool.open(request, end=bodyless)
    # A body that has come whole and fits the instance's window is sent at once (a unary gRPC call's); a longer
    # or unfinished one by a task, at the instance's pace, while the answer is awaited.
    whole = not bodyless and stream.ended and sum(map(len, stream.chunks)) <= upstream.window()
    pump = None if bodyless or whole else stream.conn.loop.create_task(_pump(stream, upstream, limit))
    words: dict[str, Any] = {"key": key} if public is None else {"key": key, "public": public}
    sent = 0
    try:
        if whole:
            await _pump(stream, upstream, limit)
        try:
            pairs = await settled(upstream.head, timeout)
        except asyncio.TimeoutError:
            raise UpstreamError(504, f"no response within upstream_timeout={timeout:g}s", **words) from None
        except StreamClosed:
            if pump is not None and pump.done() and isinstance(pump.exception(), BodyTooLarge):
                raise pump.exception() from None  # type: ignore[misc]
            raise  # no answer came: the caller says why (or, a peer hop, sends it again)
        if vet is not None:
            vet(pairs)
        status = int(dict(pairs).get(b":status", b"502"))
        stream.send_headers(response_head(status, pairs, extra))
        try:
            while (chunk := await next_piece(upstream, timeout)) is not None:
                await stream.send_data(chunk)
                upstream.consumed(len(chunk))
                sent += len(chunk)
                count(len(chunk))
        except (StreamClosed, asyncio.TimeoutError):
            stream.abort()
            return status, sent
        stream.end(answer_fields(upstream.trailers))
        return status, sent
    finally:
        if pump is not None:
            if pump.done():
                pump.cancelled() or pump.exception()  # retrieved (a BodyTooLarge was answered above)
            else:
                pump.cancel()
        if not upstream.ended:
            upstream.reset()


async def _pump(stream: ClientStream, upstream: UpstreamStream, limit: int) -> None:
    """The client's body (and trailers) to the instance, at the instance's pace."""
    try:
        async for chunk in body_of(stream, limit):
            await upstream.send(chunk)
        upstream.end([(n, v) for n, v in stream.trailers if n not in SKIP] or None)
    except BodyTooLarge:
        upstream.reset()
        raise
    except (StreamClosed, ConnectionError):
        upstream.reset()
