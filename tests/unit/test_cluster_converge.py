"""A replica whose member view is stale at start-up converges (proxy/cluster/owner.py, proxy/cluster/forward.py).

The flake this guards against: three replicas just started, the first one's member list (read every ttl/3)
still without the last one. It claimed a free key itself while the last replica's hint was the second one,
which refused the forwarded burst with 503 "owner moving" and every request sent to the last replica failed.
Now a free key's hint comes from the member list read at that moment, and a peer that is not the owner answers
with the holder (`X-Lazy-Proxy-Owner`) so the sender asks the store and sends the request there.
"""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from proxy.cluster.forward import FORWARDED, OWNER_HEADER, Forwarder, Misdirected
from proxy.cluster.owner import NotOwner, Ownership
from proxy.cluster.store import Member, MemoryStore, rendezvous

A, B, C = Member("a", "http://a"), Member("b", "http://b"), Member("c", "http://c")


class StaleStore(MemoryStore):
    """A member list as the renewal loop last read it (`members`); `refresh` reads the live one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[Member] = []

    async def start(self) -> None:
        await super().start()
        self.seen = list(self.peers.values())

    async def members(self) -> list[Member]:
        return self.seen

    async def refresh(self) -> list[Member]:
        self.seen = list(self.peers.values())
        return self.seen


@pytest.fixture
def cluster(make_world):
    """Replicas A, B, C started in that order over one claim table: A saw only itself, B saw A and B."""
    claims: dict[str, str] = {}
    peers: dict[str, Member] = {}

    async def make() -> dict[str, Ownership]:
        made = {}
        for me in (A, B, C):
            world = make_world(svc={})
            store = StaleStore(me, shared=claims, peers=peers)
            await store.start()
            made[me.id] = Ownership(store, world.registry(), world.backend, world.config)
        return made

    return make


def key_for(everyone: Member, first_alone: Member) -> str:
    """A key whose rendezvous choice is `everyone` among A, B, C but `first_alone` among A, B."""
    return next(k for i in range(5000) if rendezvous(f"svc/{(k := f'k{i}')}", [A, B, C]) == everyone
                and rendezvous(f"svc/{k}", [A, B]) == first_alone)


async def test_a_free_keys_hint_comes_from_the_members_read_now(cluster):
    o = await cluster()
    key = key_for(C, B)
    assert rendezvous(f"svc/{key}", await o["b"].store.members()) == B  # the stale view would keep it on B
    assert await o["b"].locate("svc", key) == C  # read now: C joined, it is the choice
    assert await o["c"].locate("svc", key, forwarded=True) is None and o["c"].owns("svc", key)


async def test_a_forwarded_request_to_a_non_owner_names_the_holder(cluster):
    o = await cluster()
    key = key_for(C, B)
    assert await o["a"].store.claim(f"svc/{key}") == "a"  # A claimed it first (it saw only itself)
    with pytest.raises(NotOwner) as refused:
        await o["b"].locate("svc", key, forwarded=True)
    assert refused.value.holder == "a" and refused.value.status == 503
    forwarder = Forwarder(o["b"], 1.0, 5.0)
    answer = await forwarder.elsewhere(make_mocked_request("GET", f"/k/{key}/x", headers={FORWARDED: "c"}),
                                       "svc", key, set())
    assert answer is not None and answer.status == 503 and answer.headers[OWNER_HEADER] == "a"


async def test_a_misdirected_request_is_sent_again_to_the_holder(cluster):
    o = await cluster()
    key = key_for(C, B)
    forwarder = Forwarder(o["c"], 1.0, 5.0)
    sent: list[str] = []

    async def send(request: web.Request, owner: Member, sockets: set[web.WebSocketResponse]) -> web.Response:
        sent.append(owner.id)
        holder = await o[owner.id].store.owner(f"svc/{key}")
        if holder is not None and holder != owner.id:
            raise Misdirected(owner.id, holder)  # what _send raises on the peer's 503 with the holder header
        return web.Response(text=owner.id)

    forwarder._send = send  # type: ignore[method-assign]
    o["c"]._owners[("svc", key)] = (B, float("inf"))  # a stale remembered owner: B
    assert await o["a"].store.claim(f"svc/{key}") == "a"  # but A holds the key
    answer = await forwarder.elsewhere(make_mocked_request("GET", f"/k/{key}/x"), "svc", key, set())
    assert isinstance(answer, web.Response) and answer.text == "a"
    assert sent == ["b", "a"]  # one misdirected hop, then the holder the store names
    assert o["c"]._owners[("svc", key)][0] == A  # remembered now
