"""Serving: one listening socket, each connection a `FastProtocol` that shares aiohttp's parser.

`FastProtocol` is aiohttp's own connection handler with one change: each parsed request is offered
to the fast path first (`FastPath.plan`), and only what it declines is queued for the aiohttp
application, exactly as aiohttp would have queued it. Requests are answered strictly in order, so one
keep-alive (or pipelined) connection may mix both kinds: while aiohttp serves a request, later ones
wait their turn, and when aiohttp's queue empties (`log_access` marks each finished response) the
fast path takes over again. WebSocket upgrades stay with aiohttp for the rest of the connection.

Sharing the parser is why the fast path uses aiohttp's C parser (llhttp) rather than httptools for
requests: the hand-over needs no re-parsing or byte offsets, and both paths enforce the same limits
and the same request-smuggling defences. httptools parses the instances' responses (proxy/wire/upstream.py).
The one exception is the usual packet (proxy/http/usual.py): one whole plain GET-like head, at a request
boundary with nothing queued, is parsed by the proxy itself, which accepts only a strict subset of what
llhttp accepts; whatever it or the fast path declines goes to aiohttp's parser untouched (nothing was
consumed, so again no offsets).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import sys
from collections import deque
from typing import Any, Awaitable, Callable, Iterable, Protocol, cast

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_protocol import RequestHandler, _ErrInfo
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse
from aiohttp.web_server import Server

from proxy.errors import json_error
from proxy.http.fastpath import FastPath
from proxy.http.exchange import Exchange
from proxy.http.message import Message
from proxy.http.h2server import PREFACE, H2ServerProtocol, take_over
from proxy.http.h2stream import serve_stream
from proxy.http.salvage import parser_factory, whole_requests
from proxy.http.listen import check_free, listen
from proxy.http.usual import via
from proxy.http.tls_listeners import TlsListeners
from proxy.wire.tls import TlsFiles

log = structlog.get_logger("proxy.server")
_Message = tuple[Any, StreamReader]
_NEVER = float("inf")  # no keep-alive close while an exchange answers (exchange_done sets the time)


class FastProtocol(RequestHandler):
    __slots__ = ("fast", "loop", "peer_host", "scheme", "_queue", "_exchange", "_writing", "_aiohttp_busy", "_idle",
                 "_boundary", "_refused", "_settings", "_sniff", "_via")

    def __init__(self, manager: Server, *, fast: FastPath, loop: asyncio.AbstractEventLoop, **kwargs: Any) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        self.fast = fast
        self.loop = loop
        self.peer_host = ""
        self.scheme = "http"
        self._queue: deque[_Message] = deque()
        self._exchange: Exchange | None = None  # the fast path's exchange answering now
        self._writing: Exchange | None = None  # whichever exchange writes on this connection (either path)
        self._aiohttp_busy = False
        self._idle: asyncio.Future[None] | None = None
        self._boundary = True  # the parser holds nothing of an unfinished request (a packet parses alone)
        self._refused = False  # bytes that do not parse came: the 400 ends the connection, nothing more is read
        self._settings = kwargs  # the parser's limits, for parsing a bad packet again (proxy/http/salvage.py)
        self._sniff: bytes | None = b""  # the first bytes, until they show HTTP/1.x or HTTP/2's preface
        self._via = via("", "http")  # the connection's part of an instance's head (proxy/http/usual.py)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self.peer_host = peer[0] if isinstance(peer, (tuple, list)) else ""
        if transport.get_extra_info("sslcontext") is not None:
            self.scheme = "https"
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
                self._to_h2(b"")  # ALPN chose HTTP/2: no preface sniffing needed
        self._via = via(self.peer_host, self.scheme)

    # ---------------------------------------------------------------- parsing and dispatch

    def data_received(self, data: bytes) -> None:
        if self._sniff is not None and not (data := self._sniffed(data)):
            return
        if self._force_close or self._close or self._refused:
            return
        if self._upgraded or self._payload_parser is not None or self._parser is None:
            super().data_received(data)  # a WebSocket (or a declined upgrade): aiohttp's from here on
            return
        if (self._boundary and self._exchange is None and not (self._queue or self._aiohttp_busy)
                and (exchange := self.fast.plan_packet(data, self, self._via)) is not None):
            self._exchange = self._writing = exchange  # the usual packet, parsed here: aiohttp's parser saw nothing
            self._next_keepalive_close_time = _NEVER
            exchange.start()
            return
        messages: list[_Message]
        try:
            messages, upgraded, tail = self._parser.feed_data(data)
        except HttpProcessingError as exc:
            # The whole requests before the bad bytes are answered first, then the 400 (nginx does the same).
            messages = whole_requests(parser_factory(self, type(self._parser), self._settings, self._read_bufsize),
                                      data) if self._boundary else []
            messages.append((_ErrInfo(status=400, exc=exc, message=exc.message), EMPTY_PAYLOAD))
            upgraded, tail, self._refused = False, b"", True
        else:  # a GET-like request ending the packet leaves nothing behind in the parser, unless a pipelining
            # flood paused it (it keeps the rest then: up to 32 requests not yet taken)
            self._boundary = (data[-4:] == b"\r\n\r\n" and bool(messages) and messages[-1][1] is EMPTY_PAYLOAD
                              and len(messages) + len(self._queue) + len(self._messages) < self._msg_queue_resume_size)
            if len(messages) == 1 and not (upgraded or self._queue or self._aiohttp_busy) and self._exchange is None:
                message, payload = messages[0]  # the usual case, in one branch: one request, nothing ahead of it
                self._begin(message, payload, self.fast.plan(message, payload, self))
                return
        self._upgraded = upgraded
        if upgraded and tail:
            self._message_tail = tail
        if len(messages) == 1 and not self._queue and self._exchange is None and not self._aiohttp_busy:
            self._start(*messages[0])  # one request, nothing ahead of it (an upgrade, a 400)
        elif messages:
            self._queue.extend(messages)
            if len(self._queue) >= self._max_msg_queue_size and not self._buffer_paused:
                self._pause_reading_for_buffer()  # a pipelining flood waits in the kernel, not here
            self._dispatch()

    def _sniffed(self, data: bytes) -> bytes:
        """The connection's first bytes: HTTP/2's preface (h2c with prior knowledge) hands the connection to
        proxy/http/h2server.py; anything else is HTTP/1.x and returned for parsing (b"": nothing to parse yet)."""
        data = self._sniff + data if self._sniff else data
        if len(data) < len(PREFACE) and PREFACE.startswith(data):
            self._sniff = data  # a preface cut short: wait for the rest
            return b""
        self._sniff = None
        if data.startswith(PREFACE):
            self._to_h2(data)
            return b""
        return data

    def _to_h2(self, data: bytes) -> None:
        """Hand the transport to an HTTP/2 protocol; this one leaves aiohttp's books without closing it."""
        transport, server = cast(asyncio.Transport, self.transport), self._manager  # (uvloop's is no subclass)
        self._sniff = None
        self.transport = None  # aiohttp's connection_lost closes the transport it still holds
        self.connection_lost(None)
        proto = take_over(transport, self.fast, serve_stream, self.peer_host, self.scheme, data)
        if isinstance(server, FastServer):
            server.h2_connections.add(proto)
            proto.on_close.append(server.h2_connections.discard)

    def _dispatch(self) -> None:
        """Start the next queued requests, in order, while nothing else is answering on this connection."""
        while self._queue and self._exchange is None and not self._aiohttp_busy:
            if self._close or self._force_close:
                self._queue.clear()
                return
            self._start(*self._queue.popleft())
            if self._buffer_paused and len(self._queue) <= self._msg_queue_resume_size:
                self._resume_reading_if_drained()

    def _start(self, message: Any, payload: StreamReader) -> None:
        """Answer one request: relayed by the fast path if it can, else queued for aiohttp as its own."""
        self._begin(message, payload, self.fast.plan(message, payload, self) if isinstance(message, RawRequestMessage)
                    else None)

    def _begin(self, message: Any, payload: StreamReader, exchange: Exchange | None) -> None:
        if exchange is None:
            self._aiohttp_busy = True
            self._messages.append((message, payload))  # aiohttp's start() consumes it as its own
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(None)
            return
        assert self._parser is not None
        self._parser.message_consumed()
        self._exchange = self._writing = exchange
        self._next_keepalive_close_time = _NEVER
        exchange.start()

    def log_access(self, request: BaseRequest, response: StreamResponse, time: float | None) -> None:
        """aiohttp finished a response: when its queue is empty the connection is ours again."""
        super().log_access(request, response, time)
        if self._aiohttp_busy and not self._messages:
            self._aiohttp_busy = False
            if response.keep_alive:
                self._dispatch()
            else:
                self._queue.clear()

    # ---------------------------------------------------------------- used by exchanges

    def keeps_alive(self, message: Message) -> bool:
        return not (message.should_close or self._close or self._force_close)

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def close_now(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def close_after_write(self) -> None:
        self._close = True
        if self.transport is not None:
            self.transport.close()

    def watch(self, exchange: Exchange) -> None:
        """The aiohttp path relays on this connection too: flow control and aborts follow its exchange."""
        self._writing = exchange

    def exchange_done(self, exchange: Exchange, clean: bool) -> None:
        if self._exchange is not exchange:
            return
        self._exchange = self._writing = None
        if not clean or not (exchange.kept or self.keeps_alive(exchange.message)):  # (kept: asked just now)
            self.close_after_write()  # an unread request body (or the client's wish) ends the connection
        else:
            self._keepalive = True
            self._next_keepalive_close_time = exchange.ended + self._keepalive_timeout
            if self._keepalive_handle is None:
                self._keepalive_handle = self.loop.call_at(self._next_keepalive_close_time,
                                                           self._process_keepalive)
        if self._idle is not None and not self._idle.done():
            self._idle.set_result(None)
        if self._queue:
            self._dispatch()  # (pipelined requests waiting their turn)

    # ---------------------------------------------------------------- flow control and endings

    def pause_writing(self) -> None:
        super().pause_writing()
        conn = self._writing.conn if self._writing is not None else None
        if conn is not None and conn.transport is not None:
            conn.transport.pause_reading()  # a slow reader slows the instance, not our memory

    def resume_writing(self) -> None:
        super().resume_writing()
        conn = self._writing.conn if self._writing is not None else None
        if conn is not None and conn.transport is not None:
            conn.transport.resume_reading()

    def _process_keepalive(self) -> None:
        if self._exchange is not None or self._queue:
            self._keepalive_handle = None
            return  # busy: exchange_done re-arms the timer
        super()._process_keepalive()

    def connection_lost(self, exc: BaseException | None) -> None:
        exchange, self._exchange, self._writing = self._writing, None, None
        self._queue.clear()
        if exchange is not None:
            exchange.client_lost()
        super().connection_lost(exc)

    async def shutdown(self, timeout: float | None = 15.0) -> None:
        """Drain: a fast exchange in flight gets `timeout` to finish, like aiohttp's own requests."""
        if self._exchange is not None:
            self._idle = self.loop.create_future()
            try:
                await asyncio.wait_for(self._idle, timeout)
            except asyncio.TimeoutError:
                pass
        await super().shutdown(timeout)

    def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> StreamResponse:
        """Anyone can send garbage: a JSON answer and one JSON log line, never a traceback on stderr."""
        if status == 400:
            reason = (message or str(exc) or "malformed request").splitlines()[0][:200]
            log.warning("bad_request", peer=self.peer_host, reason=reason)
            response = json_error(400, "bad request", reason)
        else:
            log.error("server_error", status=status, error=f"{type(exc).__name__}: {exc}" if exc else message)
            response = json_error(status, "internal error", f"{type(exc).__name__}" if exc else "error")
        response.force_close()
        return response


class FastServer(Server):
    """aiohttp's Server, making FastProtocols."""

    def __init__(self, base: Server, fast: FastPath) -> None:
        self.__dict__.update(base.__dict__)
        self.fast = fast
        self.deadline: float | None = None  # loop time by which the drain ends (serve sets it at the signal)
        self.h2_connections: set[H2ServerProtocol] = set()  # connections handed to HTTP/2 (not aiohttp's)

    async def shutdown(self, timeout: float | None = None) -> None:
        """aiohttp's drain (each connection: wait, then cancel, each up to `timeout`), bounded as a whole by
        `deadline`: connections still busy then are closed, which cancels their handlers and cold waits."""
        remaining = None if self.deadline is None else max(0.0, self.deadline - self._loop.time())
        try:
            await asyncio.wait_for(asyncio.gather(super().shutdown(timeout), *(
                conn.shutdown(timeout or 15.0) for conn in list(self.h2_connections))), remaining)
        except asyncio.TimeoutError:
            for h2conn in list(self.h2_connections):
                h2conn.close()
            busy = list(self._connections)
            log.warning("drain_timeout", connections_closed=len(busy))
            for conn in busy:
                if conn.transport is not None:
                    conn.transport.abort()
            self._connections.clear()

    def __call__(self) -> RequestHandler:
        # Bodies pass through as sent: a gzip body stays gzip, under its own Content-Encoding.
        return FastProtocol(self, fast=self.fast, loop=self._loop, **{**self._kwargs, "auto_decompress": False})


class _Busy(Protocol):
    @property
    def in_flight(self) -> int: ...


class _Buffered(Protocol):
    def flush(self) -> None: ...


class Served(Protocol):
    """What serving needs of the proxy behind an app (proxy/app.py's `Proxy`), handed down on the app as
    `app[SERVED]` the way aiohttp's AppRunner hands its Server the app's handler: the server knows no app."""

    @property
    def registry(self) -> Iterable[_Busy]: ...
    @property
    def reqlog(self) -> _Buffered | None: ...
    def fast_path(self, app: web.Application) -> FastPath: ...


SERVED: web.AppKey[Served] = web.AppKey("served")


class ProxyRunner(web.AppRunner):
    """An AppRunner whose connections take the fast path (tests and embedders use it like AppRunner)."""

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        return FastServer(server, self.app[SERVED].fast_path(self.app))


Announce = Callable[[list[Any], list[Any]], Awaitable[None]]
SECOND_SIGNAL_EXIT = 130  # a second SIGTERM/SIGINT: exit at once, with the shell's code for an interrupt


async def serve(app: web.Application, host: str, port: int, shutdown_timeout: float,
                admin: tuple[web.Application, str, int] | None = None, announce: Announce | None = None,
                tls: TlsFiles | None = None, admin_tls: TlsFiles | None = None) -> None:
    """`web.run_app` for the fast path: serve until SIGTERM/SIGINT, then drain and clean up.

    `admin` is the admin listener's app and address (proxy/admin/api.py): a plain aiohttp listener of its
    own, closed before the proxied port drains (the proxy's lifecycle belongs to `app`). A port that
    cannot be bound raises ConfigError naming `server.port` or `admin.port`. `announce` gets the bound
    addresses (proxied, admin) once both listen: the start-up line. `tls`/`admin_tls` (`server.tls`,
    `admin.tls`): that listener terminates TLS, its certificate reloaded when the files change
    (proxy/wire/tls.py).

    The drain, requests waiting for a cold start included, ends `shutdown_timeout` after the signal
    (connections still busy then are closed); then the proxy stops its instances. A second signal exits
    at once (code 130)."""
    check_free(host, port, "server.port")
    if admin is not None:
        check_free(admin[1], admin[2], "admin.port")
    listeners = TlsListeners(tls, admin_tls if admin is not None else None)
    runner = ProxyRunner(app, handle_signals=False, access_log=None, handler_cancellation=True,
                         shutdown_timeout=shutdown_timeout)
    admin_runner = None
    await runner.setup()
    try:
        listeners.start()
        await listen(runner, host, port, "server.port", listeners.context("server.tls"))
        if admin is not None:
            admin_app, admin_host, admin_port = admin
            admin_runner = web.AppRunner(admin_app, handle_signals=False, access_log=None, shutdown_timeout=2.0)
            await admin_runner.setup()
            await listen(admin_runner, admin_host, admin_port, "admin.port", listeners.context("admin.tls"))
        if announce is not None:
            await announce(runner.addresses, admin_runner.addresses if admin_runner is not None else [])
        gc.freeze()  # what startup built lives on: the cyclic GC's full passes skip it (they walked it all)
        signum = await _first_signal(lambda _: _on_second_signal(app))
        in_flight = sum(manager.in_flight for manager in app[SERVED].registry)
        log.info(f"shutting down on {signal.Signals(signum).name}: draining {in_flight} "
                 f"request{'' if in_flight == 1 else 's'} for up to {shutdown_timeout:g}s")
        if isinstance(runner.server, FastServer):
            runner.server.deadline = asyncio.get_running_loop().time() + shutdown_timeout
    finally:
        await listeners.stop()
        if admin_runner is not None:
            await admin_runner.cleanup()
        await runner.cleanup()


async def _first_signal(on_second: Callable[[int], None]) -> int:
    """Wait for SIGTERM or SIGINT; the signal's number. Later ones call `on_second`."""
    loop = asyncio.get_running_loop()
    first: asyncio.Future[int] = loop.create_future()

    def received(signum: int) -> None:
        if first.done():
            on_second(signum)
        else:
            first.set_result(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, received, sig)
    return await first


def _on_second_signal(app: web.Application) -> None:
    """A second signal while draining: the operator wants out now. Instances keep running (the next start
    of the proxy adopts them)."""
    log.warning("second signal: exiting now without waiting for the drain (running instances are left "
                "for the next start to adopt)")
    reqlog = app[SERVED].reqlog
    if reqlog is not None:
        reqlog.flush()
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    os._exit(SECOND_SIGNAL_EXIT)
