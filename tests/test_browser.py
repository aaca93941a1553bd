"""The real app in Debian's headless Chromium, driven by Playwright: type a request, see the
reasoning and the items, like one, and see the next turn reflect it. Saves screenshots under
test-results/."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.browser
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = Path("test-results")


def chromium_path() -> str:
    path = os.environ.get("THINKREC_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    assert Path(path).exists(), "browser tests need Debian's chromium: apt-get install -y chromium"
    return path


@pytest.fixture(scope="module")
def app_url(engine):
    from app.ui import build_app

    demo = build_app(engine, ["u1", "u2"])
    demo.queue(default_concurrency_limit=10)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def fresh_session(playwright, app_url: str):
    """Chromium on the app with a fresh user's session started."""
    from playwright.sync_api import expect

    browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
    page = browser.new_page(viewport={"width": 1280, "height": 1500})
    page.goto(app_url, wait_until="domcontentloaded", timeout=60_000)
    page.locator("#start-session").click(timeout=60_000)
    expect(page.locator("#history")).to_contain_text("Fresh user", timeout=30_000)
    return browser, page


def item_rows(page) -> list[list[str]]:
    """Rows of the items table as the user sees them (rank, title, year, categories, SID, score)."""
    cells = [c.strip() for c in page.locator("#items").inner_text().splitlines() if c.strip()]
    body = cells[cells.index("score") + 1:]
    return [body[i:i + 6] for i in range(0, len(body) - 5, 6)]


def item_titles(page) -> list[str]:
    return [row[1] for row in item_rows(page)]


def send_first_message(page, message: str) -> list[str]:
    """Send the session's first message; once its reasoning and items show, the item titles."""
    from playwright.sync_api import expect

    page.locator("#message textarea").fill(message)
    page.locator("#send").click()
    expect(page.locator("#chat")).to_contain_text("Reasoning", timeout=60_000)
    expect(page.locator("#items")).to_contain_text("<a_", timeout=60_000)
    page.wait_for_timeout(500)
    return item_titles(page)


def test_chat_like_and_next_turn(app_url):
    from playwright.sync_api import expect, sync_playwright

    SHOTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser, page = fresh_session(p, app_url)

        first_titles = send_first_message(page, "something with spaceships please")
        assert len(first_titles) == 10 and all(first_titles)
        page.screenshot(path=str(SHOTS / "chat.png"), full_page=True)

        liked = first_titles[0]                       # the item picker defaults to the top item
        page.locator("#like").click()
        expect(page.locator("#feedback-note")).to_contain_text(liked, timeout=30_000)
        expect(page.locator("#history")).to_contain_text(liked)

        page.locator("#message textarea").fill("more like that")
        page.locator("#send").click()
        expect(page.locator("#items")).not_to_contain_text(first_titles[0], timeout=60_000)
        page.wait_for_timeout(500)
        second_titles = item_titles(page)
        assert liked not in second_titles and not set(second_titles) & set(first_titles)

        page.get_by_role("tab", name="Trace").click()
        expect(page.locator("#trace-summary")).to_contain_text("Latency", timeout=30_000)
        page.screenshot(path=str(SHOTS / "trace.png"), full_page=True)
        browser.close()


def _constraints(category: str, decade: int):
    from engine.constraints import Constraints

    return Constraints(want=[[category]], year_min=decade, year_max=decade + 9)


def _decade_request(engine) -> tuple[str, int, str]:
    """A category and a decade with several items together, and a category to avoid on top."""
    from collections import Counter

    from engine.constraints import Constraints

    best = Counter()
    for category in engine.facets.vocabulary:
        for item in engine.facets.allowed_items(Constraints(want=[[category]])):
            year = engine.facets.year_of(item)
            if year:
                best[(category, year // 10 * 10)] += 1
    (category, decade), _ = best.most_common(1)[0]
    avoid = next(c for c in engine.facets.vocabulary if c != category)
    return category, decade, avoid


def test_a_fresh_user_steers_by_category_and_decade(app_url, engine):
    """The acceptance flow: a fresh user asks for "a 90s comedy" (here: the fixture's own category
    and decade), gets only such items, sees the request stated; "no <category>" keeps both."""
    from playwright.sync_api import expect, sync_playwright

    category, decade, avoid = _decade_request(engine)
    SHOTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser, page = fresh_session(p, app_url)
        page.locator("#message textarea").fill(f"a {str(decade)[2:]}s {category.lower()} please")
        page.locator("#send").click()
        stated = f"{category} from the {decade}s"
        expect(page.locator("#chat")).to_contain_text(f"Active request: {stated}", timeout=90_000)
        if engine.recommender.available(_constraints(category, decade), set()) < 10:
            # The small test catalog has fewer than K such items: the turn asks first.
            expect(page.locator("#chat")).to_contain_text("widen", timeout=90_000)
            page.locator("#message textarea").fill("show those")
            page.locator("#send").click()
        expect(page.locator("#items")).to_contain_text("<a_", timeout=90_000)
        page.wait_for_timeout(500)
        rows = item_rows(page)
        assert rows and all(decade <= int(r[2]) <= decade + 9 and category in r[3] for r in rows), rows
        # Level 3 states the request (the chat keeps the reasoning collapsed; the trace shows it).
        page.get_by_role("tab", name="Trace").click()
        expect(page.locator("#trace-summary")).to_contain_text(f"You asked for {stated}", timeout=30_000)
        page.get_by_role("tab", name="Chat").click()

        page.locator("#message textarea").fill(f"no {avoid.lower()}")
        page.locator("#send").click()
        expect(page.locator("#chat")).to_contain_text(f"Active request: {stated}, no {avoid}", timeout=90_000)
        page.get_by_role("tab", name="Trace").click()
        expect(page.locator("#trace-summary")).to_contain_text(f"Active constraints: {stated}, no {avoid}",
                                                               timeout=30_000)
        page.screenshot(path=str(SHOTS / "steering_trace.png"), full_page=True)
        browser.close()


def test_a_question_in_the_chat_and_its_answer(app_url, engine):
    """A request that leaves fewer than K items: the chat shows the question instead of items, the
    Trace tab says it was asked, and "widen" brings items from the wider range."""
    from playwright.sync_api import expect, sync_playwright

    from tests.test_openai_api import _narrow_year

    year = _narrow_year(engine)
    with sync_playwright() as p:
        browser, page = fresh_session(p, app_url)
        page.locator("#message textarea").fill(f"something from {year}")
        page.locator("#send").click()
        expect(page.locator("#chat")).to_contain_text("widen", timeout=90_000)
        page.get_by_role("tab", name="Trace").click()
        expect(page.locator("#trace-summary")).to_contain_text("Asked instead of answering", timeout=30_000)
        page.get_by_role("tab", name="Chat").click()
        page.locator("#message textarea").fill("widen please")
        page.locator("#send").click()
        expect(page.locator("#items")).to_contain_text("<a_", timeout=90_000)
        page.wait_for_timeout(500)
        years = [int(r[2]) for r in item_rows(page)]
        assert years and all(abs(y - year) <= 10 for y in years) and any(y != year for y in years), years
        page.screenshot(path=str(SHOTS / "question.png"), full_page=True)
        browser.close()
