"""Keys from where users put them, through a real proxy on the stub backend: the Host (`host: "{id}.apps..."`),
a header, a cookie, and `ignore_user_agents`. Each key is served by the same instance whether the request takes
the cold aiohttp path or the warm fast path (the stub's /api/container-info names the instance)."""

from __future__ import annotations

from typing import Any

import pytest
from yarl import URL

from tests.conftest import SEED_ON_PROXY_PORT


@pytest.fixture
def backend_kind() -> str:
    return "stub"


ROUTES: list[dict[str, Any]] = [
    {"path": "/h/{tail:.*}", "host": "{id}.apps.example.com", "container": "svc", "key": "{id}",
     "upstream_path": "/{tail}", "name": "tenant"},
    {"path": "/h/{tail:.*}", "host": "static.example.com", "container": "svc", "key": "static",
     "upstream_path": "/{tail}", "name": "static"},
    {"path": "/h/{tail:.*}", "container": "svc", "key": "fallback", "upstream_path": "/{tail}", "name": "fallback"},
    {"path": "/only/{tail:.*}", "host": "only.example.com", "container": "svc", "key": "only",
     "upstream_path": "/{tail}", "name": "only"},
    {"path": "/t/{tail:.*}", "container": "svc", "key": "t-{header:X-Tenant}", "upstream_path": "/{tail}",
     "name": "header"},
    {"path": "/c/{tail:.*}", "container": "svc", "key": "{cookie:session}", "upstream_path": "/{tail}",
     "name": "cookie"},
    {"path": "/ua/{tail:.*}", "container": "svc", "key": "ua", "upstream_path": "/{tail}", "name": "ua",
     "ignore_user_agents": ["kube-probe/", "(?i)bot"]},
]


@pytest.fixture
async def h(make_proxy):
    return await make_proxy(config={"routes": ROUTES, "admin": dict(SEED_ON_PROXY_PORT)})


async def served_by(h, path: str, **headers: str) -> tuple[str, bool]:
    """(instance id, whether the answer waited for a start) of a GET of /api/container-info under `path`."""
    resp = await h.client.get(path + "api/container-info", headers=headers)
    assert resp.status == 200, (path, headers, resp.status, await resp.text())
    return (await resp.json())["instance_id"], "X-Proxy-Cold-Start" in resp.headers


async def fast(h, route: str) -> float:
    return await h.metric("proxy_fast_path_requests_total", route=route)


async def same_instance_cold_then_fast(h, route: str, path: str, key: str, **headers: str) -> None:
    before = await fast(h, route)
    cold_id, cold = await served_by(h, path, **headers)
    assert cold and cold_id.startswith(f"stub-{key}-"), cold_id
    warm_id, waited = await served_by(h, path, **headers)
    assert warm_id == cold_id and not waited
    assert await fast(h, route) == before + 1  # the warm one took the fast path, to the same instance
    assert h.manager(key).instance is not None


async def test_the_host_picks_the_route_and_its_variable_the_key(h):
    await same_instance_cold_then_fast(h, "tenant", "/h/", "acme", Host="acme.apps.example.com:8787")
    # Any case, any port: the same key and instance, on the fast path.
    assert (await served_by(h, "/h/", Host="ACME.Apps.Example.COM"))[0].startswith("stub-acme-")
    await same_instance_cold_then_fast(h, "static", "/h/", "static", Host="static.example.com")
    # A host no route of the path takes falls through to the route without `host`.
    await same_instance_cold_then_fast(h, "fallback", "/h/", "fallback", Host="elsewhere.example.org")
    assert await fast(h, "tenant") == 2


async def test_the_aiohttp_path_picks_the_same_route_for_a_warm_key(h):
    warm_id, _ = await served_by(h, "/h/", Host="acme.apps.example.com")
    before = await fast(h, "tenant")
    # A percent-encoded path is never the fast path's: aiohttp routes it, by the same host rule.
    resp = await h.client.get(URL("/h/api/container%2Dinfo", encoded=True), headers={"Host": "acme.apps.example.com"})
    assert resp.status == 200 and (await resp.json())["instance_id"] == warm_id
    assert await fast(h, "tenant") == before


async def test_a_host_no_route_takes_is_404_and_a_hostile_one_400(h):
    resp = await h.client.get("/only/api/container-info", headers={"Host": "other.example.com"})
    assert resp.status == 404 and "no route for host 'other.example.com'" in (await resp.json())["reason"]
    assert (await served_by(h, "/only/", Host="only.example.com"))[0].startswith("stub-only-")
    resp = await h.client.get("/only/api/container-info", headers={"Host": "other.example.com"})
    assert resp.status == 404  # warm or not, the fast path declines a host it has no route for
    resp = await h.client.get("/h/api/container-info", headers={"Host": "a$b.apps.example.com"})
    body = await resp.json()
    assert resp.status == 400 and body["error"] == "invalid key", body


async def test_a_key_from_a_header(h):
    await same_instance_cold_then_fast(h, "header", "/t/", "t-acme", **{"X-Tenant": "acme"})
    await same_instance_cold_then_fast(h, "header", "/t/", "t-other", **{"x-tenant": "other"})
    resp = await h.client.get("/t/api/container-info")
    body = await resp.json()
    assert resp.status == 400 and body["error"] == "invalid key"
    assert body["reason"] == "missing header X-Tenant for the key"
    resp = await h.client.get("/t/api/container-info", headers={"X-Tenant": "../../etc"})
    assert resp.status == 400 and (await resp.json())["error"] == "invalid key"
    assert {m.key for m in h.proxy.registry} == {"t-acme", "t-other"}


async def test_a_key_from_a_cookie(h):
    await same_instance_cold_then_fast(h, "cookie", "/c/", "s1", Cookie="theme=dark; session=s1")
    await same_instance_cold_then_fast(h, "cookie", "/c/", "s2", Cookie="session=s2")
    resp = await h.client.get("/c/api/container-info", headers={"Cookie": "theme=dark"})
    body = await resp.json()
    assert resp.status == 400 and body["reason"] == "missing cookie session for the key"


async def test_ignored_user_agents_never_start_but_are_served_warm(h):
    for agent in ("kube-probe/1.29", "Mozilla/5.0 (compatible; Googlebot/2.1)"):
        resp = await h.client.get("/ua/api/container-info", headers={"User-Agent": agent})
        body = await resp.json()
        assert resp.status == 503 and body["error"] == "not warm", body
    assert all(m.instance is None for m in h.proxy.registry)
    cold_id, cold = await served_by(h, "/ua/", **{"User-Agent": "curl/8"})  # a person's request starts it
    assert cold
    before = await fast(h, "ua")
    for agent in ("kube-probe/1.29", "Googlebot"):
        assert await served_by(h, "/ua/", **{"User-Agent": agent}) == (cold_id, False)
    assert await fast(h, "ua") == before + 2
    assert h.manager("ua").instance is not None
