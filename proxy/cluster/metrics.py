"""The cluster's series on /metrics, read at scrape time from the store and the ownership rules (nothing is
counted twice: the numbers live where they happen)."""

from __future__ import annotations

from typing import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from proxy.cluster.owner import Ownership


class ClusterCollector(Collector):
    """Members seen, keys owned, requests forwarded to an owner, lease validity, failed calls to the store."""

    def __init__(self, ownership: Ownership) -> None:
        self.ownership = ownership

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily, CounterMetricFamily,
                             CounterMetricFamily]:
        return (GaugeMetricFamily("proxy_cluster_members", "Live replicas this one sees in the store."),
                GaugeMetricFamily("proxy_cluster_owned_keys", "Keys (ownership units) this replica owns."),
                GaugeMetricFamily("proxy_cluster_lease_valid", "1 while this replica's lease is certainly valid "
                                  "(it acts on its keys only then), else 0."),
                CounterMetricFamily("proxy_cluster_forwarded_requests", "Requests sent on to the key's owner."),
                CounterMetricFamily("proxy_cluster_store_errors", "Calls to the ownership store (etcd) that "
                                    "failed on every endpoint."))

    def describe(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        return self._families()

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        members, owned, valid, forwarded, errors = self._families()
        store = self.ownership.store
        members.add_metric([], len(store.view()))
        owned.add_metric([], len(self.ownership.owned))
        valid.add_metric([], 1.0 if store.valid() else 0.0)
        forwarded.add_metric([], self.ownership.forwarded)
        errors.add_metric([], store.errors)
        return (members, owned, valid, forwarded, errors)
