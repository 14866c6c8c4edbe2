"""The face in a real browser: headless Chromium (Debian's chromium + chromium-driver, through Selenium) opens a
cold key and the /ui dashboard on a proxy with the stub backend; screenshots light and dark go to
artifacts/screenshots/ (CI keeps them; docs/screenshots/ holds the README's copies)."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import pytest

from tests.support.admin import TOKEN
from tests.conftest import MakeProxy
from tests.support.face import chromium, color_scheme, face_config, shot


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
    """The text of the first element `css` selects ("" when none, or it was just redrawn)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        found = driver.find_elements(By.CSS_SELECTOR, css)
        return str(found[0].text) if found else ""
    except StaleElementReferenceException:
        return ""


def press(driver: Any, css: str, click: bool = False) -> bool:
    """Whether the button `css` is enabled (and, with `click`, clicked): False while it is being redrawn."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        found = driver.find_elements(By.CSS_SELECTOR, css)
        if not found or not found[0].is_enabled():
            return False
        if click:
            found[0].click()
        return True
    except StaleElementReferenceException:
        return False


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


def row_state(driver: Any, key: str) -> str:
    return text_of(driver, f'tr[data-key="slow/{key}"] .state')


@pytest.mark.parametrize("scheme", ["light", "dark"])
async def test_the_dashboard_shows_a_key_change_state_live(make_admin: Any, browser: Any,
                                                           scheme: str) -> None:
    a = await make_admin(config=face_config(delay_ms=1500))
    for name in ("alice", "bob", "carol"):
        a.h.proxy.registry.get(name, "slow")
    warm = await a.h.client.get("/app/bob/")  # one key already ran, so the class has a start to show
    assert warm.status == 200
    color_scheme(browser, scheme)
    await asyncio.to_thread(browser.get, a.url + "/ui")
    await until(lambda: text_of(browser, "#live") == "live", "the event stream")
    await until(lambda: row_state(browser, "alice") == "stopped" and row_state(browser, "bob") == "running",
                "the first page of keys")
    await until(lambda: "p50 " in text_of(browser, "#classes"), "the classes' percentiles")

    request = asyncio.create_task(a.h.client.get("/app/alice/"))  # no page reload from here on
    await until(lambda: row_state(browser, "alice") == "starting", "alice starting, live")
    await until(lambda: row_state(browser, "alice") == "running", "alice running, live")
    assert (await request).status == 200
    assert "slow/alice started" in text_of(browser, "#feed")
    shot(browser, f"dashboard-{scheme}")


async def test_dashboard_actions_need_the_token(make_admin: Any, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    a = await make_admin(config=face_config(delay_ms=0))
    assert (await a.h.client.get("/app/dave/")).status == 200
    await asyncio.to_thread(browser.get, a.url + "/ui")
    await until(lambda: row_state(browser, "dave") == "running", "dave's row")
    stop = 'button[aria-label="stop dave"]'
    disabled = await asyncio.to_thread(browser.execute_script,
                                       "var b = document.querySelector(arguments[0]); return b && b.disabled;", stop)
    assert disabled is True  # read-only without the token

    def enter_token() -> None:
        browser.find_element(By.ID, "token").send_keys(TOKEN)
        browser.find_element(By.ID, "save").click()

    await asyncio.to_thread(enter_token)
    await until(lambda: press(browser, stop, click=True), "the stop button enabled, and pressed")
    await until(lambda: row_state(browser, "dave") == "stopped", "dave stopped through the control API")
    assert a.h.manager("dave", "slow").state.value == "stopped"


async def test_without_javascript_the_meta_refresh_brings_the_app(make_proxy: MakeProxy) -> None:
    driver = await asyncio.to_thread(chromium, False)
    try:
        h = await make_proxy(config=face_config(delay_ms=1500))
        opened = asyncio.create_task(asyncio.to_thread(driver.get, str(h.client.make_url("/app/nojs/page?a=b"))))
        await until(lambda: "Now: " in text_of(driver, "#phase"), "the waiting page, rendered by the server")
        await opened
        served = await until(lambda: text_of(driver, "#served"), "the app after the page refreshed itself")
        assert served == "/page?a=b"
    finally:
        await asyncio.to_thread(driver.quit)
