"""Clustered: an HTTP/2 stream for a key another replica owns goes to the owner, as an HTTP/1.1 request does.

The owner is found by the same rule (`Ownership.locate`) and the same loop as proxy/cluster/forward.py's:
a bodiless request refused by a replica that is not the owner (`X-Lazy-Proxy-Owner`) is sent again to the
holder the store names; an owner that cannot be reached is asked for again until its lease hands the key on.
The hop is one h2c stream on a pooled HTTP/2 connection to the owner's proxied port (its listener takes h2c
with prior knowledge), so a gRPC answer's trailers reach the client; the owner serves the stream with the
whole lifecycle and never forwards it again (`X-Lazy-Proxy-Forwarded`). Peers advertised as `https://`
(`server.tls`) are not reached over HTTP/2: such a stream is refused 503 as before (a stated limit). A bodiless
GET/HEAD/OPTIONS the owner drops unanswered (it is draining: REFUSED_STREAM, or gone) is sent again.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from proxy.cluster.forward import OWNER_HEADER, RETRY_EVERY, UNREACHABLE, Misdirected
from proxy.cluster.owner import ClusterUnavailable, NotOwner, OwnerMoving
from proxy.errors import Fenced, Refusal, UpstreamError
from proxy.http.h2_to_h2 import relay
from proxy.wire.h2upstream import StreamClosed
from proxy.wire.websocket import PEER_MARK

if TYPE_CHECKING:
    from proxy.http.h2server import ClientStream, Header
    from proxy.http.routes import RouteHandler

_MARK = PEER_MARK.encode()
_OWNER = OWNER_HEADER.lower().encode()
REPLAYABLE = ("GET", "HEAD", "OPTIONS")  # sent again when the owner dropped the stream unanswered (as forward.py)


def from_peer(stream: ClientStream) -> bool:
    return any(name == _MARK for name, _ in stream.headers)


def owner_hint(stream: ClientStream, refusal: Refusal) -> list[Header]:
    """On a peer's stream refused for ownership: the holder (empty: nobody certain yet), for the sender to retry."""
    if not isinstance(refusal, (NotOwner, ClusterUnavailable, OwnerMoving)) or not from_peer(stream):
        return []
    return [(_OWNER, (refusal.holder if isinstance(refusal, NotOwner) else "").encode())]


async def to_owner(stream: ClientStream, handler: RouteHandler, key: str, method: str, path: str, authority: str,
                   forwarded: list[Header]) -> tuple[int, int] | None:
    """(status, bytes sent) of the owner's answer relayed to the client; None when the key is served here."""
    forwarder = handler.cluster
    assert forwarder is not None
    ownership = forwarder.ownership
    class_name, peer = handler.route.container, from_peer(stream)
    deadline = time.monotonic() + 2 * ownership.store.lease_ttl + 1.0  # expiry, then a member refresh
    bodyless = stream.ended and not stream.chunks
    misdirected = 0
    while True:
        owner = await ownership.locate(class_name, key, peer)  # from a peer: served here or refused
        if owner is None:
            return None
        if not owner.url.startswith("http://"):
            raise Fenced(f"HTTP/2 is not forwarded to {owner.url} (an https peer); its owner is {owner.id}", key=key)
        pool = forwarder.h2_pool(owner)
        request = [(b":method", method.encode()), (b":scheme", b"http"),
                   (b":authority", authority.encode("latin-1") or pool.authority), (b":path", path.encode("latin-1")),
                   *forwarded, (_MARK, ownership.me.id.encode())]

        def vet(pairs: list[Header], owner_id: str = owner.id) -> None:
            holder = dict(pairs).get(_OWNER)
            if holder is not None and bodyless:  # a bodiless request is sent again, to the holder
                raise Misdirected(owner_id, holder.decode("latin-1"))

        ownership.forwarded += 1
        try:
            return await relay(stream, pool, request, handler.config.max_body_size, handler.config.upstream_timeout,
                               key, [], _uncounted, vet, UNREACHABLE)
        except Misdirected as exc:
            ownership.forget(class_name, key)
            misdirected += 1
            if misdirected > 2 and time.monotonic() >= deadline:
                raise OwnerMoving(f"{owner.id} is not the owner of {key} ({exc})", key=key) from None
            if misdirected > 1:
                await asyncio.sleep(RETRY_EVERY)
        except StreamClosed as exc:
            if not (bodyless and method in REPLAYABLE and not exc.got_response):
                raise UpstreamError(502, f"owner {owner.id}: {exc}", key=key, public=UNREACHABLE) from None
            ownership.forget(class_name, key)  # refused unanswered (the owner draining, or gone): sent again
            if time.monotonic() >= deadline:
                raise OwnerMoving(f"owner {owner.id} of {key} did not answer", key=key) from None
            await asyncio.sleep(RETRY_EVERY)
        except OSError:  # no stream opened: the owner is gone; wait for its lease to hand the key on
            ownership.forget(class_name, key)
            if time.monotonic() >= deadline:
                raise OwnerMoving(f"owner {owner.id} of {key} unreachable", key=key,
                                  retry_after=ownership.store.lease_ttl) from None
            await asyncio.sleep(RETRY_EVERY)


def _uncounted(nbytes: int) -> None:
    """The owner meters the key's egress; the sender's access line counts the bytes it relayed."""
