"""/docs (Swagger UI) and /redoc render offline: every script, style and image comes from the API itself.

A real `onnx-compress api` process and Debian's chromium (Playwright, as tests/service/test_browser_console.py);
the browser may reach nothing but the server (any other request is aborted and recorded), and the pages must
still render the API's operations.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.service.conftest import Stack

pytestmark = [pytest.mark.browser, pytest.mark.slow]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[dev]'")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
REDOCLY_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


@pytest.fixture(scope="module")
def api_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("docs")
    stack = Stack({"DATA_DIR": str(root / "data")}, root)
    stack.start_api("api")  # no worker: the docs need none
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[sync_api.Browser]:
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed: apt-get install -y chromium (`make test` and .ci/run do it as root)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_offline(browser: sync_api.Browser, base: str, path: str) -> tuple[sync_api.Page, list[str], list[str]]:
    """The page at base+path with every request elsewhere aborted; returns it, the outside requests and errors."""
    context = browser.new_context()
    outside: list[str] = []
    errors: list[str] = []

    def route(request_route: sync_api.Route) -> None:
        url = request_route.request.url
        if url.startswith(base + "/") or url.startswith("data:") or url.startswith("blob:"):
            request_route.continue_()
        else:
            outside.append(url)
            request_route.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.on("pageerror", lambda error: errors.append(f"uncaught: {error}"))
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    response = page.goto(base + path)
    assert response is not None and response.status == 200
    return page, outside, errors


def test_swagger_ui_renders_with_no_external_request(api_stack: Stack, browser: sync_api.Browser) -> None:
    base = api_stack.api.url
    html = httpx.get(f"{base}/docs").text
    assert "cdn" not in html.lower() and "/docs-assets/swagger-ui-bundle.js" in html
    page, outside, errors = open_offline(browser, base, "/docs")
    page.wait_for_selector(".swagger-ui .opblock", state="attached")
    operations = page.locator(".swagger-ui .opblock").count()
    assert operations >= 8, operations  # models, datasets, jobs, health...
    assert "onnx-compress" in page.locator(".swagger-ui .info").inner_text()
    page.wait_for_load_state("networkidle")
    assert outside == [], outside
    assert errors == [], errors
    page.context.close()


def test_redoc_renders_with_no_external_request(api_stack: Stack, browser: sync_api.Browser) -> None:
    base = api_stack.api.url
    page, outside, errors = open_offline(browser, base, "/redoc")
    page.wait_for_selector("[role=menuitem], .menu-content li", state="attached")
    page.wait_for_function("document.body.innerText.includes('create_job') || document.body.innerText.includes('jobs')")
    page.wait_for_load_state("networkidle")
    # ReDoc's menu footer links to Redocly with a logo it always asks Redocly's CDN for and hides when it fails
    assert [url for url in outside if url != REDOCLY_LOGO] == [], outside
    assert [error for error in errors if "ERR_FAILED" not in error] == [], errors
    page.context.close()
