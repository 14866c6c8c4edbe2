"""Whether this proxy can serve: the backend answers (a cached ping) and, clustered, the replica holds a valid
lease (it has joined and etcd confirmed the lease within its ttl: it may act on its keys).

`/health` is liveness (the process answers); `/ready` is this, for compose healthchecks and Kubernetes
readiness probes. The ping is cached for `REFRESH` seconds and shared by concurrent probes, so a probe
every 100 ms costs the daemon one `GET /_ping` a second or so, not one each. The same ping words the
start-up line and `--check` (proxy/banner.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from backends.base import Backend, BackendError

log = structlog.get_logger("proxy.ready")

REFRESH = 1.5  # seconds a ping's answer is reused
PING_TIMEOUT = 2.0


async def ping(backend: Backend) -> str | None:
    """None when the backend answers, else why not in one line. Backends without a daemon (stub,
    process) have no `ping` and always answer."""
    method = getattr(backend, "ping", None)
    if method is None:
        return None
    try:
        await asyncio.wait_for(method(), PING_TIMEOUT + 1)
    except BackendError as exc:
        return exc.reason
    except asyncio.TimeoutError:
        return f"{backend.name} did not answer a ping within {PING_TIMEOUT + 1:g}s"
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable", said in one line
        return f"{type(exc).__name__}: {exc}"
    return None


class BackendCheck:
    """`ping(backend)`, at most once per REFRESH seconds, one in flight however many ask."""

    def __init__(self, backend: Backend, refresh: float = REFRESH) -> None:
        self.backend = backend
        self.refresh = refresh
        self._reason: str | None = None
        self._at: float | None = None
        self._pending: asyncio.Future[str | None] | None = None

    async def reason(self) -> str | None:
        now = asyncio.get_running_loop().time()
        if self._at is not None and now - self._at < self.refresh:
            return self._reason
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._ping())
        return await asyncio.shield(self._pending)

    async def _ping(self) -> str | None:
        try:
            reason = await ping(self.backend)
            if self._at is not None and reason != self._reason:  # a change after the first look: say so once
                if reason is None:
                    log.info("backend_reachable", backend=self.backend.name)
                else:
                    log.warning("backend_unreachable", backend=self.backend.name, reason=reason)
            self._reason, self._at = reason, asyncio.get_running_loop().time()
            return reason
        finally:
            self._pending = None


async def readiness(backend: BackendCheck, node: Any) -> tuple[bool, dict[str, Any]]:
    """(ready, the JSON body of /ready)."""
    reason = await backend.reason()
    body: dict[str, Any] = {"backend": backend.backend.name, "backend_ok": reason is None}
    if reason is not None:
        body["reason"] = "backend unavailable"  # the socket path and error text stay in the log
    if node is not None:
        cluster = node.status()
        body["cluster"] = cluster
        if not cluster.get("joined") and reason is None:
            body["reason"] = "cluster lease not valid (not joined yet, or etcd unreachable)"
    ready = "reason" not in body
    body["status"] = "ready" if ready else "unavailable"
    return ready, body
