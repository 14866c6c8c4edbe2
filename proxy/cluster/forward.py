"""Requests for a key owned by a peer: one hop to the owner, streamed both ways (HTTP and WebSockets).

The hop carries `X-Lazy-Proxy-Forwarded: <sender>` (dropped by the owner before the instance) and the
client's Host; a replica that receives it never forwards again (it
serves the key, claiming it if free, or refuses with 503), so a stale view cannot make a loop. A refusal
because another replica holds the key (a stale member view, a claim race at start-up) carries
`X-Lazy-Proxy-Owner`: the sender asks the store for the holder and sends a bodiless request there instead,
so the views converge rather than every request of the burst failing. When the
owner does not answer the connection (killed), its claim lives until its lease expires: the request waits,
asking again, for up to two lease ttls and a second, then a new owner (which adopts the running container)
serves it; only requests already sent to the dead owner fail.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
from aiohttp import web
from yarl import URL

from proxy.cluster.owner import ClusterUnavailable, NotOwner, OwnerMoving, Ownership
from proxy.cluster.store import Member
from proxy.errors import UpstreamError, refusal_response
from proxy.wire.h2upstream import H2Pool
from proxy.wire.websocket import HOP_BY_HOP, PEER_MARK, forward_websocket, is_websocket, upstream_headers
from proxy.request_id import of as request_id_of
from proxy.observe.request_log import BODY_BYTES

FORWARDED = PEER_MARK  # the owner drops it before the instance (proxy.wire.websocket.REQUEST_DROP)
OWNER_HEADER = "X-Lazy-Proxy-Owner"  # on a peer's 503: it is not the key's owner, this replica is
RETRY_EVERY = 0.2  # seconds between asking again while an unreachable owner's lease runs out
UNREACHABLE = "the replica serving this app could not be reached"  # the public words for a failed hop


class Misdirected(Exception):
    """The peer we forwarded to refused: another replica (`holder`) owns the key."""

    def __init__(self, peer: str, holder: str) -> None:
        super().__init__(f"{peer} says {holder} owns the key")
        self.holder = holder


class Forwarder:
    def __init__(self, ownership: Ownership, connect_timeout: float, upstream_timeout: float) -> None:
        self.ownership = ownership
        self.connect_timeout = connect_timeout
        self._timeout = aiohttp.ClientTimeout(sock_connect=connect_timeout, sock_read=upstream_timeout)
        self._session: aiohttp.ClientSession | None = None
        self._h2: dict[str, H2Pool] = {}  # HTTP/2 streams' hops (proxy/http/h2peer.py), by member URL

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(auto_decompress=False, timeout=self._timeout,
                                                  connector=aiohttp.TCPConnector(limit=0))
        return self._session

    def h2_pool(self, member: Member) -> H2Pool:
        """The h2c connection to a peer (an `http://` member): HTTP/2 streams hop as HTTP/2, trailers included."""
        pool = self._h2.get(member.url)
        if pool is None:
            url = URL(member.url)
            pool = self._h2[member.url] = H2Pool(url.host or "", url.port or 80, self.connect_timeout)
        return pool

    async def close(self) -> None:
        for pool in self._h2.values():
            pool.close()
        if self._session is not None:
            await self._session.close()

    async def elsewhere(self, request: web.Request, class_name: str, key: str,
                        open_sockets: set[web.WebSocketResponse]) -> web.StreamResponse | None:
        """The owner's answer when the key is owned by a peer; None when it is served here."""
        forwarded = FORWARDED in request.headers
        deadline = time.monotonic() + 2 * self.ownership.store.lease_ttl + 1.0  # expiry, then a member refresh
        misdirected = 0
        while True:
            try:
                owner = await self.ownership.locate(class_name, key, forwarded)
            except (NotOwner, ClusterUnavailable, OwnerMoving) as refusal:
                if not forwarded:
                    raise
                # From a peer: it asks the store (or waits for it) and sends the request on itself; an empty
                # holder says "not here, nobody certain yet" (this replica cannot confirm its ownership).
                answer = refusal_response(refusal, request_id_of(request))
                answer.headers[OWNER_HEADER] = refusal.holder if isinstance(refusal, NotOwner) else ""
                return answer
            if owner is None:
                return None
            try:
                self.ownership.forwarded += 1
                return await self._send(request, owner, open_sockets)
            except Misdirected as exc:
                # Our view was stale (or another replica claimed first): the store knows the holder now.
                self.ownership.forget(class_name, key)
                misdirected += 1
                if misdirected > 2 and time.monotonic() >= deadline:  # a first answer may come late (a freeze)
                    raise OwnerMoving(f"{owner.id} is not the owner of {key} ({exc})", key=key) from None
                if misdirected > 1:
                    await asyncio.sleep(RETRY_EVERY)
            except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as exc:
                if not isinstance(exc, aiohttp.ClientConnectorError) and not _replayable(request):
                    raise UpstreamError(502, f"owner {owner.id} went away", key=key, public=UNREACHABLE) from None
                # The owner is gone before answering: wait for its lease to hand the key on.
                self.ownership.forget(class_name, key)
                if time.monotonic() >= deadline:
                    raise OwnerMoving(f"owner {owner.id} of {key} unreachable", key=key,
                                      retry_after=self.ownership.store.lease_ttl) from None
                await asyncio.sleep(RETRY_EVERY)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                raise UpstreamError(502, f"owner {owner.id}: {type(exc).__name__}: {exc}", key=key,
                                    public=UNREACHABLE) from None

    async def _send(self, request: web.Request, owner: Member, open_sockets: set[web.WebSocketResponse]
                    ) -> web.StreamResponse:
        url = owner.url + request.raw_path
        mark = {FORWARDED: self.ownership.me.id}
        if is_websocket(request):
            try:
                return await forward_websocket(request, self.session, url, on_message=_nothing,
                                               connect_timeout=self.connect_timeout, open_sockets=open_sockets,
                                               extra_headers=mark)
            except UpstreamError as exc:
                refused = exc.__cause__
                if isinstance(refused, aiohttp.WSServerHandshakeError) and refused.headers is not None \
                        and (holder := refused.headers.get(OWNER_HEADER)) is not None:
                    raise Misdirected(owner.id, holder) from None
                if isinstance(refused, (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError)):
                    raise refused from None  # no handshake happened: held and sent again, like a GET
                raise
        headers = upstream_headers(request)
        headers.update(mark)
        headers["Host"] = request.host  # the owner relays the client's Host, as if the client had come to it
        body = request.content if request.body_exists else None
        async with self.session.request(request.method, URL(url, encoded=True), headers=headers, data=body,
                                        allow_redirects=False) as answer:
            if (holder := answer.headers.get(OWNER_HEADER)) is not None and answer.status == 503 \
                    and body is None:  # a bodiless request is sent again, to the holder
                raise Misdirected(owner.id, holder)
            response = web.StreamResponse(status=answer.status, reason=answer.reason)
            for name, value in answer.headers.items():
                if name.lower() not in HOP_BY_HOP:
                    response.headers.add(name, value)
            await response.prepare(request)
            try:
                async for chunk in answer.content.iter_any():
                    await response.write(chunk)
                    request[BODY_BYTES] = request.get(BODY_BYTES, 0) + len(chunk)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                # The head is sent: the client can only learn it by the connection closing early.
                raise ConnectionResetError(f"owner {owner.id} broke off: {type(exc).__name__}") from exc
            await response.write_eof()
            return response


def _replayable(request: web.Request) -> bool:
    """Safe to send again after the owner dropped or reset the connection unanswered (a pooled connection to a
    dead owner fails this way, and a request in flight when it died): a bodiless GET, HEAD or OPTIONS."""
    return request.method in ("GET", "HEAD", "OPTIONS") and not request.body_exists


def _nothing() -> None:
    """The owner's Manager sees the WebSocket's messages; nothing to touch here."""
