"""Helpers for the face's tests (waiting page, /ui): a slow-starting stub app and headless Chromium.

- `create_app`: a stub image (`stub:tests.support.face:create_app`) whose readiness answers only after
  `READY_DELAY_MS` (default 0) and whose pages say which path and query they served, as HTML.
- `face_config(...)`: a root config with class `slow` (that app), `broken` (an image that cannot load) and a
  route per key under `/app/{id}/...` with a waiting page.
- `chromium()`: a headless Chromium through Selenium and Debian's chromium-driver; skips when missing, fails
  under CI=true. `shot(driver, name)`: a screenshot under artifacts/screenshots/ (and docs/screenshots/ when
  LAZY_PROXY_SCREENSHOTS_DOCS=1, to refresh the README's copies).
"""

from __future__ import annotations

import asyncio
import html
import os
import shutil
import time
from pathlib import Path
from typing import Any, Mapping

import pytest
from aiohttp import web

from tests.conftest import ci

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts" / "screenshots"
DOCS = ROOT / "docs" / "screenshots"
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
NAVIGATE = {"Accept": BROWSER_ACCEPT, "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}


def create_app(env: Mapping[str, str]) -> web.Application:
    """Readiness (`/ready`) after READY_DELAY_MS; any other path: an HTML page naming the path and query."""
    ready_at = time.monotonic() + float(env.get("READY_DELAY_MS", "0")) / 1000

    async def ready(request: web.Request) -> web.Response:
        if (remaining := ready_at - time.monotonic()) > 0:
            await asyncio.sleep(min(remaining, 0.5))
            if ready_at > time.monotonic():
                return web.Response(status=503, text="warming up")
        return web.Response(text="ready")

    async def page(request: web.Request) -> web.Response:
        text = html.escape(request.path_qs)
        return web.Response(text=f"<!doctype html><title>the app</title><h1 id=app>the app itself</h1>"
                                 f"<p id=served>{text}</p>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/ready", ready)
    app.router.add_route("*", "/{tail:.*}", page)
    return app


def face_config(delay_ms: int = 1500, after: str = "0ms", theme: str = "calm", **extra: Any) -> dict[str, Any]:
    readiness = {"path": "/ready", "interval": "20ms", "timeout": "2s"}
    page = {"after": after, "theme": theme}
    return {
        "containers": {
            "slow": {"image": "stub:tests.support.face:create_app", "env": {"READY_DELAY_MS": str(delay_ms)},
                     "readiness": readiness, "start_timeout": "20s", "sleep_after": "60s"},
            "broken": {"image": "stub:no_such_module_for_face:create_app", "readiness": readiness,
                       "crash_loop": {"failures": 100}},
        },
        "routes": [
            {"path": "/app/{id}/{tail:.*}", "container": "slow", "key": "{id}", "upstream_path": "/{tail}",
             "waiting_page": page},
            {"path": "/plain/{tail:.*}", "container": "slow", "key": "plain", "upstream_path": "/{tail}"},
            {"path": "/broken/{tail:.*}", "container": "broken", "key": "broken", "upstream_path": "/{tail}",
             "waiting_page": page},
        ],
        **extra,
    }


def chromium(javascript: bool = True) -> Any:
    """A headless Chromium (Selenium over Debian's chromium-driver), or a skip (a failure under CI=true)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver") or ("/usr/bin/chromedriver"
                                                   if os.access("/usr/bin/chromedriver", os.X_OK) else None)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        browser = None
    if browser is None or driver_path is None:
        if ci():
            pytest.fail("chromium, chromium-driver or selenium missing under CI=true (.ci/tools.sh, pyproject test)")
        pytest.skip("headless Chromium not installed (apt-get install chromium chromium-driver; pip install selenium)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,800", "--no-first-run", "--disable-extensions", "--hide-scrollbars"):
        options.add_argument(arg)
    if not javascript:
        options.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
    for attempt in (1, 2, 3):  # a busy machine may miss the driver's session start once
        try:
            return webdriver.Chrome(service=Service(driver_path), options=options)
        except Exception:  # noqa: BLE001 - selenium's SessionNotCreatedException and the like
            if attempt == 3:
                raise
            time.sleep(1)
    raise AssertionError("unreachable")


def color_scheme(driver: Any, scheme: str) -> None:
    """Emulate `prefers-color-scheme` (light or dark) for the pages that follow."""
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia",
                           {"features": [{"name": "prefers-color-scheme", "value": scheme}]})


def shot(driver: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    if os.environ.get("LAZY_PROXY_SCREENSHOTS_DOCS") == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS / f"{name}.png")
    return path
