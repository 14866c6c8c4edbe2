"""The ownership store port: membership under a lease and one lease-backed claim per key.

Like Sablier's `Store`, the rules (proxy/cluster/owner.py) only see this small interface: the in-memory
store serves one process (and unit tests), `EtcdStore` (proxy/cluster/etcd.py) a cluster. A claim is
true only while its holder's lease lives, so two replicas never both own a key: the lease is the truth,
rendezvous hashing (`rendezvous`) only the hint of who should claim a free key.
"""

from __future__ import annotations

import hashlib
import time
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


class OwnershipStore(ABC):
    """Membership and claims of one replica (`me`)."""

    def __init__(self, me: Member, lease_ttl: float) -> None:
        self.me = me
        self.lease_ttl = lease_ttl
        self.valid_until = 0.0  # monotonic: our claims are certainly ours until then (last renewal + ttl)
        self.epoch = 0  # bumped with each lease taken
        self.on_void: list[Callable[[], None]] = []  # told when the lease was lost: every claim under it is void

    def void(self) -> None:
        """The lease expired before we could renew it: our claims are gone (another replica may hold them)."""
        self.valid_until = 0.0
        for listener in self.on_void:
            listener()

    def holds_lease(self) -> bool:
        return time.monotonic() < self.valid_until

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
