"""`EtcdStore`: the ownership store on etcd, through its v3 JSON gateway (`/v3/kv/*`, `/v3/lease/*`).

Why the gateway over aiohttp rather than an etcd client library: it is part of every etcd since 3.3, needs no
new dependency (aiohttp is already here) and is async; the maintained Python clients are gRPC-based and either
sync (python-etcd3, unmaintained since 2020) or pull grpcio in for five unary calls. Keys and values are base64.

Layout under `cluster.prefix`: `members/<id>` -> the member's URL and `owners/<unit>` -> the owner's id, both
attached to the member's lease, so a replica that dies loses both after `lease_ttl` and nothing else has to
clean up. One task renews the lease every ttl/3 and refreshes the member list on the way.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from typing import Any

import aiohttp
import structlog

from proxy.cluster.store import Member, OwnershipStore, StoreUnavailable, now
from proxy.lifecycle.pause import consume_exception

log = structlog.get_logger("proxy.cluster")
RETRY_PAUSE = 0.1  # seconds between rounds over the endpoints (an election takes a few hundred ms)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _text(b64: str) -> str:
    return base64.b64decode(b64).decode()


def _prefix_end(prefix: str) -> str:
    """etcd's range end for "every key starting with prefix" (the last byte plus one)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


class EtcdStore(OwnershipStore):
    def __init__(self, me: Member, endpoints: tuple[str, ...], lease_ttl: float = 5.0,
                 prefix: str = "/lazy-proxy", timeout: float = 1.0) -> None:
        super().__init__(me, lease_ttl)
        self.endpoints = list(endpoints)
        self.prefix = prefix.rstrip("/") + "/"
        self.timeout = timeout
        self.lease_id = ""
        self._members: list[Member] = []
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._renewing = asyncio.Lock()  # one renewal at a time: the loop's or a request's (`revive`)
        self._revival: asyncio.Task[None] | None = None  # the requests' renewal in flight, shared

    # ---------------------------------------------------------------- the gateway

    async def _call(self, path: str, body: dict[str, Any], budget: float | None = None) -> dict[str, Any]:
        """POST to the first endpoint that answers (the one that did stays first). An endpoint that fails (down,
        or a member without a leader while one is elected) is followed by the next one, round after round,
        within `budget` seconds (a lease ttl by default): the death of etcd's leader costs a retry, not a 503."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        deadline = now() + (self.lease_ttl if budget is None else budget)
        last = ""
        while True:
            for i, endpoint in enumerate(list(self.endpoints)):
                left = deadline - now()
                if left <= 0:
                    self.errors += 1
                    raise StoreUnavailable(f"etcd unreachable ({last})")
                try:
                    async with self._session.post(endpoint + path, json=body,
                                                  timeout=aiohttp.ClientTimeout(total=min(self.timeout, left))
                                                  ) as response:
                        payload: dict[str, Any] = await response.json(content_type=None)
                        if response.status != 200:
                            last = f"{endpoint}: {response.status} {payload.get('error', '')}"
                            continue
                        if i:
                            self.endpoints.insert(0, self.endpoints.pop(i))
                        return payload
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
                    last = f"{endpoint}: {type(exc).__name__}: {exc}"
            await asyncio.sleep(min(RETRY_PAUSE, max(0.0, deadline - now())))

    async def _grant(self) -> None:
        began = now()
        granted = await self._call("/v3/lease/grant", {"TTL": max(1, round(self.lease_ttl))})
        self.lease_id = granted["ID"]
        await self._call("/v3/kv/put", {"key": _b64(f"{self.prefix}members/{self.me.id}"), "value": _b64(self.me.url),
                                        "lease": self.lease_id})
        self.valid_until = 0.0
        self.renewed(began)
        self.epoch += 1

    async def _renew(self) -> None:
        if not self.lease_id:  # etcd was away when we started
            await self._grant()
            return
        began = now()
        budget = max(self.lease_ttl / 3, self.valid_until - began)  # keep trying while the validity lasts
        answer = (await self._call("/v3/lease/keepalive", {"ID": self.lease_id}, budget=budget)).get("result", {})
        if int(answer.get("TTL", 0)) <= 0:  # expired while we could not renew it: every claim of it is gone
            log.warning("cluster_lease_lost", replica=self.me.id)
            self.void()
            await self._grant()
        else:
            self.renewed(began)

    def _range(self, folder: str) -> dict[str, Any]:
        prefix = f"{self.prefix}{folder}/"
        return {"key": _b64(prefix), "range_end": _b64(_prefix_end(prefix))}

    def _listed(self, folder: str, found: dict[str, Any]) -> dict[str, str]:
        """{name: value} of a range over `folder`."""
        cut = len(f"{self.prefix}{folder}/")
        return {_text(kv["key"])[cut:]: _text(kv.get("value", "")) for kv in found.get("kvs", ())}

    async def _refresh_members(self) -> None:
        found = await self._call("/v3/kv/range", self._range("members"))
        self._members = sorted((Member(i, url) for i, url in self._listed("members", found).items()),
                               key=lambda m: m.id)

    async def _keep_alive(self) -> None:
        failed = False
        while True:
            await asyncio.sleep(RETRY_PAUSE if failed else self.lease_ttl / 3)  # after a failure: again at once
            failed = True
            try:
                async with self._renewing:
                    await self._renew()
                failed = False
                await self._refresh_members()
            except StoreUnavailable as exc:
                log.warning("cluster_store_unavailable", error=str(exc))
            except Exception as exc:  # noqa: BLE001 - the renewal loop must outlive any one failure
                log.warning("cluster_renew_failed", error=f"{type(exc).__name__}: {exc}")
            if self.lease_id and not self.valid():  # lapsed: our claims may be another's by now
                self.lapsed()

    async def _revive_once(self) -> None:
        async with self._renewing:
            if not self.valid():  # (the loop may have renewed while we waited for it)
                await self._renew()

    # ---------------------------------------------------------------- the port

    async def revive(self) -> None:
        """One renewal shared by the requests that find the validity lapsed (each waits at most its budget)."""
        if self._revival is None or self._revival.done():
            self._revival = asyncio.create_task(self._revive_once(), name="cluster-revive")
            self._revival.add_done_callback(consume_exception)  # its waiters may all have gone
        await asyncio.shield(self._revival)

    async def start(self) -> None:
        try:
            await self._grant()
            await self._refresh_members()
        except StoreUnavailable as exc:  # serve what needs no owner; the renewal loop joins when etcd is back
            log.warning("cluster_store_unavailable", error=str(exc))
        self._task = asyncio.create_task(self._keep_alive(), name="cluster-lease")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(StoreUnavailable):
            if self.lease_id:
                await self._call("/v3/lease/revoke", {"ID": self.lease_id}, budget=self.timeout)
        self.lease_id, self.valid_until = "", 0.0
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def members(self) -> list[Member]:
        if not self._members:
            await self._refresh_members()
        return self._members

    async def refresh(self) -> list[Member]:
        """The member list read now (a forward to a member failed, or a free key's owner is chosen)."""
        await self._refresh_members()
        return self._members

    def view(self) -> list[Member]:
        return self._members

    async def confirm(self, unit: str) -> bool:
        """One transaction: the key's owner record names us and is attached to our current lease."""
        if not self.valid():
            return False
        key = _b64(f"{self.prefix}owners/{unit}")
        try:
            answer = await self._call("/v3/kv/txn", {
                "compare": [{"key": key, "target": "VALUE", "result": "EQUAL", "value": _b64(self.me.id)},
                            {"key": key, "target": "LEASE", "result": "EQUAL", "lease": self.lease_id}],
                "success": [], "failure": []}, budget=self.lease_ttl / 2)
        except StoreUnavailable as exc:
            log.warning("cluster_confirm_failed", key=unit, error=str(exc))
            return False
        return bool(answer.get("succeeded")) and self.valid()

    async def leave(self) -> list[Member]:
        """Mark `leaving/<me>` under our lease and read members and marks in the same transaction."""
        if not self.lease_id:
            raise StoreUnavailable("never joined")
        mark = _b64(f"{self.prefix}leaving/{self.me.id}")
        answer = await self._call("/v3/kv/txn", {"compare": [], "success": [
            {"request_put": {"key": mark, "value": _b64(self.me.url), "lease": self.lease_id}},
            {"request_range": self._range("members")}, {"request_range": self._range("leaving")}]})
        members, leaving = (self._listed(folder, answer["responses"][i]["response_range"])
                            for i, folder in ((1, "members"), (2, "leaving")))
        return [Member(i, url) for i, url in sorted(members.items()) if i not in leaving and i != self.me.id]

    async def leavers(self) -> set[str]:
        """The other replicas marked leaving whose lease still lives (still shutting down)."""
        found = await self._call("/v3/kv/range", self._range("leaving"))
        return set(self._listed("leaving", found)) - {self.me.id}

    async def owner(self, unit: str) -> str | None:
        found = await self._call("/v3/kv/range", {"key": _b64(f"{self.prefix}owners/{unit}")})
        kvs = found.get("kvs")
        return _text(kvs[0]["value"]) if kvs else None

    async def claim(self, unit: str) -> str:
        key = _b64(f"{self.prefix}owners/{unit}")
        answer = await self._call("/v3/kv/txn", {
            "compare": [{"key": key, "target": "CREATE", "create_revision": "0"}],
            "success": [{"request_put": {"key": key, "value": _b64(self.me.id), "lease": self.lease_id}}],
            "failure": [{"request_range": {"key": key}}]})
        if answer.get("succeeded"):
            return self.me.id
        kvs = answer["responses"][0]["response_range"].get("kvs")
        if not kvs:  # released between the compare and the range: cannot happen in one txn, but be total
            raise StoreUnavailable(f"claim of {unit} raced")
        holder = _text(kvs[0]["value"])
        if holder == self.me.id and kvs[0].get("lease") != self.lease_id:
            raise StoreUnavailable(f"{unit} is held under our previous lease")  # expires within the ttl
        return holder
