"""This replica as a cluster member: its store, ownership rules and forwarder, started and closed with the proxy,
and the sweep that claims instances whose owner died when no request for them came since."""

from __future__ import annotations

import asyncio
import contextlib
import re

import structlog

from backends.base import Backend
from proxy.cluster.etcd import EtcdStore
from proxy.cluster.forward import Forwarder
from proxy.cluster.owner import Ownership
from proxy.cluster.store import Member, StoreUnavailable
from proxy.config.schema import Config
from proxy.lifecycle.registry import Registry

log = structlog.get_logger("proxy.cluster")

SWEEP_EVERY = 5.0  # seconds between looks for running instances nobody owns (a dead owner's, no request since)
ORPHAN_WAIT = 3  # lease ttls the last replica out waits for the other leavers to be gone


class Node:
    def __init__(self, config: Config, registry: Registry, backend: Backend) -> None:
        cluster = config.cluster
        scheme = "https" if config.tls is not None else "http"  # server.tls: peers reach this port over TLS too
        advertise = cluster.advertise or f"{scheme}://{config.host}:{config.port}"
        me = Member(cluster.replica_id or re.sub(r"[^A-Za-z0-9_.-]+", "-", advertise.split("://", 1)[-1]), advertise)
        self.store = EtcdStore(me, cluster.endpoints, cluster.lease_ttl, cluster.prefix)
        self.ownership = Ownership(self.store, registry, backend, config)
        self.forwarder = Forwarder(self.ownership, config.connect_timeout, config.upstream_timeout)
        self._sweeper: asyncio.Task[None] | None = None
        self.handover = cluster.handover

    async def start(self) -> None:
        await self.store.start()
        self._sweeper = asyncio.create_task(self._sweep(), name="cluster-sweep")

    async def hand_over(self) -> bool:
        """On shutdown, after the drain: True when this replica let go of its running keys for its peers to
        adopt (`cluster.handover`, and some peer is alive); False when the proxy must stop them itself."""
        if not self.handover:
            return False
        try:
            peers = await self.store.leave()  # marked leaving in etcd first: a peer leaving too is not a taker
        except StoreUnavailable:
            return False  # nobody can be told: stop what etcd confirms is ours
        if not peers:  # the last one out: it stops the instances, those the other leavers let go of too
            await self._take_orphans()
            return False
        keys = self.ownership.release()
        log.info("cluster_handover", replica=self.store.me.id, keys=keys, peers=len(peers))
        return True

    async def _take_orphans(self) -> None:
        """The last replica out: once the other leavers are gone (their leases revoked or expired, at most
        ORPHAN_WAIT lease ttls), claim every running instance nobody owns, so the shutdown's stop stops it."""
        deadline = asyncio.get_running_loop().time() + ORPHAN_WAIT * self.store.lease_ttl
        try:
            while (leavers := await self.store.leavers()) and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.2)
            taken = await self.ownership.sweep(fresh=True)
        except StoreUnavailable:
            return
        log.info("cluster_last_out", replica=self.store.me.id, orphans=taken, still_leaving=sorted(leavers))

    async def close(self) -> None:
        """Give the lease up (after the owned keys' instances were stopped or handed over): peers take the keys
        at once."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self.store.close()
        await self.forwarder.close()

    def status(self) -> dict[str, object]:
        """This replica in the cluster as /health shows it: joined (it holds its lease) and the members it sees
        (a harness waits for every replica to see all of them before it sends traffic)."""
        return {"replica": self.store.me.id, "joined": self.store.valid(),
                "members": [member.id for member in self.store.view()]}

    def info(self) -> dict[str, object]:
        """The cluster section of /info and `ctl members`: this replica, its lease and what it owns."""
        loop = asyncio.get_running_loop()
        store = self.store
        return {"replica": store.me.id, "url": store.me.url, "store": "etcd", "endpoints": list(store.endpoints),
                "lease_ttl": store.lease_ttl, "lease_valid": store.valid(), "epoch": store.epoch,
                "lease_valid_for": round(max(0.0, store.valid_until - loop.time()), 3),
                "members": [{"id": m.id, "url": m.url} for m in store.view()],
                "owned_keys": sorted(f"{c}/{k}" for c, k in self.ownership.owned),
                "forwarded_requests": self.ownership.forwarded, "store_errors": store.errors}

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY)
            try:
                if taken := await self.ownership.sweep():
                    log.info("cluster_orphans_adopted", count=taken, replica=self.store.me.id)
            except Exception as exc:  # noqa: BLE001 - the sweep must outlive any one failure
                log.warning("cluster_sweep_failed", error=f"{type(exc).__name__}: {exc}")


def join(config: Config, registry: Registry, backend: Backend) -> Node | None:
    """The cluster member for `cluster.store`, None for `none` (one process: nothing changes)."""
    return None if config.cluster.store == "none" else Node(config, registry, backend)
