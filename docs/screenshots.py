"""Screenshots of the real app with the released model, in Chromium (Debian's, through Playwright): the pictures the
README, docs/app.md and the Space README show.

    make screenshots        # or: python docs/screenshots.py [--out docs/images]

Starts `space/app.py` on a free port, clicks the cat example, switches the class activation maps on (3 maps, the
default method and layer) and the mistakes gallery explained both ways, and saves `app.png` and `mistakes.png`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import App  # noqa: E402  (the tests' real-server helper)

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--model", default=str(ROOT / "release" / "model"))
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    app = App(ROOT / "space" / "app.py", env={"S10_MODEL": args.model}, cwd=ROOT)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1200}, device_scale_factor=1)
            page.goto(app.url, wait_until="networkidle")
            page.locator("img[src*='cat.png']").first.click()
            page.locator("#network-view img").wait_for(timeout=90_000)
            page.get_by_text("Show class activation maps").click()
            page.locator("#cam-gallery img").nth(2).wait_for(timeout=90_000)
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(args.out / "app.png"), full_page=False)
            page.get_by_text("Show misclassified test images").click()
            page.get_by_text("Explain both ways").click()
            gallery = page.locator("#misclassified-gallery")
            gallery.locator("img").nth(19).wait_for(timeout=90_000)
            page.wait_for_load_state("networkidle")
            gallery.screenshot(path=str(args.out / "mistakes.png"))
            browser.close()
    finally:
        app.stop()
    for name in ("app.png", "mistakes.png"):
        print(args.out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
