"""The Trace tab's export in Debian's headless Chromium: a thinking turn, the Trace tab, html, Export
session, the file downloaded, then opened from ``file://`` with every network request refused: the
three levels and the items are there (an exported trace opens offline)."""

from __future__ import annotations

import re

import pytest

from tests.test_browser import SHOTS, app_url, fresh_session, send_first_message  # noqa: F401 (app_url: a fixture)

pytestmark = pytest.mark.browser


def test_export_the_session_as_html_and_open_it_offline(app_url, tmp_path):  # noqa: F811
    from playwright.sync_api import expect, sync_playwright

    SHOTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser, page = fresh_session(p, app_url)
        page.locator("#thinking input").check()
        titles = send_first_message(page, "something with spaceships please")
        assert titles and all(titles)

        page.get_by_role("tab", name="Trace").click()
        expect(page.locator("#trace-summary")).to_contain_text("Latency", timeout=30_000)
        # The dropdown's value is its input's value (not text content): the turn just answered.
        expect(page.locator("#trace-turn input")).to_have_value(re.compile(r"^Turn 1: something with spaceships"),
                                                                timeout=30_000)
        page.locator("#export-format").get_by_label("html").check()
        page.locator("#export-session").click()
        link = page.locator("#trace-file a[download]").first
        expect(link).to_be_visible(timeout=30_000)
        with page.expect_download(timeout=30_000) as download:
            link.click()
        saved = tmp_path / "trace.html"
        download.value.save_as(saved)
        assert download.value.suggested_filename.endswith(".html")
        page.screenshot(path=str(SHOTS / "trace_export.png"), full_page=True)

        offline = browser.new_context(viewport={"width": 1280, "height": 1500})
        asked: list[str] = []

        def refuse(route):
            if route.request.url.startswith("file://"):
                route.continue_()
            else:
                asked.append(route.request.url)
                route.abort()

        offline.route("**/*", refuse)
        view = offline.new_page()
        view.goto(saved.resolve().as_uri(), wait_until="load")
        for name in ("Derivation", "Evolution", "Recommendation"):
            expect(view.locator("details.level summary", has_text=name)).to_be_visible()
            expect(view.locator(f"details.level-{name.lower()} p")).to_be_visible()      # open: the text shows
        items = view.locator("table.items tbody tr")
        expect(items).to_have_count(len(titles))
        for title in titles:
            expect(view.locator("table.items")).to_contain_text(title)
        expect(view.locator("table.beams")).to_be_visible()
        expect(view.locator("details.prompt pre")).to_be_hidden()                         # the prompt is collapsed
        view.screenshot(path=str(SHOTS / "trace_export_offline.png"), full_page=True)
        assert asked == [], asked
        offline.close()
        browser.close()
