"""The waiting page over HTTP (the browser's view is tests/proxy/test_face_browser.py): who gets it, its headers, what
its per-key status may tell, and that everyone else keeps today's behaviour (held until ready)."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

from proxy.config.schema import parse_config
from proxy.config.units import ConfigError
from proxy.face.navigation import is_navigation
from proxy.face.render import TEMPLATES, render
from proxy.config.routes import WaitingPage
from tests.conftest import MakeProxy
from tests.support.face import BROWSER_ACCEPT, NAVIGATE, face_config
from tests.engines.test_pull import pushed  # noqa: F401 - the fixture: an image only the local registry has

CURL = {"Accept": "*/*", "User-Agent": "curl/8.5.0"}
FETCH = {"Accept": "text/html", "Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty"}
ALLOWED = {"app", "state", "phase", "phase_words", "phases", "elapsed", "reason"}


@pytest.fixture
def backend_kind() -> str:
    return "stub"


def token_urls(body: str) -> tuple[str, str]:
    status = re.search(r'statusUrl = "(/\.lazy-proxy/wait/[A-Za-z0-9_-]+)"', body)
    events = re.search(r'eventsUrl = "(/\.lazy-proxy/wait/[A-Za-z0-9_-]+/events)"', body)
    assert status and events, body
    return status.group(1), events.group(1)


async def test_a_browser_gets_the_page_then_the_app(make_proxy: MakeProxy) -> None:
    h = await make_proxy(config=face_config(delay_ms=800))
    resp = await h.client.get("/app/alice/hello?x=1", headers=NAVIGATE)
    body = await resp.text()
    assert resp.status == 503
    assert resp.headers["Cache-Control"] == "no-store" and resp.headers["Retry-After"] == "2"
    assert resp.headers["Content-Type"].startswith("text/html")
    csp = resp.headers["Content-Security-Policy"]
    nonce = re.search(r"'nonce-([^']+)'", csp)
    assert nonce and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert body.count(f'nonce="{nonce.group(1)}"') == 2  # the one style and the one script: nothing else runs
    assert "alice" in body and "http-equiv=\"refresh\"" in body and 'aria-live="polite"' in body
    assert "127.0.0.1" not in body and "face_support" not in body  # no address, no image
    status_url, events_url = token_urls(body)

    events: list[dict[str, Any]] = []
    async with h.client.get(events_url) as stream:
        assert stream.headers["Content-Type"] == "text/event-stream"
        async for line in stream.content:
            if line.startswith(b"data: "):
                events.append(json.loads(line[6:]))
    assert events[-1]["state"] == "ready" and events[0]["state"] == "starting"
    assert [p["name"] for p in events[-1]["phases"]] == ["start", "ready"]
    for event in events:
        assert set(event) == ALLOWED
    assert any(e["phase"] == "ready" for e in events)  # the readiness wait was shown as it happened

    again = await h.client.get("/app/alice/hello?x=1", headers=NAVIGATE)
    assert again.status == 200 and "/hello?x=1" in await again.text()
    done = await (await h.client.get(status_url)).json()
    assert done["state"] == "ready" and set(done) == ALLOWED


async def test_the_status_is_the_tokens_key_only(make_proxy: MakeProxy) -> None:
    h = await make_proxy(config=face_config(delay_ms=300))
    alice = token_urls(await (await h.client.get("/app/alice/", headers=NAVIGATE)).text())[0]
    bob = token_urls(await (await h.client.get("/app/bob/", headers=NAVIGATE)).text())[0]
    assert alice != bob
    seen = await (await h.client.get(alice)).json()
    assert seen["app"] == "alice" and "bob" not in json.dumps(seen)
    for guess in ("/.lazy-proxy/wait/bob", "/.lazy-proxy/wait/" + "A" * 24, "/.lazy-proxy/wait/",
                  alice + "x", "/.lazy-proxy/wait"):
        resp = await h.client.get(guess)
        assert resp.status == 404, guess
        text = await resp.text()
        assert "alice" not in text and "bob" not in text
    await h.wait_for(lambda: h.manager("alice").state.value == "running")
    running = json.dumps(await (await h.client.get(alice)).json())
    assert "127.0.0.1" not in running and "stub" not in running and "slow" not in running


async def test_no_page_for_anyone_but_a_browser_navigation(make_proxy: MakeProxy) -> None:
    h = await make_proxy(config=face_config(delay_ms=300))
    for i, (method, headers) in enumerate([("GET", CURL), ("GET", FETCH), ("POST", NAVIGATE),
                                           ("GET", {**NAVIGATE, "X-Requested-With": "XMLHttpRequest"}),
                                           ("GET", {"Accept": "application/json"})]):
        resp = await h.client.request(method, f"/app/k{i}/x", headers=headers)
        assert resp.status == 200 and resp.headers["X-Proxy-Cold-Start"] == "1", (method, headers)
        assert "the app itself" in await resp.text()
    resp = await h.client.get("/plain/x", headers=NAVIGATE)  # a route without waiting_page
    assert resp.status == 200


async def test_a_fast_start_shows_no_page(make_proxy: MakeProxy) -> None:
    h = await make_proxy(config=face_config(delay_ms=0, after="10s"))
    resp = await h.client.get("/app/quick/x", headers=NAVIGATE)
    assert resp.status == 200 and resp.headers["X-Proxy-Cold-Start"] == "1"
    assert "the app itself" in await resp.text()


async def test_a_failed_start_shows_the_public_reason(make_proxy: MakeProxy) -> None:
    h = await make_proxy(config=face_config(after="5s"))
    resp = await h.client.get("/broken/", headers=NAVIGATE)
    body = await resp.text()
    assert resp.status == 503 and resp.headers["Cache-Control"] == "no-store"
    assert "the app could not be started" in body and 'role="alert"' in body
    assert "no_such_module" not in body and "http-equiv" not in body  # the words only; no refresh loop
    state = await (await h.client.get(token_urls(body)[0])).json()
    assert state["state"] == "failed" and state["reason"] == "the app could not be started"


async def test_an_open_breaker_is_said_in_words_with_its_backoff(make_proxy: MakeProxy) -> None:
    config = face_config(after="5s")
    config["containers"]["broken"]["crash_loop"] = {"failures": 1, "backoff": "30s", "max_backoff": "30s"}
    h = await make_proxy(config=config)
    assert (await h.client.get("/broken/", headers=NAVIGATE)).status == 503  # the failure that opens it
    resp = await h.client.get("/broken/", headers=NAVIGATE)
    body = await resp.text()
    assert resp.status == 503 and int(resp.headers["Retry-After"]) >= 29
    assert "starts are paused for a while" in body and resp.headers["Cache-Control"] == "no-store"


async def test_a_start_that_fails_while_the_page_shows(make_proxy: MakeProxy) -> None:
    config = face_config(after="0ms")
    h = await make_proxy(config=config)
    body = await (await h.client.get("/broken/", headers=NAVIGATE)).text()
    status_url = token_urls(body)[0]
    await h.wait_for(lambda: h.manager("broken", "broken").state.value == "failed")
    await asyncio.sleep(0)
    state = await (await h.client.get(status_url)).json()
    assert state["state"] == "failed" and state["reason"] == "the app could not be started"


async def test_the_manager_tells_each_phase_as_it_ends(make_proxy: MakeProxy) -> None:
    from proxy.lifecycle.events import StartPhase, Transition

    h = await make_proxy(config=face_config(delay_ms=100))
    seen: list[Any] = []
    h.proxy.bus.subscribe(lambda e: seen.append(e) if isinstance(e, (StartPhase, Transition)) else None)
    assert (await h.client.get("/app/phased/")).status == 200
    steps = [(e.ended, e.now) if isinstance(e, StartPhase) else e.new.value for e in seen if e.key == "phased"]
    assert steps == ["starting", ("start", ""), ("", "ready"), "running"]
    started = seen[-1]
    live = next(e for e in seen if isinstance(e, StartPhase) and e.ended == "start")
    assert started.phases[0] == ("start", live.seconds)  # the same measurement, told early


def test_navigation_rules() -> None:
    assert is_navigation("GET", {"Accept": BROWSER_ACCEPT})
    assert is_navigation("GET", NAVIGATE)
    assert not is_navigation("GET", {"Accept": "*/*"})
    assert not is_navigation("GET", {})
    assert not is_navigation("GET", {"Accept": "application/json, text/html;q=0.5"})
    assert not is_navigation("GET", {**NAVIGATE, "Sec-Fetch-Dest": "image"})
    assert not is_navigation("HEAD", NAVIGATE)
    assert not is_navigation("GET", {**NAVIGATE, "Upgrade": "websocket"})


def test_config_fields() -> None:
    base = face_config()
    route = base["routes"][0]
    for given, expected in ((True, WaitingPage()), (False, None), ({"after": "1s"}, WaitingPage(after=1.0))):
        route["waiting_page"] = given
        assert parse_config(base).routes[0].waiting_page == expected
    for given, field in (({"theme": "neon"}, "theme"), ({"after": "soon"}, "after"), ({"template": "/no/such"},
                                                                                        "template"),
                         ({"color": "red"}, "color")):
        route["waiting_page"] = given
        with pytest.raises(ConfigError, match=rf"routes\[0\]\.waiting_page\.{field}"):
            parse_config(base)


def test_every_theme_ships_a_template() -> None:
    themes = WaitingPage.model_fields["theme"].annotation.__args__  # type: ignore[union-attr]
    assert set(themes) == {"calm", "console"}
    state = {"app": "a", "state": "starting", "phase": "ready", "phase_words": "w", "phases": [], "elapsed": 0.5,
             "reason": None}
    for theme in themes:
        assert (TEMPLATES / f"waiting-{theme}.html").is_file()
        html, headers = render(f"waiting-{theme}.html", {"app": "<a>", "url": "/", "state": state, "theme": theme,
                                                         "status_url": "/s", "events_url": "/e", "refresh": 2})
        assert "&lt;a&gt;" in html and "<a>" not in html and headers["Cache-Control"] == "no-store"


async def test_a_custom_template(make_proxy: MakeProxy, tmp_path: Any) -> None:
    custom = tmp_path / "mine.html"
    custom.write_text('<!doctype html><p id="mine">Hold on, {{ app }} wakes up</p>'
                      '<script nonce="{{ nonce }}">var s = {{ state|tojson }};</script>')
    config = face_config(delay_ms=500)
    config["routes"][0]["waiting_page"] = {"template": str(custom), "after": 0}
    h = await make_proxy(config=config)
    resp = await h.client.get("/app/%3Cb%3E/", headers=NAVIGATE)  # not a valid key: refused, never rendered
    assert resp.status == 400
    resp = await h.client.get("/app/carol/", headers=NAVIGATE)
    body = await resp.text()
    assert resp.status == 503 and 'id="mine">Hold on, carol wakes up' in body


@pytest.mark.docker
@pytest.mark.parametrize("backend_kind", ["docker"])
async def test_a_pull_is_shown_while_it_lasts(pushed: str, make_proxy: MakeProxy) -> None:  # noqa: F811
    """A real pull on dockerd (an image only the local registry has): the phase under way is `pull` from its
    beginning, and the page's stream ends with every phase the start had."""
    from proxy.lifecycle.events import StartPhase

    route = {"path": "/w/{tail:.*}", "container": "svc", "key": "pulled", "upstream_path": "/{tail}",
             "waiting_page": {"after": 0}}
    h = await make_proxy(svc={"image": pushed}, config={"routes": [route]})
    told: list[tuple[str, str]] = []
    h.proxy.bus.subscribe(lambda e: told.append((e.ended, e.now)) if isinstance(e, StartPhase) else None)
    resp = await h.client.get("/w/v2/health/ready", headers=NAVIGATE)
    assert resp.status == 503
    events_url = token_urls(await resp.text())[1]
    last: dict[str, Any] = {}
    async with h.client.get(events_url) as stream:
        async for line in stream.content:
            if line.startswith(b"data: "):
                last = json.loads(line[6:])
    assert last["state"] == "ready", last
    assert [p["name"] for p in last["phases"]] == ["pull", "create", "start", "port", "ready"]
    assert told[0] == ("", "pull") and told[1][0] == "pull"
    assert pushed.partition("/")[0] not in json.dumps(last)  # the registry and image stay unsaid
