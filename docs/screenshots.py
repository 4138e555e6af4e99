"""Screenshots of the real app with the released model, in Chromium (Debian's, through Playwright): the pictures the
README, docs/app.md and the Space README show.

    make screenshots        # or: python docs/screenshots.py [--out docs/images]

Starts `space/app.py` on a free port, clicks the cat example, switches the class activation maps on (3 maps, the
default method and layer): `app.png`. Then the map of that photo for one class and for another (`classes.png`: cat,
then dog), the mistakes gallery explained both ways (`mistakes.png`), and an upload of a picture of none of the ten
classes (a crop of matplotlib's photo of Grace Hopper) with its warning (`ood.png`).
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ood import photo_sources  # noqa: E402  (the out-of-distribution set's photos)
from tests.conftest import App, system_chromium  # noqa: E402  (the tests' real-server and browser helpers)

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
            browser = p.chromium.launch(executable_path=system_chromium(), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1200}, device_scale_factor=1)
            page.goto(app.url, wait_until="networkidle")
            page.locator("img[src*='cat.png']").first.click()
            page.locator("#network-view img").wait_for(timeout=90_000)
            page.get_by_text("Show class activation maps").click()
            page.locator("#cam-gallery img").nth(2).wait_for(timeout=90_000)
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(args.out / "app.png"), full_page=False)

            def choose(elem_id, option):
                page.locator(f"#{elem_id} input").click()
                page.get_by_role("option", name=option, exact=True).click()

            shots = []
            for name in ("cat", "dog"):
                choose("cam-target", name)
                page.wait_for_function("n => [...document.querySelectorAll('#cam-gallery .caption-label')]"
                                       ".map(e => e.innerText).join('|').startsWith(n + ' (')", arg=name,
                                       timeout=90_000)
                page.wait_for_load_state("networkidle")
                shots.append(Image.open(io.BytesIO(page.locator("#cam-gallery .gallery-item").first.screenshot())))
            side = Image.new("RGB", (sum(s.width for s in shots) + 16, max(s.height for s in shots)), "white")
            side.paste(shots[0], (0, 0))
            side.paste(shots[1], (shots[0].width + 16, 0))
            side.save(args.out / "classes.png")
            choose("cam-target", "top classes")
            page.get_by_text("Show misclassified test images").click()
            page.get_by_text("Explain both ways").click()
            gallery = page.locator("#misclassified-gallery")
            gallery.locator("img").nth(19).wait_for(timeout=90_000)
            page.wait_for_load_state("networkidle")
            gallery.screenshot(path=str(args.out / "mistakes.png"))
            page.get_by_text("Show misclassified test images").click()
            odd = Path(tempfile.mkdtemp()) / "grace-hopper.png"
            photo_sources()[0].crop((150, 60, 350, 260)).save(odd)
            page.locator("input[type=file]").first.set_input_files(str(odd))
            page.locator("#low-confidence-hint").get_by_text("is unlike the pictures the model was trained on").wait_for(
                timeout=90_000)
            page.locator("#cam-gallery img").nth(2).wait_for(timeout=90_000)
            page.wait_for_load_state("networkidle")
            top = page.locator("#network-view").bounding_box()["y"] + page.evaluate("window.scrollY") - 10
            page.screenshot(path=str(args.out / "ood.png"), full_page=True, clip={"x": 0, "y": top, "width": 1280,
                                                                                 "height": 800})
            browser.close()
    finally:
        app.stop()
    for name in ("app.png", "classes.png", "mistakes.png", "ood.png"):
        print(args.out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
