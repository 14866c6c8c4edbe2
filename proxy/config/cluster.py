"""`cluster`: key ownership across proxy replicas (part of proxy/config/schema.py's schema; see proxy/cluster/).

`store: none` is one process, exactly the behaviour without the section. `store: etcd` makes every key owned by
one replica at a time (an etcd lease-backed claim), and the other replicas forward its requests there.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from proxy.config.base import Section, field_error, shown
from proxy.config.units import BaseUrl, Name, PositiveDuration, TupleOf

__all__ = ["Cluster"]


class Cluster(Section):
    store: Literal["none", "etcd"] = Field(
        default="none", description="`none` (one process) or `etcd` (one owner replica per key)")
    endpoints: TupleOf[BaseUrl] = Field(
        default=(), description="etcd client URLs (its v3 JSON gateway), e.g. `http://127.0.0.1:2379`")
    advertise: BaseUrl | None = Field(
        default=None, description="the URL other replicas reach this one's proxied port at",
        json_schema_extra=shown("`http://<server.host>:<server.port>` (`https://` with `server.tls`)"))
    replica_id: Name | None = Field(
        default=None, description="this replica's name in the cluster (unique)",
        json_schema_extra=shown("derived from `advertise`"))
    lease_ttl: PositiveDuration = Field(
        default=5.0, description="etcd lease: how long a dead replica keeps its keys (failover time)")
    prefix: str = Field(default="/lazy-proxy", description="etcd key prefix (one cluster per prefix)")
    handover: bool = Field(
        default=True, description="on SIGTERM, leave the running instances to the other replicas (they adopt "
                                  "them: a rolling restart starts nothing cold); the last replica stops its own")

    @model_validator(mode="after")
    def _endpoints(self) -> Cluster:
        if self.store == "etcd" and not self.endpoints:
            raise field_error(("endpoints",), "store etcd needs at least one endpoint")
        return self
