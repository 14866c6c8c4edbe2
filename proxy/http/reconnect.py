"""An exchange's fresh connections, and what a refused one means: asked of the runtime, not guessed.

A refused (or silent, or accepted-then-dropped) connection never carried the request, so it is safe to
find out why before answering: the runtime reports the instance gone (stopped or removed from outside:
it is started again and the request sent there, once), alive (starting or shutting down: tried again a
few times over ~2 s, then the 502, as nginx's `proxy_next_upstream error` with one upstream), or cannot
be asked (its outage: the 503 with Retry-After, never a 502). `Reconnect` is the base of `Exchange`
(proxy/http/exchange.py); it declares what it uses of it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Callable, Protocol

from proxy.errors import Refusal, RuntimeUnreachable, UpstreamError
from proxy.observe.tally import Tally  # (the class itself: a compiled build calls its `end` directly)

if TYPE_CHECKING:
    from proxy.lifecycle.manager import Manager
    from backends.base import Instance
    from proxy.wire.upstream import UpstreamConnection, UpstreamPool

class Handler(Protocol):
    """What an exchange needs of its route (proxy/http/routes.py's RouteHandler), declared here, at the
    consumer, so the exchange sits below the routes: pools, metrics and log, the 503's advice, egress."""

    @property
    def pools(self) -> _Pools: ...
    @property
    def metrics(self) -> _FirstByte: ...
    @property
    def retry_advisor(self) -> _Advisor | None: ...
    @property
    def error_detail(self) -> str: ...
    @property
    def egress(self) -> Callable[[str, str, int], None]: ...
    @property
    def tallies(self) -> dict[Manager, Tally]: ...
    def tally(self, manager: Manager, key: str) -> Tally: ...
    def record(self, key: str, method: str, path: str, status: int, seconds: float, fast: bool = False,
               client: str = "", rid: str = "", sent: int = 0, received: int = 0) -> None: ...


class _Pools(Protocol):
    def upstream(self, instance: Instance) -> UpstreamPool: ...


class _FirstByte(Protocol):
    def first_byte(self, class_name: str, key: str) -> None: ...


class _Advisor(Protocol):
    def advise(self, refusal: Refusal, manager: Manager) -> None: ...


REFUSED_RETRY_PAUSES = (0.0, 0.0, 0.25, 0.5, 1.0)  # connect attempts after a refusal (the first two: at once)
ANSWERED, ALIVE, REPLACED = "answered", "alive", "replaced"  # what asking the runtime after a refusal led to


class Reconnect:
    __slots__ = ("pool", "request", "replaced", "attempts")  # (set by the exchange's __init__)
    pool: UpstreamPool
    request: bytes  # as it goes to `pool`'s instance
    replaced: bool  # a refused connect led to a new instance (once per exchange)
    attempts: int  # fresh connections tried: one pause of REFUSED_RETRY_PAUSES each
    # What the exchange has (proxy/http/exchange.py).
    client: Any
    handler: Handler
    manager: Manager
    key: str
    done: bool

    def _send(self, conn: UpstreamConnection, now: float | None = None) -> None:
        raise NotImplementedError

    def _fail(self, refusal: Refusal, close: bool = False) -> None:
        raise NotImplementedError

    async def _connect(self, failed: Exception | None = None) -> None:
        """A fresh connection. A refused one never carried the request, so it is safe to find out why: an
        instance the runtime reports gone (stopped or removed from outside) is started again and the request
        sent there, once; one it reports alive may be starting or shutting down, so it is tried again a few
        times over ~2 s before the 502 (nginx's `proxy_next_upstream error`, with one upstream). A runtime that
        cannot be asked answers its outage's 503 (Retry-After), whether the instance refused or stayed silent.
        The attempts are the exchange's: a retry after a lost connection (`_lost_again`) goes on counting.
        `failed`: the error of an attempt made already (a cheap connect, proxy/wire/closing.py: counted)."""
        error = ""
        while failed is not None or self.attempts < len(REFUSED_RETRY_PAUSES):
            if failed is None:
                pause = REFUSED_RETRY_PAUSES[self.attempts]
                self.attempts += 1
                if pause:
                    await asyncio.sleep(pause)
                if self.done:
                    return
            try:
                if failed is not None:
                    raise failed
                conn = await self.pool.connect()
            except (asyncio.TimeoutError, OSError) as exc:
                failed = None
                silent = isinstance(exc, asyncio.TimeoutError)
                error = (f"no connection within connect_timeout={self.pool.connect_timeout:g}s" if silent
                         else f"{type(exc).__name__}: {exc}")
                verdict = await self._after_refusal()
                if verdict is ANSWERED:
                    return  # answered (the runtime is down, or a restart failed)
                if silent and verdict is ALIVE:
                    break  # silence is not a refusal: do not wait that long again
                continue
            if self.done:
                self.pool.put(conn)
            else:
                self._send(conn)
            return
        self.manager.health.suspect()  # a dead instance goes to `stopped`; the next request starts it again
        self._fail(UpstreamError(502, f"upstream connection failed: {error}"))

    async def _lost_again(self, error: str) -> None:
        """The fresh connection of a retry closed unanswered too: a port proxy accepts for an instance that is
        going (stopped from outside, its runtime going down). Asked and tried again like a refusal."""
        verdict = await self._after_refusal()
        if verdict is ANSWERED:
            return
        if self.attempts >= len(REFUSED_RETRY_PAUSES):
            self.manager.health.suspect()
            self._fail(UpstreamError(502, f"upstream connection failed: {error}"))
            return
        await self._connect()

    async def _after_refusal(self) -> str:
        """Ask the runtime about a refusing instance; restart it if gone. ANSWERED when this answered already,
        ALIVE when the runtime says it is there (or it was replaced once already), REPLACED: a fresh one."""
        try:
            alive = await self.manager.health.liveness()
            if alive is None:  # the runtime is down too: its containers likely with it; try again soon
                raise RuntimeUnreachable("the instance refused, dropped or ignored the connection and the container "
                                         "runtime cannot be reached", key=self.key)
            if alive or self.replaced:
                return ALIVE  # alive after all (or replaced once already): the caller tries again shortly
            self.replaced = True
            await self.manager.ensure_running(reason="request")
        except Refusal as refusal:
            if self.handler.retry_advisor is not None:
                self.handler.retry_advisor.advise(refusal, self.manager)
            self._fail(refusal)
            return ANSWERED
        instance = self.manager.instance
        if self.done or instance is None:
            return ANSWERED if self.done else ALIVE
        pool = self.handler.pools.upstream(instance)
        self.request = self.request.replace(b"\r\nHost: %s\r\n" % self.pool.authority,
                                            b"\r\nHost: %s\r\n" % pool.authority, 1)
        self.pool = pool
        return REPLACED
