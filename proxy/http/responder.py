"""The aiohttp path's end of an exchange: after a cold start, the request is relayed like a fast one.

The aiohttp path decides (starts, waits, refuses); the bytes then go through the same `Exchange` as
the fast path, written straight to the request's connection, so both paths are byte-exact in the
same way. aiohttp is handed a `WrittenResponse` response that only keeps its books (keep-alive, logging).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

from aiohttp import web
from aiohttp.http_parser import RawRequestMessage

from backends.base import Instance
from proxy.http.exchange import Exchange, request_head
from proxy.http.message import Message
from proxy.http.reconnect import Handler
from proxy.http.watch import ExchangeWatch
from proxy.request_id import HEADER

if TYPE_CHECKING:
    from proxy.lifecycle.manager import Manager


class Route(Handler, Protocol):
    """An exchange's route, and the watch its exchanges share (proxy/http/routes.py's RouteHandler)."""

    @property
    def exchanges(self) -> ExchangeWatch: ...

# (status, body bytes) of an exchange whose handler was cancelled (the client's connection closed): an exchange that had
# ended whole keeps its status; one cut short is 499.
OUTCOME = web.RequestKey("exchange_outcome", tuple[int, int])


class RequestClient:
    """An exchange's client side on the aiohttp path: the request's own connection."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.loop = asyncio.get_running_loop()
        self.peer_host = request.remote or ""
        self.scheme = request.scheme
        self.finished: asyncio.Future[bool] = self.loop.create_future()
        self.closing = False

    def write(self, data: bytes) -> None:
        if self.request.transport is not None:
            self.request.transport.write(data)

    def close_now(self) -> None:
        if self.request.transport is not None:
            self.request.transport.abort()

    def close_after_write(self) -> None:
        self.closing = True  # the WrittenResponse response tells aiohttp not to keep the connection

    def keeps_alive(self, message: Message) -> bool:
        return not (message.should_close or self.closing)

    def exchange_done(self, exchange: Exchange, clean: bool) -> None:
        """Keep the connection only when the client wants it kept (HTTP/1.0 without keep-alive, `Connection:
        close`: closed at once, as the exchange's `Connection: close` said) and nothing is left unread."""
        if not self.finished.done():
            self.finished.set_result(clean and self.keeps_alive(exchange.message))


class WrittenResponse(web.StreamResponse):
    """A response the exchange already wrote on the connection: aiohttp keeps its books and writes nothing.

    Its status is the one the client saw (499 when the client left before the end)."""

    def __init__(self, status: int, keep_alive: bool, body_bytes: int = 0) -> None:
        super().__init__(status=status)
        self._written_keep_alive = keep_alive
        self.body_bytes = body_bytes

    @property
    def keep_alive(self) -> bool:
        return self._written_keep_alive

    async def prepare(self, request: web.BaseRequest) -> None:
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None


def message_of(request: web.Request) -> RawRequestMessage:
    """The parsed request head, rebuilt from the request's public properties."""
    chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    return RawRequestMessage(request.method, request.raw_path, request.version, request.headers,
                             request.raw_headers, not request.keep_alive, None, False, chunked, request.rel_url)


async def run_exchange(request: web.Request, handler: Route, manager: Manager, instance: Instance,
                       target: str, headers: dict[str, str], rid: str) -> WrittenResponse:
    """Run one request through an Exchange; `rid` is the request id (the client's own when it equals its header)."""
    client = RequestClient(request)
    message = message_of(request)
    pool = handler.pools.upstream(instance)
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items()).encode()
    given = request.headers.get(HEADER) == rid
    exchange = Exchange(handler.exchanges, client, handler, manager, pool, message, request.content, manager.key,
                        request_head(message, target, pool, client.peer_host, client.scheme, rid, given), rid,
                        extra_head=extra, fast=False)
    watch = getattr(request.protocol, "watch", None)  # the connection's flow control follows this exchange
    if watch is not None:
        watch(exchange)
    exchange.start()
    try:
        keep_alive = await asyncio.shield(client.finished)
    except asyncio.CancelledError:
        exchange.client_lost()  # (nothing if it had ended: the client read it all, then closed)
        request[OUTCOME] = (exchange.status, exchange.body_bytes)
        raise
    return WrittenResponse(max(exchange.status, 100), keep_alive, exchange.body_bytes)
