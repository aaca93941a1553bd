"""Re-take the README's screenshots from a running app (Debian's chromium via Playwright):

    thinkrec app &                                   # README command 1
    python docs/screenshots.py --url http://127.0.0.1:7860/ --out docs

A fresh user asks for "a 90s comedy please", then "no drama"; the first answer (app_chat.png) and
the Trace tab after the second (app_trace.png) are saved. Then the Compare tab answers
"a 90s comedy please" for the first dataset user thinking, non-thinking and by SASRec side by side
(app_compare.png). ``--shots compare`` takes only that one.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:7860/")
    parser.add_argument("--out", default="docs")
    parser.add_argument("--messages", nargs="+", default=["a 90s comedy please", "no drama"])
    parser.add_argument("--compare-message", default="a 90s comedy please")
    parser.add_argument("--shots", default="chat,compare", help="chat (chat + trace) and/or compare")
    args = parser.parse_args()
    shots = {s.strip() for s in args.shots.split(",")}
    from playwright.sync_api import sync_playwright

    out = Path(args.out)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1600})
        page.goto(args.url, wait_until="domcontentloaded", timeout=60_000)
        if "chat" in shots:
            chat_shots(page, out, args.messages)
        if "compare" in shots:
            compare_shot(page, out, args.compare_message)
        browser.close()


def chat_shots(page, out: Path, messages: list[str]) -> None:
    from playwright.sync_api import expect

    page.locator("#start-session").click(timeout=60_000)
    expect(page.locator("#history")).to_contain_text("Fresh user", timeout=30_000)
    for n, message in enumerate(messages):
        page.locator("#message textarea").fill(message)
        page.locator("#send").click()
        expect(page.locator("#chat")).to_contain_text("Active request", timeout=120_000)
        expect(page.locator("#chat").locator("text=Active request")).to_have_count(n + 1, timeout=120_000)
        if n == 0:
            # The first answer, scrolled to its reasoning (the chat box follows the newest message).
            page.wait_for_timeout(1000)
            page.locator("#chat").evaluate(
                "root => root.querySelectorAll('*').forEach(e => { if (e.scrollHeight > e.clientHeight + 4)"
                " e.scrollTop = e.scrollHeight - e.clientHeight - 520; })")
            page.wait_for_timeout(500)
            page.screenshot(path=str(out / "app_chat.png"), full_page=True)
    page.get_by_role("tab", name="Trace").click()
    expect(page.locator("#trace-summary")).to_contain_text("Active constraints", timeout=30_000)
    page.wait_for_timeout(500)
    page.screenshot(path=str(out / "app_trace.png"), full_page=True)


def compare_shot(page, out: Path, message: str) -> None:
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Compare").click()
    page.locator("#compare-message textarea").fill(message)
    page.locator("#compare-go").click()
    expect(page.locator("#compare-request")).to_contain_text("Request understood", timeout=180_000)
    for column in ("#compare-thinking", "#compare-non-thinking", "#compare-sasrec"):
        expect(page.locator(column)).to_contain_text("satisfy the request", timeout=180_000)
    page.wait_for_timeout(800)
    page.screenshot(path=str(out / "app_compare.png"), full_page=True)


if __name__ == "__main__":
    main()
