"""Who serves a key: this replica (it holds the key's claim) or a peer (forward there).

The unit of ownership is (class, route key): an lb route's pool moves as one, so its balancing stays on one
replica. `locate` is the one rule: a key claimed here is served here; a claimed key elsewhere is forwarded
to its holder; a free key is claimed by the replica rendezvous hashing prefers (a request landing elsewhere
is forwarded to that replica, which claims it on arrival). A replica that just claimed a key adopts the
key's running containers by their labels first, so a failover never starts a second one.

`owns` is the fast path's O(1) check; it turns false by itself once the lease could have expired (etcd away
longer than the ttl), so a replica cut off from etcd stops serving keys another may have taken over.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any, Callable

import structlog

from backends.base import Backend, BackendError, Instance
from proxy.keys import member_key
from proxy.cluster.store import Member, OwnershipStore, StoreUnavailable, rendezvous
from proxy.config.schema import Config
from proxy.errors import Refusal
from proxy.lifecycle.events import State
from proxy.lifecycle.manager import Manager
from proxy.lifecycle.services import FencedKey
from proxy.lifecycle.registry import Registry

log = structlog.get_logger("proxy.cluster")

Unit = tuple[str, str]  # (class, route key)
LIST_FRESH = 1.0  # seconds a listing of the runtime's instances serves the claims made meanwhile


class ClusterUnavailable(Refusal):
    """The ownership store cannot be asked and the key is not owned here: nobody can say who serves it."""

    status, error, retry_after = 503, "cluster unavailable", 1.0
    public = "the cluster cannot tell which replica serves this app"


class OwnerMoving(Refusal):
    """The key's owner is unreachable or just changed; its lease expiry hands the key on."""

    status, error, retry_after = 503, "owner moving", 1.0
    public = "the replica serving this app is changing; try again shortly"


class NotOwner(OwnerMoving):
    """A peer forwarded a request here but another replica holds the key (the peer's member view was stale,
    or another replica claimed the free key first). Never forwarded again from here: the peer asks the store
    for the holder and sends it there (proxy/cluster/forward.py), so a start-up race converges."""

    def __init__(self, reason: str, holder: str, **extra: Any) -> None:
        super().__init__(reason, owner=holder, **extra)
        self.holder = holder


