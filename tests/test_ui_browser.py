"""The app in a real browser: `groundex ui` serves a built workdir on localhost, Debian's Chromium (headless,
driven by playwright's Python API) types a query on the Search page, the result images must render, and a
screenshot is saved. Skipped when Chromium or playwright is missing, except in CI (CI=true), where that is
a failure: `.ci/install-browser` installs Chromium."""

import os
import shutil
import signal
import sys
from pathlib import Path

import pytest

from tests.helpers import built_workdir, free_port, start_server, stop_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.slow


def _need_browser():
    missing = []
    if not Path(CHROMIUM).is_file():
        missing.append("Debian's chromium (run .ci/install-browser)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("playwright (pip install -e '.[dev]')")
    if missing:
        if os.environ.get("CI"):
            pytest.fail("the browser test must run in CI; missing: " + ", ".join(missing))
        pytest.skip("missing: " + ", ".join(missing))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    _need_browser()
    workdir = built_workdir(tmp_path_factory.mktemp("browser") / "work", n=200, epochs=1)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server([sys.executable, "-m", "ui.cli", "ui", "--workdir", str(workdir.root), "--port", str(port),
                           "--headless", "--", "--server.address", "127.0.0.1"], f"{url}/_stcore/health",
                          tmp_path_factory.mktemp("logs") / "streamlit.log", timeout_s=60)
    yield url, workdir
    stop_server(server, signal.SIGTERM, port)  # and nothing of it is left


def test_a_query_typed_in_chromium_renders_result_images(served, tmp_path):
    from playwright.sync_api import sync_playwright

    url, _ = served
    screenshot = Path(os.environ.get("GROUNDEX_SCREENSHOT_DIR", tmp_path)) / "browser-search.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url, wait_until="domcontentloaded")
            box = page.get_by_label("Describe the images")
            box.wait_for(timeout=90_000)
            box.fill("a red circle")
            box.press("Enter")
            page.get_by_text("images for “a red circle”").wait_for(timeout=60_000)
            images = page.locator("[data-testid='stMainBlockContainer'] [data-testid='stImage'] img")
            images.nth(11).wait_for(timeout=30_000)
            page.wait_for_function(
                "() => [...document.querySelectorAll(\"[data-testid='stMainBlockContainer'] [data-testid='stImage'] "
                "img\")].filter(i => i.complete && i.naturalWidth > 0).length >= 12", timeout=30_000)
            assert images.count() == 12
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert screenshot.stat().st_size > 10_000
