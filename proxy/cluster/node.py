"""This replica as a cluster member: its store, ownership rules and forwarder, started and closed with the proxy."""

from __future__ import annotations

import re

from backends.base import Backend
from proxy.cluster.etcd import EtcdStore
from proxy.cluster.forward import Forwarder
from proxy.cluster.owner import Ownership
from proxy.cluster.store import Member
from proxy.config import Config
from proxy.registry import Registry


class Node:
    def __init__(self, config: Config, registry: Registry, backend: Backend) -> None:
        cluster = config.cluster
        advertise = cluster.advertise or f"http://{config.host}:{config.port}"
        me = Member(cluster.replica_id or re.sub(r"[^A-Za-z0-9_.-]+", "-", advertise.split("://", 1)[-1]), advertise)
        self.store = EtcdStore(me, cluster.endpoints, cluster.lease_ttl, cluster.prefix)
        self.ownership = Ownership(self.store, registry, backend, config)
        self.forwarder = Forwarder(self.ownership, config.connect_timeout, config.upstream_timeout)

    async def start(self) -> None:
        await self.store.start()

    async def close(self) -> None:
        """Give the lease up (after the owned keys' instances were stopped): peers take the keys at once."""
        await self.store.close()
        await self.forwarder.close()


def join(config: Config, registry: Registry, backend: Backend) -> Node | None:
    """The cluster member for `cluster.store`, None for `none` (one process: nothing changes)."""
    return None if config.cluster.store == "none" else Node(config, registry, backend)
