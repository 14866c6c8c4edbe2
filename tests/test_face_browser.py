"""The face in a real browser: headless Chromium (Debian's chromium + chromium-driver, through Selenium) opens a
cold key and the /ui dashboard on a proxy with the stub backend; screenshots light and dark go to
artifacts/screenshots/ (CI keeps them; docs/screenshots/ holds the README's copies)."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import pytest
from aiohttp.test_utils import TestServer

from proxy.admin.api import create_admin_app
from tests.admin_support import TOKEN
from tests.conftest import MakeProxy
from tests.face_support import chromium, color_scheme, face_config, shot


@pytest.fixture
def backend_kind() -> str:
    return "stub"


@pytest.fixture
def browser() -> Any:
    driver = chromium()
    yield driver
    driver.quit()


async def until(check: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    """Poll the browser (off the event loop, which serves the proxy) until `check()` is truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await asyncio.to_thread(check)
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"not seen within {timeout:g}s: {what}")
        await asyncio.sleep(0.05)


def text_of(driver: Any, css: str) -> str:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, css)
    return str(found[0].text) if found else ""


@pytest.mark.parametrize("scheme,theme", [("light", "calm"), ("dark", "calm"), ("light", "console"),
                                          ("dark", "console")])
async def test_a_cold_key_shows_the_page_then_the_app(make_proxy: MakeProxy, browser: Any, scheme: str,
                                                      theme: str) -> None:
    h = await make_proxy(config=face_config(delay_ms=2500, theme=theme))
    color_scheme(browser, scheme)
    url = str(h.client.make_url(f"/app/{theme}-{scheme}/notes?id=7"))
    opened = asyncio.create_task(asyncio.to_thread(browser.get, url))
    phase = await until(lambda: text_of(browser, "#phase"), "the waiting page's phase")
    assert phase.startswith("Now: ") and browser.title.startswith("Starting")
    await until(lambda: "waiting for the app to answer" in text_of(browser, "#phase"), "the readiness phase")
    await until(lambda: text_of(browser, "#phases"), "a finished phase listed")
    shot(browser, f"waiting-{theme}-{scheme}")
    await opened
    served = await until(lambda: text_of(browser, "#served"), "the app itself, without a manual reload")
    assert served == "/notes?id=7" and text_of(browser, "#app") == "the app itself"


async def test_a_failed_start_shows_the_reason(make_proxy: MakeProxy, browser: Any) -> None:
    h = await make_proxy(config=face_config(after="0ms"))
    await asyncio.to_thread(browser.get, str(h.client.make_url("/broken/")))
    reason = await until(lambda: text_of(browser, "#reason"), "the failure's reason")
    assert reason == "the app could not be started"
    assert "could not start" in browser.title
    focused = await asyncio.to_thread(lambda: browser.switch_to.active_element.get_attribute("id"))
    assert focused == "retry"  # the retry button has the focus: Enter tries again
    shot(browser, "waiting-failed")
