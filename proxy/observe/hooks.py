"""Lifecycle hooks (the seed's onStart/onStop/onError): HTTP webhooks and in-process callbacks.

Webhooks are posted from background tasks with a timeout and bounded retries, so a dead receiver
never delays a proxied request. With a `secret`, each attempt is signed as Stripe signs its events:
`X-Lazy-Proxy-Timestamp: <unix seconds>` and `X-Lazy-Proxy-Signature: v1=<hex HMAC-SHA256 of
"<timestamp>.<body>">`, so a receiver can refuse forged and replayed POSTs (`signature` shows how).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from typing import Any, Callable

import aiohttp
import structlog

from proxy.config.schema import Webhook
from proxy.lifecycle.events import BreakerOpened, Event, EventBus, Happening, Transition

log = structlog.get_logger("proxy.hooks")
Callback = Callable[[dict[str, Any]], None]


TIMESTAMP, SIGNATURE = "X-Lazy-Proxy-Timestamp", "X-Lazy-Proxy-Signature"


def signature(key: bytes, timestamp: str, body: bytes) -> str:
    """The `X-Lazy-Proxy-Signature` value of one delivery (a receiver computes the same and compares)."""
    return "v1=" + hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def delivery_headers(hook: Webhook, body: bytes) -> dict[str, str]:
    """One attempt's headers: the hook's own, the content type and, with a secret, a fresh signature."""
    headers = {**hook.headers, "Content-Type": "application/json"}
    if (key := hook.signing_key) is not None:
        timestamp = str(int(time.time()))
        headers[TIMESTAMP], headers[SIGNATURE] = timestamp, signature(key, timestamp, body)
    return headers


HOOK_OF = {Happening.STARTED: "start", Happening.ADOPTED: "start", Happening.STOPPED: "stop",
           Happening.START_FAILED: "error", Happening.CRASHED: "error"}


def hook_event(event: Event) -> dict[str, Any] | None:
    """The seed's three hook events (start, stop, error), or None for the steps in between."""
    if isinstance(event, BreakerOpened):  # an error of its own: the key's starts are refused for a while
        return {"event": "error", "key": event.key, "container": event.class_name, "reason": event.reason,
                "timestamp": event.timestamp, "breaker": "open", "backoff_seconds": event.backoff}
    if not isinstance(event, Transition) or event.happening is None:
        return None
    name = HOOK_OF[event.happening]
    return {
        "event": name,
        "key": event.key,
        "container": event.class_name,
        "reason": event.reason,
        "timestamp": event.timestamp,
        "from": event.old.value,
        "to": event.new.value,
        "duration_seconds": round(event.duration, 6),
        **({"phases": {name: round(seconds, 6) for name, seconds in event.phases}} if event.phases else {}),
        "address": event.instance.url if event.instance else None,
    }


class Hooks:
    def __init__(self, bus: EventBus, webhooks: tuple[Webhook, ...]) -> None:
        self.webhooks = webhooks
        self.callbacks: dict[str, list[Callback]] = {"start": [], "stop": [], "error": [], "admin": []}
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        bus.subscribe(self._on_event)

    def on(self, event: str, callback: Callback) -> None:
        """In-process hook for people embedding the proxy: `hooks.on("start", fn)`."""
        self.callbacks[event].append(callback)

    def _on_event(self, event: Event) -> None:
        payload = hook_event(event)
        if payload is not None:
            self.emit(payload)

    def emit(self, payload: dict[str, Any]) -> None:
        """One hook event (`payload["event"]` names it) to the in-process callbacks and the webhooks that
        listen for it; the lifecycle's come from the bus, `admin` ones from proxy/admin/api.py."""
        for callback in self.callbacks[payload["event"]]:
            try:
                callback(payload)
            except Exception:  # noqa: BLE001 - a user's callback must not break a lifecycle
                log.exception("hook_callback_failed", event=payload["event"])
        for hook in self.webhooks:
            if payload["event"] in hook.events:
                task = asyncio.get_running_loop().create_task(self._post(hook, payload))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _post(self, hook: Webhook, payload: dict[str, Any]) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        timeout = aiohttp.ClientTimeout(total=hook.timeout)
        body = json.dumps(payload).encode()  # the exact bytes signed are the bytes sent
        for attempt in range(hook.retries + 1):
            try:
                async with self._session.post(hook.url, data=body, headers=delivery_headers(hook, body),
                                              timeout=timeout) as resp:
                    if resp.status < 500:
                        return
                    error = f"HTTP {resp.status}"
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            if attempt < hook.retries:
                await asyncio.sleep(min(0.2 * 2**attempt, 5))
        log.warning("webhook_failed", url=hook.url, event=payload["event"], key=payload["key"], error=error)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)
        for task in list(self._tasks):
            task.cancel()
        if self._session is not None:
            await self._session.close()
