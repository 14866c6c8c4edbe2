"""Signed webhooks (issue 23): a real receiver verifies each delivery as the notes tell users to (HMAC-SHA256
over "<timestamp>.<body>", constant-time compare, a 5-minute window) and refuses a forged or replayed POST."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping

import aiohttp
import pytest
from aiohttp import web

from proxy.config.schema import ConfigError, parse_config

SECRET = "whsec-test-0123456789abcdef"
TOLERANCE = 300  # seconds a signature stays acceptable


def verify(secret: bytes, headers: Mapping[str, str], body: bytes) -> bool:
    """What a receiver does (the snippet in the notes)."""
    timestamp = headers.get("X-Lazy-Proxy-Timestamp", "")
    given = headers.get("X-Lazy-Proxy-Signature", "")
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > TOLERANCE:
        return False
    expected = "v1=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, given)


@pytest.fixture
async def receiver(aiohttp_server):
    """A webhook receiver that keeps only verified events; (events, refused count, url)."""
    events: list[dict] = []
    refused: list[bytes] = []

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        if not verify(SECRET.encode(), request.headers, body):
            refused.append(body)
            return web.json_response({"error": "bad signature"}, status=401)
        events.append({**json.loads(body), "_team": request.headers.get("X-Team")})
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = await aiohttp_server(app)
    return events, refused, str(server.make_url("/hook"))


@pytest.mark.parametrize("source", ["secret", "secret_env"])
async def test_a_receiver_verifies_each_delivery_and_refuses_forgeries(make_proxy, receiver, monkeypatch, source):
    events, refused, url = receiver
    hook = {"url": url, "headers": {"X-Team": "ml"}}
    if source == "secret":
        hook["secret"] = SECRET
    else:
        monkeypatch.setenv("LP_TEST_HOOK_SECRET", SECRET)
        hook["secret_env"] = "LP_TEST_HOOK_SECRET"
    h = await make_proxy(svc={"sleep_after": "300ms"}, config={"hooks": {"webhooks": [hook]}})
    assert (await h.client.get("/k/signed/api/health")).status == 200
    await h.wait_for(lambda: [e["event"] for e in events] == ["start", "stop"], timeout=10)
    assert [e["key"] for e in events] == ["signed", "signed"] and {e["_team"] for e in events} == {"ml"}
    assert refused == []

    body = json.dumps({"event": "stop", "key": "signed", "container": "svc"}).encode()
    now = str(int(time.time()))
    good = "v1=" + hmac.new(SECRET.encode(), now.encode() + b"." + body, hashlib.sha256).hexdigest()
    forged = "v1=" + hmac.new(b"guessed-secret-0123456789", now.encode() + b"." + body, hashlib.sha256).hexdigest()
    stale = str(int(time.time()) - 3600)
    replayed = "v1=" + hmac.new(SECRET.encode(), stale.encode() + b"." + body, hashlib.sha256).hexdigest()
    async with aiohttp.ClientSession() as session:
        for headers, data in (({}, body),  # unsigned
                              ({"X-Lazy-Proxy-Timestamp": now, "X-Lazy-Proxy-Signature": forged}, body),
                              ({"X-Lazy-Proxy-Timestamp": now, "X-Lazy-Proxy-Signature": good}, body + b" "),
                              ({"X-Lazy-Proxy-Timestamp": stale, "X-Lazy-Proxy-Signature": replayed}, body)):
            async with session.post(url, data=data, headers=headers) as resp:
                assert resp.status == 401
        async with session.post(url, data=body, headers={"X-Lazy-Proxy-Timestamp": now,
                                                         "X-Lazy-Proxy-Signature": good}) as resp:
            assert resp.status == 200  # the receiver's check is not just refusing everything
    assert len(refused) == 4 and len(events) == 3


async def test_without_a_secret_deliveries_are_unsigned_as_before(make_proxy, aiohttp_server):
    seen: list[dict[str, str]] = []

    async def hook(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = await aiohttp_server(app)
    h = await make_proxy(config={"hooks": {"webhooks": [{"url": str(server.make_url("/hook")), "events": ["start"]}]}})
    assert (await h.client.get("/k/plain/api/health")).status == 200
    await h.wait_for(lambda: len(seen) == 1)
    assert "X-Lazy-Proxy-Signature" not in seen[0] and seen[0]["Content-Type"] == "application/json"


@pytest.mark.parametrize("hook, field", [
    ({"secret": "short"}, "hooks.webhooks[0].secret"),
    ({"secret": SECRET, "secret_env": "X"}, "hooks.webhooks[0].secret_env"),
    ({"secret_env": "LP_TEST_UNSET_HOOK_SECRET"}, "hooks.webhooks[0].secret_env"),
    ({"headers": {"Bad Name": "x"}}, "hooks.webhooks[0].headers"),
    ({"headers": {"X-Lazy-Proxy-Signature": "v1=00"}}, "hooks.webhooks[0].headers"),
    ({"headers": {"X-A": "a\r\nInjected: 1"}}, "hooks.webhooks[0].headers")])
def test_webhook_config_mistakes_name_the_field(hook, field):
    with pytest.raises(ConfigError) as error:
        parse_config({"containers": {"svc": {"image": "x"}}, "hooks": {"webhooks": [{"url": "http://x", **hook}]}})
    assert error.value.field.startswith(field), error.value
