"""A cheap connect for instances that close every connection (busybox httpd, Python's http.server, CGI-style).

Such an instance costs one fresh connection per request, and uvloop's `create_connection` brings a task, a
future, a timer, a transport and extra loop turns with each. `dial` does what such a request needs with a
plain non-blocking socket: `connect_ex`, the request sent at once (on a local address the handshake is done
by then; else when the socket turns writable, within connect_timeout), then `recv` when the answer came. A
`SocketLink` is the little of a transport an `UpstreamConnection` uses (with flow control for streamed
bodies, so a connection that turns out to be keep-alive is pooled like any), so the answer is parsed and
relayed by the same code, byte for byte. A connect that fails (refused, unreachable, silent) sent nothing: the caller
hears it as the error a `create_connection` would have raised, and handles it as any failed connect.

The answer is waited for on one epoll of our own per loop (`_Poller`, itself one reader of the loop), not by the
loop's `add_reader`/`remove_reader` per connection: uvloop makes a poll handle per descriptor (epoll_ctl add, del
and add again, an ioctl), looks the descriptor up in a WeakValueDictionary that raises KeyError, and removes it
with another epoll_ctl and a close callback. Ours costs one epoll_ctl per connection, and closing the socket
takes it out of the epoll (Linux).
"""

from __future__ import annotations

import asyncio
import errno
import os
import select
import socket
import weakref
from typing import TYPE_CHECKING, Any, Callable

from proxy.wire.upstream import UpstreamConnection

if TYPE_CHECKING:
    from proxy.wire.upstream import UpstreamPool

READ_SIZE = 256 * 1024  # as uvloop reads
HIGH_WATER = 64 * 1024  # request bytes waiting for the socket before the body's pump waits (as asyncio's default)
_NO_EXTRA: dict[str, Any] = {}

# done(conn, None) once the request is on its way (returns False when the exchange no longer wants it);
# done(None, error) when no connection came: nothing was sent.
Done = Callable[[UpstreamConnection | None, Exception | None], bool]
MAX_EVENTS = 256  # answers handled per wake-up of the loop (level-triggered: the rest wake it again)
_STREAM = socket.SOCK_STREAM | socket.SOCK_NONBLOCK
_STARTED = (0, errno.EINPROGRESS)  # connect_ex's answers for a connect that is done or under way
AVAILABLE = hasattr(select, "epoll")  # (Linux; elsewhere closing instances are dialled by create_connection)


class _Poller:
    """The cheap connections' answers on one loop: an epoll of our own, which the loop watches as one reader.
    Only a weak reference to the loop (the loop holds the poller through its reader): both go together."""

    __slots__ = ("_ep", "links", "loop_ref")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._ep = select.epoll()
        self.links: dict[int, SocketLink] = {}  # (a link leaves it before its socket's close, which takes the
        self.loop_ref = weakref.ref(loop)       # socket out of the epoll: no syscall for that)
        loop.add_reader(self._ep.fileno(), self._ready)

    def watch(self, fd: int, link: SocketLink) -> None:
        try:
            self._ep.register(fd, select.EPOLLIN)
        except FileExistsError:  # (only if a closed descriptor's twin kept it registered: watch the new one)
            self._ep.modify(fd, select.EPOLLIN)
        self.links[fd] = link

    def _ready(self) -> None:
        links = self.links
        for fd, _ in self._ep.poll(0, MAX_EVENTS):
            link = links.get(fd)  # (None: closed by an earlier one of this batch; a spurious wake-up is harmless)
            if link is not None:
                try:
                    link._readable()  # noqa: SLF001 - the poller is the link's reader
                except Exception as exc:  # noqa: BLE001 - as the loop reports a failed callback, then the next
                    loop = self.loop_ref()
                    if loop is not None:
                        loop.call_exception_handler({"message": "cheap connection's reader failed",
                                                     "exception": exc})


_pollers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Poller] = weakref.WeakKeyDictionary()


def _poller(pool: UpstreamPool, loop: asyncio.AbstractEventLoop) -> _Poller:
    """The loop's poller, kept on the pool too (a pool serves one loop: one look-up per dial, no dictionary)."""
    poller = pool.poller
    if poller is None or poller.loop_ref() is not loop:
        poller = pool.poller = _pollers.get(loop)
        if poller is None:
            poller = pool.poller = _pollers[loop] = _Poller(loop)
    return poller  # type: ignore[no-any-return]


