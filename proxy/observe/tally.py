"""One request's end, accounted in one call: the route's metrics, the key's egress and the access line.

A relayed request ends with three records: the route's counts (proxy/observe/request_metrics.py), the bytes its
key sent (the usage meter, per key and per `key` label) and the access line (proxy/observe/request_log.py). What
they look up per request (the route's stats, the line's start, the key's label) is the same for every request of
one route and key, so a `Tally` resolves it once and keeps it: the request's end is a few additions and one
appended row. The key's label is looked up again after a reload renames the labels (`KeyLabels.version`), its
usage detail after the meter made, moved or dropped one (`UsageMeter.moves`).
"""

from __future__ import annotations

from proxy.observe.request_log import RequestLog
from proxy.observe.request_metrics import RouteStats
from proxy.observe.usage import Usage, UsageMeter


class Tally:
    """The records of one (route, key): `end` once per finished request of the fast path."""

    __slots__ = ("key", "stats", "prefix", "log", "usage", "at", "label", "version", "detail", "moves")

    def __init__(self, key: str, stats: RouteStats, prefix: str, log: RequestLog | None, usage: UsageMeter | None,
                 class_name: str, usage_key: str) -> None:
        self.key = key  # the request's key (the access line's); `usage_key`: its instance's (an lb member's)
        self.stats = stats
        self.prefix = prefix
        self.log = log
        self.usage = usage
        self.at = (class_name, usage_key)
        self.label = self.at
        self.version = -1  # of the key labels `label` was made with: none yet
        self.detail: Usage | None = None  # the key's usage detail, as of the meter's `moves`
        self.moves = -1  # none yet

    def end(self, status: int, seconds: float, method: str, path: str, client: str, rid: str, sent: int,
            received: int, egress: int) -> None:
        """Metrics, egress (`egress`: all bytes written, head included) and the access line (`sent`, `received`:
        body bytes) of one request."""
        self.stats.observe(status, seconds, True)
        usage = self.usage
        if egress and usage is not None:
            if self.version != usage.key_label.version:
                self.version = usage.key_label.version
                self.label = (self.at[0], usage.key_label(*self.at))
            if self.moves != usage.moves:
                self.moves = usage.moves
                self.detail = usage.detail(self.at)
            usage.add_egress(self.detail, self.label, egress)
        log = self.log
        if log is not None:
            log.request(self.prefix, method, path, status, seconds, client, rid, sent, received)
