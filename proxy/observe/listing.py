"""Key listings that scale (`/container-status`, `GET /admin/keys`): paged, filtered, and never a long step.

A listing is one page of the registry's keys, in the order they were first used: `limit` keys (LIMIT when
the request names none, at most MAX_LIMIT) after `cursor` (the `next` of the previous page; none: from the
first key), of one container class (`class`) and in one state (`state`) when asked. The answer's `next` is
the cursor of the page after it, null on the last. A client that pages nothing gets the first LIMIT keys, so
up to LIMIT keys it sees all of them, as before paging existed, and `next` tells it when there are more.

Everything runs on the event loop every proxied request shares, so no step may take long: the scan, the
entries and the JSON encoding each yield to the loop every SLICE keys (a page of MAX_LIMIT keys is some tens
of short steps, not one long one), and `/container-status`'s live probes run PROBES at a time. A page is
not a snapshot: each entry is as it was when read, and a key first used meanwhile shows up on a later page.
"""

from __future__ import annotations

import asyncio
import json
from bisect import bisect_right
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, Mapping, TypeVar

from proxy.errors import InvalidInput
from proxy.lifecycle.events import State
from proxy.lifecycle.manager import Manager
from proxy.lifecycle.registry import Registry

LIMIT = 500  # keys per page when the request names no limit
MAX_LIMIT = 5000
SLICE = 100  # keys scanned, entries made or encoded between two yields to the loop (well under 1 ms of work)
PROBES = 8  # live probes of one /container-status page in flight at once: each step of one is a connect or a
# close, ~1-2 ms of kernel work on a loaded host, and a loop iteration runs every ready step (CPU-bound anyway)
STATES = tuple(state.value for state in State)
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Query:
    """A listing request: page size, where to resume (0: the start), filters (None: any)."""

    limit: int = LIMIT
    after: int = 0
    class_name: str | None = None
    state: State | None = None


def parse_query(query: Mapping[str, str], classes: Iterable[str]) -> Query:
    """The listing parameters of a request's query string; InvalidInput naming the wrong one."""
    limit = _integer(query.get("limit"), "limit", LIMIT, low=1, high=MAX_LIMIT)
    after = _integer(query.get("cursor"), "cursor", 0, low=0, high=2**63,
                     hint="cursor must be the `next` of an earlier page")
    class_name = query.get("class")
    if class_name is not None and class_name not in classes:
        raise InvalidInput(f"class: unknown container class {class_name[:64]!r} (configured: {', '.join(classes)})")
    state = query.get("state")
    if state is not None and state not in STATES:
        raise InvalidInput(f"state must be one of {', '.join(STATES)} (got {state[:32]!r})")
    return Query(limit, after, class_name, State(state) if state is not None else None)


def _integer(text: str | None, name: str, default: int, *, low: int, high: int, hint: str | None = None) -> int:
    if text is None:
        return default
    if text.isascii() and text.isdigit() and len(text) <= 19 and low <= int(text) <= high:
        return int(text)
    raise InvalidInput((hint or f"{name} must be an integer from {low} to {high}") + f" (got {text[:32]!r})")


async def select(registry: Registry, query: Query) -> tuple[list[Manager], str | None]:
    """One page of managers and the cursor of the next page (None: this is the last)."""
    keys, made = list(registry.order), list(registry.order.values())  # C-speed copies: ~1 ms per 100k keys
    managers, order = registry.managers, registry.order
    page: list[Manager] = []
    at = first = bisect_right(made, query.after)  # the first key made after the cursor's
    while at < len(keys) and len(page) < query.limit:
        if at > first:
            await asyncio.sleep(0)  # between slices, never inside one
        end = min(at + SLICE, len(keys))
        while at < end and len(page) < query.limit:
            name = keys[at]
            manager = managers.get(name)
            if manager is None:  # dropped (a cluster handed it over): its place in the order goes too
                if order.get(name) == made[at]:
                    del order[name]
            elif (query.class_name is None or name[0] == query.class_name) \
                    and (query.state is None or manager.state is query.state):
                page.append(manager)
            at += 1
    return page, (str(made[at - 1]) if at < len(keys) else None)


async def in_slices(items: list[T], make: Callable[[T], R]) -> list[R]:
    """`[make(item) for item in items]`, yielding to the loop every SLICE items."""
    out: list[R] = []
    for start in range(0, len(items), SLICE):
        if start:
            await asyncio.sleep(0)
        out.extend(make(item) for item in items[start:start + SLICE])
    return out


async def bounded(calls: list[Callable[[], Awaitable[R]]], at_once: int = PROBES) -> list[R]:
    """Run the calls, at most `at_once` at a time (a thousand probes begun in one step stall the loop)."""
    results: list[R | None] = [None] * len(calls)
    pending = iter(enumerate(calls))

    async def worker() -> None:
        for index, call in pending:
            results[index] = await call()

    await asyncio.gather(*(worker() for _ in range(min(at_once, len(calls)))))
    return results  # type: ignore[return-value]  # every slot was filled


async def encode(head: Mapping[str, Any], entries: list[dict[str, Any]]) -> bytes:
    """`json.dumps({**head, "keys": entries})`, encoded SLICE entries at a time with yields between."""
    parts = [json.dumps({**head, "keys": []})[:-2].encode()]  # the head, then `"keys": [` left open
    for start in range(0, len(entries), SLICE):
        if start:
            parts.append(b", ")
            await asyncio.sleep(0)
        parts.append(json.dumps(entries[start:start + SLICE])[1:-1].encode())
    parts.append(b"]}")
    return b"".join(parts)
