"""An HTTP/1.1 request (the aiohttp path) to an instance of an `h2c` or `grpc` class: one stream on the
instance's pooled HTTP/2 connection (proxy/wire/h2upstream.py), the answer streamed back as aiohttp's.

The fast path never takes these classes (it speaks HTTP/1.1 to instances); a request that reaches them over
HTTP/1.1 comes here after the lease, with the same X-Forwarded-* and request id rules as every other hop.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from backends.base import Instance
from proxy.errors import UpstreamError
from proxy.wire.h2upstream import H2Pool, StreamClosed
from proxy.wire.websocket import HOP_BY_HOP, PEER_MARK

_SKIP = frozenset(HOP_BY_HOP) | {"host", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
                                 PEER_MARK.lower()}


async def exchange_over_h2(request: web.Request, pool: H2Pool, instance: Instance, target: str, extra: dict[str, str],
                     rid: str, key: str, upstream_timeout: float) -> web.StreamResponse:
    """Relay `request` as one HTTP/2 stream; the response streamed back (trailers are dropped: HTTP/1.1 here)."""
    chain = request.headers.getall("X-Forwarded-For", [])
    headers = [(b":method", request.method.encode()), (b":scheme", b"http"), (b":authority", pool.authority),
               (b":path", target.encode("latin-1"))]
    given = False
    for name, value in request.headers.items():
        lower = name.lower()
        if lower == "te" and value.strip().lower() == "trailers":
            headers.append((b"te", b"trailers"))  # gRPC needs it; HTTP/2 allows no other TE
            continue
        if lower in _SKIP:
            continue
        given = given or (lower == "x-request-id" and value == rid)
        if lower == "x-request-id" and value != rid:
            continue
        headers.append((lower.encode(), value.encode("latin-1")))
    headers += [(b"x-forwarded-for", ", ".join([*chain, request.remote or ""]).encode()),
                (b"x-forwarded-proto", request.scheme.encode())]
    if request.host:
        headers.append((b"x-forwarded-host", request.host.encode("latin-1")))
    if not given:
        headers.append((b"x-request-id", rid.encode()))
    bodyless = not request.body_exists
    try:
        stream = await pool.open(headers, end=bodyless)
    except OSError as exc:
        raise UpstreamError(502, f"{type(exc).__name__}: {exc}", key=key) from None
    try:
        if not bodyless:
            async for chunk in request.content.iter_any():
                await stream.send(chunk)
            stream.end()
        pairs = await asyncio.wait_for(stream.response(), upstream_timeout)
        status = int(dict(pairs).get(b":status", b"502"))
        response = web.StreamResponse(status=status)
        for field, content in pairs:
            text = field.decode("latin-1")
            if text[:1] != ":" and text not in HOP_BY_HOP:
                response.headers.add(text, content.decode("latin-1"))
        response.headers.update(extra)
        await response.prepare(request)
        try:
            while True:
                piece = await asyncio.wait_for(stream.read(), upstream_timeout)
                if piece is None:
                    break
                await response.write(piece)
                stream.consumed(len(piece))
        except (asyncio.TimeoutError, StreamClosed):
            if request.transport is not None:
                request.transport.close()  # the head is out: the cut is the client's signal
            return response
        await response.write_eof()
        return response
    except asyncio.TimeoutError:
        raise UpstreamError(504, f"no response within upstream_timeout={upstream_timeout:g}s", key=key) from None
    except StreamClosed as exc:
        raise UpstreamError(502, str(exc), key=key) from None
    finally:
        if not stream.ended:
            stream.reset()
