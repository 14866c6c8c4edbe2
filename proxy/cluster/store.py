"""The ownership store port: membership under a lease and one lease-backed claim per key.

Like Sablier's `Store`, the rules (proxy/cluster/owner.py) only see this small interface: the in-memory
store serves one process (and unit tests), `EtcdStore` (proxy/cluster/etcd.py) a cluster. A claim is
true only while its holder's lease lives, so two replicas never both own a key: the lease is the truth,
rendezvous hashing (`rendezvous`) only the hint of who should claim a free key.
"""

from __future__ import annotations

import asyncio
import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Sequence


@dataclass(frozen=True)
class Member:
    """A live replica: its id and the URL its peers forward requests to."""

    id: str
    url: str


class StoreUnavailable(Exception):
    """The store cannot be asked now (etcd down or unreachable): ownership of a new key cannot be resolved."""


def rendezvous(unit: str, members: Sequence[Member]) -> Member | None:
    """Highest-random-weight choice: each key's preferred member, and its successor when that one leaves."""
    best: tuple[bytes, Member] | None = None
    for member in members:
        weight = hashlib.blake2b(f"{member.id}\0{unit}".encode(), digest_size=8).digest()
        if best is None or weight > best[0]:
            best = (weight, member)
    return best[1] if best is not None else None


def safety_margin(lease_ttl: float) -> float:
    """Seconds the local validity ends before the lease can expire in etcd: room for clock-rate drift between
    this host and etcd's leader and for the delay of the answer (a tenth of the ttl, at least 50 ms)."""
    return max(0.05, lease_ttl / 10)


def now() -> float:
    """The loop's monotonic clock: what timers fire on, so a lease checked by a timer's callback and the timer
    itself agree (and unit tests on a virtual clock see the same time as the code)."""
    return asyncio.get_running_loop().time()


class OwnershipStore(ABC):
    """Membership and claims of one replica (`me`).

    The lease's local validity (`valid`) is the rule every action on a key obeys: until (send time of the last
    keepalive etcd answered) + ttl - margin. It is read without awaiting anything, so after a freeze (SIGSTOP,
    a VM stall) or a cut it is already false when the process runs again, before any timer callback acts."""

    def __init__(self, me: Member, lease_ttl: float) -> None:
        self.me = me
        self.lease_ttl = lease_ttl
        self.margin = safety_margin(lease_ttl)
        self.valid_until = 0.0  # loop time: our claims are certainly ours until then
        self.epoch = 0  # bumped with each lease taken
        self.errors = 0  # failed calls to the store (a metric)
        self.on_void: list[Callable[[], None]] = []  # told when the lease was lost: every claim under it is void
        self.on_lapse: list[Callable[[], None]] = []  # told when the validity ran out (the lease may still live)

    def renewed(self, sent_at: float) -> None:
        """The store confirmed the lease for a request sent at `sent_at` (loop time): valid for a ttl from then,
        less the margin (the lease's ttl counts from when etcd saw it, which was later: the rule is safe)."""
        self.valid_until = max(self.valid_until, sent_at + self.lease_ttl - self.margin)

    def void(self) -> None:
        """The lease expired before we could renew it: our claims are gone (another replica may hold them)."""
        self.valid_until = 0.0
        for listener in self.on_void:
            listener()

    def lapsed(self) -> None:
        """The validity ran out without a renewal (etcd slow or away, or this process was frozen)."""
        for listener in self.on_lapse:
            listener()

    def valid(self) -> bool:
        """Our claims are certainly still ours (no await: the answer is about now, not after a suspension)."""
        return now() < self.valid_until

    def holds_lease(self) -> bool:
        return self.valid()

    async def revive(self) -> None:
        """The validity ran out and a request needs the store now: renew the lease at once (etcd may be back)
        rather than at the renewal loop's next round; raises StoreUnavailable when it cannot. Nothing to do
        for a store whose lease cannot lapse."""
        return None

    async def confirm(self, unit: str) -> bool:
        """Right before a stop or pause: does the store still record this replica as `unit`'s owner under its
        current lease? False also when the store cannot be asked (then nobody's instance is touched)."""
        return self.valid()

    async def leave(self) -> list[Member]:
        """Mark this replica leaving (shutdown) and return the live members that are not: whom keys may be
        handed to. Marked before read, so of replicas leaving together the last to mark sees all the others."""
        return [m for m in await self.refresh() if m.id != self.me.id]

    async def leavers(self) -> set[str]:
        """The other replicas marked leaving and still shutting down."""
        return set()

    @abstractmethod
    async def start(self) -> None:
        """Join: take a lease, register as a member under it, keep it alive."""

    @abstractmethod
    async def close(self) -> None:
        """Leave: give the lease up, so this replica's keys move at once rather than after the ttl."""

    @abstractmethod
    async def members(self) -> list[Member]:
        """The live members (a recent view; the claim, not this list, decides ownership)."""

    async def refresh(self) -> list[Member]:
        """The member list read now (a forward to a member failed, or a free key's owner is chosen)."""
        return await self.members()

    @abstractmethod
    def view(self) -> list[Member]:
        """The member list as last read, without asking anyone (for /health: has this replica seen its peers)."""

    @abstractmethod
    async def owner(self, unit: str) -> str | None:
        """The id of the member holding `unit`'s claim, None when nobody does."""

    @abstractmethod
    async def claim(self, unit: str) -> str:
        """Claim `unit` for this member if nobody holds it; the holder's id afterwards (ours or another's)."""


class MemoryStore(OwnershipStore):
    """One process: it is the only member and owns every key (`cluster.store: none`, and unit tests)."""

    def __init__(self, me: Member, lease_ttl: float = 5.0, shared: dict[str, str] | None = None,
                 peers: dict[str, Member] | None = None) -> None:
        super().__init__(me, lease_ttl)
        self.claims = shared if shared is not None else {}
        self.peers = peers if peers is not None else {}

    async def start(self) -> None:
        self.peers[self.me.id] = self.me
        self.valid_until = float("inf")

    async def confirm(self, unit: str) -> bool:
        return self.valid() and self.claims.get(unit) == self.me.id

    async def close(self) -> None:
        self.peers.pop(self.me.id, None)
        for unit in [u for u, holder in self.claims.items() if holder == self.me.id]:
            del self.claims[unit]
        self.valid_until = 0.0

    async def members(self) -> list[Member]:
        return list(self.peers.values())

    def view(self) -> list[Member]:
        return list(self.peers.values())

    async def owner(self, unit: str) -> str | None:
        return self.claims.get(unit)

    async def claim(self, unit: str) -> str:
        return self.claims.setdefault(unit, self.me.id)
