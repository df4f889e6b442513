"""Screenshots of the app's main pages for the README, taken in headless Chromium from a demo workdir.

    python docs/screenshots.py --workdir /tmp/groundex-demo      # after `groundex demo --workdir ...`

Only the synthetic demo is ever photographed: no picture derived from the real sample's photos may be
committed. Needs Debian's chromium (.ci/install-browser) and playwright (the dev extra)."""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

OUT = Path(__file__).resolve().parent / "img"


def _serve(workdir: Path, port: int) -> subprocess.Popen:
    server = subprocess.Popen([sys.executable, "-m", "ui.cli", "ui", "--workdir", str(workdir), "--port", str(port),
                               "--headless", "--", "--server.address", "127.0.0.1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2):
                return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise SystemExit("streamlit did not start within 60 s")


def _settle(page, selector: str = "[data-testid='stMainBlockContainer']") -> None:
    """Wait until the app has finished running and every image in the page has loaded."""
    page.wait_for_selector(selector, timeout=90_000)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=180_000)
    page.wait_for_function("() => [...document.images].every(i => i.complete)", timeout=60_000)
    page.wait_for_timeout(800)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True, help="a workdir built by `groundex demo`")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--check-only", action="store_true",
                        help="drive every page in the browser and save nothing (allowed on any workdir, e.g. one "
                             "built from the real sample)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from warehouse import Catalog, Workdir

    with Catalog.open(Workdir(args.workdir), read_only=True) as catalog:
        datasets = catalog.counts()["datasets"]
        image_id, image_path = catalog.image_rows("val")[3]
        phrase = next(r.text for r in catalog.grounding_rows(image_ids=[image_id]) if r.boxes)
    if not args.check_only and (not datasets or any(not name.startswith("synthetic") for name in datasets)):
        raise SystemExit(f"{args.workdir} holds {sorted(datasets)}: only the synthetic demo is photographed")
    args.out.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = _serve(args.workdir, port)
    url = f"http://127.0.0.1:{port}"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                                        args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})

            def shot(name: str) -> None:
                _settle(page)
                errors = page.locator("[data-testid='stException'], [data-testid='stAlertContentError']")
                if errors.count():
                    raise SystemExit(f"the {name} page shows an error: {errors.first.inner_text()[:300]}")
                if args.check_only:
                    print(f"{name}: ok")
                    return
                page.screenshot(path=str(args.out / f"ui-{name}.png"))
                print(args.out / f"ui-{name}.png")

            page.goto(url)
            page.get_by_label("Describe the images").fill("two orange dogs on the grass")
            page.keyboard.press("Enter")
            page.get_by_text("images for").wait_for(timeout=60_000)
            shot("search")

            page.goto(f"{url}/image")
            page.get_by_label("image id", exact=True).fill(str(image_id))
            page.keyboard.press("Enter")
            _settle(page)
            page.get_by_label("Ground a phrase", exact=True).fill(phrase)
            page.keyboard.press("Enter")
            page.get_by_text("best patch").wait_for(timeout=60_000)
            shot("image")

            page.goto(f"{url}/regions")
            page.get_by_label("Which part of which image shows").fill("a yellow car")
            page.keyboard.press("Enter")
            page.get_by_text("best region first").wait_for(timeout=60_000)
            shot("regions")

            page.goto(f"{url}/upload")
            page.locator("input[type='file']").set_input_files(image_path)
            page.get_by_text("Similar images").wait_for(timeout=60_000)
            shot("upload")

            page.goto(f"{url}/explore")
            page.get_by_text("Embedding map").wait_for(timeout=60_000)
            _settle(page)
            point = page.locator("[data-testid='stVegaLiteChart'] g.mark-symbol path").nth(200)
            point.hover(force=True)  # its tooltip: thumbnail, id, split and first caption
            page.wait_for_timeout(800)
            shot("explore")

            page.goto(f"{url}/evaluation")
            page.get_by_role("heading", name="Evaluation").wait_for(timeout=60_000)
            shot("evaluation")

            page.goto(f"{url}/sql")
            page.get_by_text("rows in").wait_for(timeout=60_000)
            shot("sql")
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