class SocketLink(asyncio.Transport):
    """What `UpstreamConnection` uses of its transport (write, is_closing, abort) over a non-blocking socket."""

    __slots__ = ("_loop", "_poller", "_sock", "_fd", "_conn", "_pending", "_closed", "_paused")

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.SocketType, conn: UpstreamConnection) -> None:
        """Connected, the request sent (but what `write_later` is given): the answer is read as it comes."""
        self._extra = _NO_EXTRA  # (asyncio.BaseTransport's slot; get_extra_info answers its default)
        self._loop = loop
        self._poller = poller = _poller(conn.pool, loop)
        self._sock = sock
        self._fd = sock.fileno()
        self._conn = conn
        self._pending = b""  # request bytes the socket did not take yet
        self._closed = False
        self._paused = False
        poller.watch(self._fd, self)

    def write(self, data: bytes) -> None:  # type: ignore[override]
        if self._closed:
            return
        if self._pending:
            self._pending += data
            if len(self._pending) > HIGH_WATER and not self._paused:
                self._paused = True
                self._conn.pause_writing()
            return
        try:
            n = self._sock.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as exc:
            self._lose(exc)
            return
        if n < len(data):
            self.write_later(data[n:])

    def write_later(self, rest: bytes) -> None:
        """Bytes the socket did not take (the request's first send's rest, too): written when it takes them."""
        # (a full socket buffer: no Nagle wait for the tail of what is left)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._pending = rest
        self._loop.add_writer(self._fd, self._writable)

    def _writable(self) -> None:
        try:
            n = self._sock.send(self._pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lose(exc)
            return
        self._pending = self._pending[n:]
        if not self._pending:
            self._loop.remove_writer(self._fd)
            if self._paused:
                self._paused = False
                self._conn.resume_writing()

    def _readable(self) -> None:
        try:
            data = self._sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lose(exc)
            return
        if data:
            self._conn.data_received(data)
        else:
            self._lose(None)

    def is_closing(self) -> bool:
        return self._closed

    def abort(self) -> None:
        # As asyncio's abort: the connection hears it on a later turn when an exchange still listens (an
        # instance going: Pools.forget); at once when it was abandoned, its sink gone (every closing answer).
        self._close()
        if self._conn.sink is None:
            self._conn.connection_lost(None)
        else:
            self._loop.call_soon(self._conn.connection_lost, None)

    def close(self) -> None:
        self.abort()

    def _lose(self, exc: Exception | None) -> None:
        if not self._closed:
            self._close()
            self._conn.connection_lost(exc)

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        del self._poller.links[self._fd]  # (before the close, which takes the socket out of the epoll)
        if self._pending:
            self._loop.remove_writer(self._fd)
            self._pending = b""
        self._sock.close()


class _Dial:
    """One connect in flight that did not finish within `connect_ex`: the writer callback and the timer."""

    __slots__ = ("pool", "sock", "request", "done", "timer", "loop")

    def __init__(self, pool: UpstreamPool, sock: socket.SocketType, request: bytes, done: Done,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.pool, self.sock, self.request, self.done, self.loop = pool, sock, request, done, loop
        loop.add_writer(sock.fileno(), self._writable)
        self.timer = loop.call_later(pool.connect_timeout, self._timed_out)

    def _writable(self) -> None:
        self.loop.remove_writer(self.sock.fileno())
        self.timer.cancel()
        code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            _failed(self.sock, _error(code), self.done)
        elif not _send_first(self.pool, self.sock, self.request, self.done, self.loop):
            _Dial(self.pool, self.sock, self.request, self.done, self.loop)  # (writable, yet it would block)

    def _timed_out(self) -> None:
        self.loop.remove_writer(self.sock.fileno())
        _failed(self.sock, TimeoutError(), self.done)


def dial(loop: asyncio.AbstractEventLoop, pool: UpstreamPool, request: bytes, done: Done) -> None:
    """Connect to `pool`'s instance (a numeric host: `pool.family`) and send `request`; `done` hears how it went.
    (`loop`: the running one, passed in: asyncio.get_running_loop() costs a getpid() syscall on Python 3.11.)"""
    if pool.closed:
        done(None, ConnectionRefusedError("the instance is gone"))
        return
    try:  # (the C socket: no Python-level __init__/close; non-blocking from the start, no extra syscall)
        sock = socket.SocketType(pool.family, _STREAM)
    except OSError as exc:  # out of descriptors: as a failed connect
        done(None, exc)
        return
    try:
        code = sock.connect_ex((pool.host, pool.port))
    except OSError as exc:  # an address the kernel rejects
        _failed(sock, exc, done)
        return
    if code not in _STARTED:
        _failed(sock, _error(code), done)
    elif not _send_first(pool, sock, request, done, loop):  # on a local address the handshake is usually done
        _Dial(pool, sock, request, done, loop)


def _send_first(pool: UpstreamPool, sock: socket.SocketType, request: bytes, done: Done,
                loop: asyncio.AbstractEventLoop) -> bool:
    """The request's first send, which tells whether the connect is done: False when not yet."""
    if pool.closed:  # the instance went while we connected: as a refused connect
        _failed(sock, ConnectionRefusedError("the instance is gone"), done)
        return True
    try:
        n = sock.send(request)
    except (BlockingIOError, InterruptedError):
        return False
    except OSError as exc:  # refused, reset: nothing was sent
        _failed(sock, exc, done)
        return True
    conn = UpstreamConnection(pool)
    conn.transport = link = SocketLink(loop, sock, conn)  # (what connection_made does)
    if n < len(request):
        link.write_later(request[n:])
    pool.lend(conn)
    if not done(conn, None):
        conn.abandon()
    return True


def _failed(sock: socket.SocketType, error: Exception, done: Done) -> None:
    sock.close()
    done(None, error)


def _error(code: int) -> OSError:
    return OSError(code, os.strerror(code))  # (ECONNREFUSED makes a ConnectionRefusedError, and so on)
