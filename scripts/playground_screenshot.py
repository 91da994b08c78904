"""The README's playground screenshot: serve the shipped mnist model, drive the page in Debian's headless
chromium (Playwright, no browser download), and write docs/img/playground.png.

    .venv/bin/python scripts/playground_screenshot.py [--out docs/img/playground.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.browser import BROWSER_ARGS, CHROMIUM  # noqa: E402
from tests.integration.conftest import ServerProcess  # noqa: E402


def shoot(url: str, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1320, "height": 900})
        page.set_default_timeout(60_000)
        errors = []
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        page.goto(url + "/")
        page.wait_for_selector("body[data-ready=true]")
        page.fill("#seed", "7")
        page.fill("#count", "8")
        for _ in range(10):  # strips, so the chart has ten requests or more at every step count
            page.click("#gen-form button[value=strip]")
            page.wait_for_selector("#gen-form button[value=generate]:enabled")
        page.fill("#count", "30")
        page.select_option("#steps", "2")
        page.click("#gen-form button[value=generate]")
        page.wait_for_selector("#gen-form button[value=generate]:enabled")
        page.wait_for_timeout(2500)  # one more stats poll
        if errors:
            raise SystemExit(f"console errors: {errors}")
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), full_page=True)
        browser.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs/img/playground.png")
    ap.add_argument("--model", default="mnist", help="a model name or checkpoint (default: shipped mnist)")
    a = ap.parse_args()
    server = ServerProcess(["--model", a.model, "--max-steps", "4"]).wait_ready()
    try:
        shoot(server.url, a.out)
    finally:
        server.stop()
    print(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