class Ownership:
    def __init__(self, store: OwnershipStore, registry: Registry, backend: Backend, config: Config) -> None:
        self.store = store
        self.registry = registry
        self.backend = backend
        self.owned: set[Unit] = set()
        self._owners: dict[Unit, tuple[Member, float]] = {}  # elsewhere, until (monotonic)
        self._flights: dict[tuple[Unit, bool], asyncio.Future[Member | None]] = {}
        self._listing: tuple[float, asyncio.Future[list[Instance]]] | None = None  # (when, list_instances)
        store.on_void.append(self._void)
        store.on_lapse.append(self._lapse)
        self._lb_members = {(r.container, member_key(r.key, i)): r.key
                            for r in config.routes if r.mode == "lb" for i in range(r.pool_size)}
        registry.admits = self.owns_instance
        registry.services = replace(registry.services, fence=self)  # before any manager is made
        self.forwarded = 0  # requests sent on to their owner (a metric)

    # ---------------------------------------------------------------- the fence (proxy/lifecycle/manager.py's Fence)

    def holds(self, manager: FencedKey) -> bool:
        """May this replica act on the manager's key now: the lease is valid, the key's unit is claimed under
        it and the manager is the registry's (not one let go of). Synchronous: read when the caller runs,
        so an idle timer firing after a freeze sees the lapse before anything else could tell it. A lapse
        seen here drops every owned key to passive at once."""
        if not self.store.valid():
            self._lapse()
            return False
        unit = self.unit_of(manager.klass.name, manager.key)
        return unit in self.owned and self.registry.managers.get((manager.klass.name, manager.key)) is manager

    async def confirm(self, manager: FencedKey) -> bool:
        """Right before a stop or pause: the store's owner record is ours under our lease (one transaction).
        Not confirmed: the key is let go of here, its instance untouched (another replica's now, or the sweep's)."""
        unit = self.unit_of(manager.klass.name, manager.key)
        if self.holds(manager) and await self.store.confirm(f"{unit[0]}/{unit[1]}") and self.holds(manager):
            return True
        log.warning("cluster_action_not_confirmed", container=unit[0], key=unit[1], replica=self.me.id)
        self._drop(unit)
        return False

    def _drop(self, unit: Unit) -> None:
        """Forget one unit's claim and let go of its managers (untouched)."""
        self.owned.discard(unit)
        self._detach({unit}, lambda _manager: True)

    @property
    def me(self) -> Member:
        return self.store.me

    def owns(self, class_name: str, key: str) -> bool:
        """Served here without asking anyone (the fast path's check)."""
        return (class_name, key) in self.owned and self.store.valid()

    def unit_of(self, class_name: str, key: str) -> Unit:
        """The ownership unit a manager's key belongs to (an lb member's is its pool's route key)."""
        return class_name, self._lb_members.get((class_name, key), key)

    def owns_instance(self, class_name: str, key: str) -> bool:
        """May this replica adopt a running instance of (class, key)? Only of keys it owns."""
        unit = self.unit_of(class_name, key)
        return self.owns(*unit)

    def forget(self, class_name: str, key: str) -> None:
        """The holder did not answer: ask the store again next time."""
        self._owners.pop((class_name, key), None)

    async def runs_here(self, class_name: str, key: str) -> bool:
        """For schedules: fire on the key's owner only (claiming it here when this replica is its choice)."""
        try:
            return await self.locate(*self.unit_of(class_name, key)) is None
        except Refusal:
            return False

    async def locate(self, class_name: str, key: str, forwarded: bool = False) -> Member | None:
        """None: serve here. A member: forward there. Raises a Refusal when nobody can be resolved now.

        `forwarded`: the request came from a peer; it is served here or refused, never forwarded again."""
        unit = (class_name, key)
        if unit in self.owned and self.store.valid():
            return None
        if not forwarded and (cached := self._owners.get(unit)) is not None and cached[1] > time.monotonic():
            return cached[0]
        flight = self._flights.get((unit, forwarded))
        if flight is None:
            flight = self._flights[(unit, forwarded)] = asyncio.ensure_future(self._resolve(unit, forwarded))
            flight.add_done_callback(lambda _: self._flights.pop((unit, forwarded), None))
        return await asyncio.shield(flight)

    async def _resolve(self, unit: Unit, forwarded: bool) -> Member | None:
        name = f"{unit[0]}/{unit[1]}"
        try:
            if not self.store.valid():  # lapsed (etcd was away): renewed now, not at the loop's next round
                await self.store.revive()
            holder = await self.store.owner(name)
            if holder is None:
                if not forwarded:  # the hint from the member list read now: a replica that joined since counts
                    hint = rendezvous(name, await self.store.refresh())
                    if hint is not None and hint.id != self.me.id:
                        return hint  # that replica claims it on arrival (not remembered: nobody holds it yet)
                holder = await self.store.claim(name)
            if holder == self.me.id:
                await self._adopt(unit)
                if not self.store.valid():  # the lease lapsed while we listed: nothing is certainly ours
                    raise StoreUnavailable("the lease lapsed while claiming")
                self.owned.add(unit)
                self._resume_passive(unit)
                self._owners.pop(unit, None)
                return None
            if forwarded:
                raise NotOwner(f"{name} is owned by {holder}", holder, key=unit[1])
            member = await self._member(holder)
        except StoreUnavailable as exc:
            raise ClusterUnavailable(f"cannot resolve the owner of {name}: {exc}", key=unit[1]) from None
        self._owners[unit] = (member, time.monotonic() + self.store.lease_ttl)
        return member

    async def _member(self, holder: str) -> Member:
        for members in (await self.store.members(), await self.store.refresh()):
            for member in members:
                if member.id == holder:
                    return member
        raise OwnerMoving(f"owner {holder} is not a live member")

    async def sweep(self, fresh: bool = False) -> int:
        """Claim orphans: running instances whose key nobody owns (the owner died and no request came since)
        are claimed and adopted by their rendezvous choice, so none runs on without an idle timer; how many.
        `fresh`: the owners remembered from forwarding are forgotten first (the last replica out asks etcd)."""
        if fresh:
            self._owners.clear()
        try:  # (listed anew, and the claims below adopt from this listing: a container it shows is never missed)
            _, listed = await self._listed(fresh=True)
        except BackendError:
            return 0  # the runtime cannot be asked now; next round
        units = {self.unit_of(i.class_name, i.key) for i in listed if i.class_name in self.registry.config.containers}
        taken = 0
        for unit in units - self.owned:
            try:
                taken += await self.locate(*unit) is None
            except Refusal:
                pass  # the store is away or the owner moving: next round
        return taken

    def release(self) -> int:
        """Hand the owned keys over (a shutdown with live peers): let go of their running managers without
        stopping the instances, which the next owner adopts by their labels. A paused instance is not
        listed for adoption, so it stays with its manager (and is stopped by the shutdown); how many."""
        return self._let_go(lambda manager: manager.state is State.RUNNING)

    def _lapse(self) -> None:
        """The lease's validity ran out: every key goes passive (its manager stays, acts on nothing, its
        instance untouched). A request or the sweep claims it again: under the same lease (it never expired
        in etcd, so nobody else can have owned the key meanwhile) the manager carries on; if the lease was
        lost, `_void` lets go of the managers first."""
        if self.owned:
            log.warning("cluster_lease_invalid", replica=self.me.id, keys=len(self.owned))
            self.owned = set()

    def _resume_passive(self, unit: Unit) -> None:
        """A unit claimed again under the lease it was held by: its managers' idle timers run again, counted
        from now (the claim is activity: a request claiming it is about to use the instance)."""
        for (class_name, key), manager in list(self.registry.managers.items()):
            if self.unit_of(class_name, key) == unit and manager.state is not State.STOPPED:
                manager.touch()

    def _void(self) -> None:
        """Our lease expired (etcd away too long): forget the claims and let go of their managers, without
        stopping their instances (another replica may have adopted them); a later request claims again. Every
        manager goes, passive ones too (their claims went with the lease)."""
        self.owned = set()
        units = {self.unit_of(class_name, key) for class_name, key in self.registry.managers}
        self._detach(units, lambda _manager: True)
        log.warning("cluster_claims_void", replica=self.me.id, keys=len(units))

    def _let_go(self, which: Callable[[Manager], bool]) -> int:
        """Forget every claim; drop the owned units' managers that `which` picks (never idle-stopped here any
        more); how many keys were owned."""
        lost, self.owned = self.owned, set()
        kept = self._detach(lost, which)
        self.owned = kept  # a key whose manager stays (paused, at a handover) is still this replica's to stop
        return len(lost)

    def _detach(self, units: set[Unit], which: Callable[[Manager], bool]) -> set[Unit]:
        """Let go of the managers of `units` that `which` picks; the units of those it did not pick."""
        kept: set[Unit] = set()
        for (class_name, key), manager in list(self.registry.managers.items()):
            if (unit := self.unit_of(class_name, key)) not in units:
                continue
            if which(manager):
                del self.registry.managers[(class_name, key)]
                manager.let_go()  # never acted on here any more; its slot is freed once nothing is in flight
            elif manager.state is not State.STOPPED:
                kept.add(unit)
        return kept

    async def _listed(self, fresh: bool = False) -> tuple[float, list[Instance]]:
        """The runtime's running instances: one call shared by the claims made within LIST_FRESH seconds, so a
        burst of new keys lists once rather than once per key. A container missed by a list that old is still
        found by the backend's start (by its name) or by the sweep, never started twice. `fresh`: asked now (the
        sweep, whose claims adopt what it found: an older listing would miss a container started since)."""
        now = asyncio.get_running_loop().time()
        if fresh or self._listing is None or now - self._listing[0] > LIST_FRESH or (
                self._listing[1].done() and self._listing[1].exception() is not None):
            self._listing = (now, asyncio.ensure_future(self.backend.list_instances()))
        asked, listing = self._listing
        return asked, await asyncio.shield(listing)  # (when it was asked: what changed since is not adopted)

    async def _adopt(self, unit: Unit) -> None:
        """Take over the unit's running containers (a previous owner's), before serving it here; one of another
        spec than this replica's config (a rolling config change) is stopped rather than left running."""
        try:
            asked, listed = await self._listed()
        except BackendError as exc:
            log.warning("cluster_adopt_failed", key=unit[1], error=str(exc))
            return
        mine = [i for i in listed if self.unit_of(i.class_name, i.key) == unit]
        if adopted := self.registry.adopt(mine, checked=False, listed_at=asked):
            log.info("cluster_adopted", container=unit[0], key=unit[1], count=adopted, replica=self.me.id)
        if any(self.registry.stale(i) for i in mine) and self.store.valid() and await self.store.confirm(
                f"{unit[0]}/{unit[1]}"):  # (destructive: only while the store says the key is ours)
            await self.registry.stop_unadopted(mine, checked=False)
