"""The serve page with a real checkpoint, looked at in Chromium (#22): a known photo, the "Show why"
overlay on it, and a photo of something the model does not know; full-page screenshots to look at.

    python benchmarks/page_tour.py CKPT --known PHOTO --unknown PHOTO --out /tmp/page-tour

``visionlab serve`` runs as a real subprocess on 127.0.0.1 (a free port) and is stopped with SIGTERM
at the end; the browser is Debian's Chromium (``apt-get install chromium``) driven by Playwright,
with every request to anywhere but the server aborted. Prints what the page said for each photo.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _serve(checkpoint: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "visionlab", "serve", "--checkpoint", str(checkpoint), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ, COLUMNS="200"))
    deadline, seen = time.monotonic() + 180, []
    while time.monotonic() < deadline:  # the first line with the URL (bounded: it stops by itself)
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        found = re.search(r"http://127\.0\.0\.1:\d+", line)
        if found:
            return proc, found.group(0)
    proc.kill()
    raise SystemExit("the server did not say where it listens:\n" + "".join(seen))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--known", type=Path, required=True, help="a photo of one of the model's classes")
    ap.add_argument("--unknown", type=Path, required=True, help="a photo of something else")
    ap.add_argument("--out", type=Path, default=Path("/tmp/page-tour"))
    args = ap.parse_args()
    from playwright.sync_api import expect, sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    proc, url = _serve(args.checkpoint)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            ctx = browser.new_context(viewport={"width": 1280, "height": 860})
            leaked: list[str] = []

            def route(r):
                if r.request.url.startswith((url, "data:", "blob:")):
                    r.continue_()
                else:
                    leaked.append(r.request.url)
                    r.abort()

            ctx.route("**/*", route)
            page = ctx.new_page()
            expect.set_options(timeout=60_000)
            page.goto(url + "/")
            expect(page.locator("#status-text")).to_have_text("ready")
            for name, photo in (("known", args.known), ("unknown", args.unknown)):
                with page.expect_response(lambda r: "/predict" in r.url and r.request.method == "POST", timeout=60_000):
                    page.set_input_files("#file", str(photo))
                expect(page.locator("#bars .bar-row").first).to_be_visible()
                said = page.inner_text("#label")
                note = page.inner_text("#unknown") if page.locator("#unknown").is_visible() else ""
                page.screenshot(path=str(args.out / f"{name}.png"), full_page=True)
                if page.get_attribute("#why", "aria-pressed") != "true":
                    with page.expect_response(lambda r: "explain=1" in r.url, timeout=60_000):
                        page.click("#why")
                expect(page.locator("#why-image")).to_be_visible()
                page.wait_for_timeout(600)  # the overlay fades in over 0.25 s
                page.screenshot(path=str(args.out / f"{name}-why.png"), full_page=True)
                print(f"{name}: {photo.name}: the page says {said!r}; {note or 'no unknown note'}; "
                      f"why: {page.inner_text('#why-note')!r}")
            browser.close()
        print(f"screenshots in {args.out}; requests off the server: {leaked or 'none'}")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    main()
