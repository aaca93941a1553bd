"""Demo scenarios: bundled files load, bad files are refused with the reason, and a scenario played
on the tiny engine does what its steps say (the request moves the items, a dislike never returns)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.scenarios import Scenario, bundled, load_scenario, pick_user, placeholders, play, transcript_markdown
from tests.conftest import free_port


def test_every_bundled_scenario_loads():
    names = set(bundled())
    assert {"two-interests", "steer-genre-decade", "not-interested", "fresh-user"} <= names
    for path in bundled().values():
        scenario = load_scenario(path)
        assert scenario.steps and all(step.expect for step in scenario.steps)


@pytest.mark.parametrize("text, problem", [
    ("name: x\nsteps: []\n", "steps"),
    ("name: x\nsteps:\n  - say: hi\n    feedback: like\n", "exactly one"),
    ("name: x\nsteps:\n  - feedback: love\n", "feedback"),
    ("- just a list\n", "mapping"),
    ("name: [unclosed\n", "not valid YAML"),
])
def test_a_bad_scenario_file_says_what_is_wrong(tmp_path, text, problem):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=problem):
        load_scenario(path)


def test_users_are_chosen_from_the_data(engine):
    histories = engine.user_histories
    assert pick_user(engine, "fresh") is None
    assert len(histories[pick_user(engine, "longest")]) == max(map(len, histories.values()))
    assert pick_user(engine, "two-interests") in histories
    with pytest.raises(ValueError, match="no dataset user"):
        pick_user(engine, "nobody")


def test_steering_and_dislike_play_as_written(engine):
    wanted = engine.facets.vocabulary[0]
    scenario = Scenario.model_validate({"name": "t", "user": "longest", "thinking": False, "k": 3, "steps": [
        {"say": "what next?", "expect": "baseline"},
        {"feedback": "dislike", "item": 1, "expect": "gone"},
        {"say": f"a {wanted.lower()} please", "expect": "all {new_category}"},
    ]})
    first, click, steered = list(play(engine, scenario))
    disliked = first.items[0]
    assert click.action == f"dislike: {disliked['title']}"
    assert steered.items and disliked["item_id"] not in {i["item_id"] for i in steered.items}
    assert all(wanted in i["categories"] for i in steered.items) and steered.matching == 1.0
    assert "{" not in steered.expect                          # placeholders filled from the data
    text = transcript_markdown(scenario, [first, click, steered])
    assert "## Step 3" in text and steered.items[0]["title"] in text


def test_demo_command_writes_a_transcript(engine, built_dataset, tiny_checkpoint, tmp_path):
    from app.cli import app

    scenario = tmp_path / "s.json"
    scenario.write_text(json.dumps({"name": "fresh", "user": "fresh", "k": 2,
                                    "steps": [{"say": "anything", "expect": "two picks"}]}))
    out = tmp_path / "out" / "transcript.md"
    result = CliRunner().invoke(app, ["demo", "--scenario", str(scenario), "--data", str(built_dataset),
                                      "--checkpoint", str(tiny_checkpoint), "--out", str(out),
                                      "--sessions-url", f"sqlite:///{tmp_path}/s.db"])
    assert result.exit_code == 0, result.output
    steps = json.loads(out.with_suffix(".json").read_text())["steps"]
    assert len(steps[0]["items"]) == 2 and "derivation" in steps[0]["levels"]
    assert "# fresh" in out.read_text()
    missing = CliRunner().invoke(app, ["demo", "--scenario", str(tmp_path / "none.yaml")])
    assert missing.exit_code != 0 and "no scenario file" in missing.output


@pytest.mark.browser
def _small_answers(path):
    """A bundled scenario with 1-item answers: the test catalog holds two items of one genre and
    decade, and a turn with fewer than asked would ask a question instead of answering."""
    scenario = load_scenario(path)
    scenario.k = 1
    return scenario


def test_a_scenario_plays_in_the_browser(engine, monkeypatch):
    """The Demo tab in Chromium: start a bundled scenario, step through it to the end; each step
    shows what it should show, and a turn shows its items."""
    from playwright.sync_api import expect, sync_playwright

    import app.demo_tab

    monkeypatch.setattr(app.demo_tab, "load_scenario", _small_answers)

    from tests.test_browser import CHROMIUM_ARGS, chromium_path
    from app.ui import build_app

    demo = build_app(engine, ["u1"])
    demo.queue(default_concurrency_limit=4)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded", timeout=60_000)
            page.get_by_role("tab", name="Demo").click(timeout=60_000)
            page.locator("#scenario-picker input").fill("not-interested")
            page.keyboard.press("Enter")
            expect(page.locator("#scenario-outline")).to_contain_text("Not interested", timeout=30_000)
            page.locator("#scenario-start").click()
            expect(page.locator("#scenario-steps")).to_contain_text("Session started", timeout=30_000)
            steps = len(load_scenario(bundled()["not-interested"]).steps)
            for number in range(1, steps + 1):
                page.locator("#scenario-next").click()
                expect(page.locator("#scenario-steps")).to_contain_text(f"Step {number}:", timeout=60_000)
            text = page.locator("#scenario-steps").inner_text()
            assert "What it should show" in text and "dislike:" in text and "SID" in text
            expect(page.locator("#scenario-next")).to_be_disabled(timeout=10_000)
            Path("test-results").mkdir(exist_ok=True)
            page.screenshot(path="test-results/demo-tab.png", full_page=True)
            # The fresh user's reasoning says what little there is: nothing, then the one liked film.
            page.locator("#scenario-picker input").fill("fresh-user")
            page.keyboard.press("Enter")
            expect(page.locator("#scenario-outline")).to_contain_text("A fresh user", timeout=30_000)
            page.locator("#scenario-start").click()
            expect(page.locator("#scenario-steps")).to_contain_text("Session started", timeout=30_000)
            for number in range(1, len(load_scenario(bundled()["fresh-user"]).steps) + 1):
                page.locator("#scenario-next").click()
                expect(page.locator("#scenario-steps")).to_contain_text(f"Step {number}:", timeout=60_000)
            text = page.locator("#scenario-steps").inner_text()
            Path("test-results/demo-fresh-user.txt").write_text(text)
            assert "No history yet: no interests to derive." in text
            assert "Only 1 item so far" in text and "Too few items to follow a trend: 1 so far." in text
            page.screenshot(path="test-results/demo-fresh-user.png", full_page=True)
            browser.close()
    finally:
        demo.close()


def test_placeholders_leave_answers_to_give_for_a_user_who_watched_every_genre(engine):
    """A user whose latest items touch every genre: the new genre is the one they touch least among
    those with enough unseen items, and the decade leaves items of it (the steer-genre-decade
    scenario does not run dry on a heavy user)."""
    facets = engine.facets
    cover = list(dict.fromkeys(next(i for i in facets.item_ids if c in facets.categories_of(i))
                               for c in facets.vocabulary))
    history = cover * 5                       # "recent" is the latest fifth: exactly ``cover``
    touched = Counter(c for i in cover for c in facets.categories_of(i))
    assert set(touched) == set(facets.vocabulary)
    unseen = [i for i in facets.item_ids if i not in cover]

    def available(category: str, decade: int | None = None) -> int:
        return sum(category in facets.categories_of(i) and (decade is None or (facets.year_of(i) or 0) // 10 * 10 == decade)
                   for i in unseen)

    shown = 1                                 # the tiny catalog has a few items a genre
    enough = [c for c in sorted(facets.vocabulary, key=lambda c: touched[c]) if available(c) >= 4 * shown]
    assert enough and touched[enough[0]] < max(touched.values())       # a real choice to make
    values = placeholders(engine, history, shown=shown)
    category = next(c for c in facets.vocabulary if c.lower() == values["new_category"])
    assert category == enough[0]
    decade = int(values["decade"].rstrip("s"))
    best = max(available(category, (facets.year_of(i) or 0) // 10 * 10) for i in unseen
               if category in facets.categories_of(i))
    assert available(category, decade) >= min(2 * shown, best) > 0


@pytest.mark.parametrize("name", sorted(bundled()))
def test_every_bundled_scenario_reads_true(engine, name):
    """Each thinking step of each bundled scenario: levels 1-2 are whole sentences whose trend
    statements recount true from the session's history, a short history is said plainly, and
    level 3 never goes against the active request."""
    from engine.interests import check_trends
    from training.reasoning_metrics import ItemInfo, ReasoningScorer

    items = engine.recommender.planner.reader.items
    scorer = ReasoningScorer({i: ItemInfo(f.title, f.categories, f.year) for i, f in items.items()}, {})
    scenario = _small_answers(bundled()[name])
    thought = 0
    for outcome in play(engine, scenario):
        if not outcome.levels:
            continue
        thought += 1
        session = engine.sessions.get(outcome.session_id)
        derivation, evolution = outcome.levels["derivation"], outcome.levels["evolution"]
        assert derivation.endswith(".") and evolution.endswith("."), outcome.levels
        statements, true = check_trends(derivation, evolution, session.history, items)
        assert statements == true, outcome.levels
        if 0 < len(session.history) < 3:
            assert derivation.startswith(f"Only {len(session.history)} item"), derivation
            assert evolution.startswith("Too few items to follow a trend"), evolution
        assert not scorer.contradiction(outcome.levels, session.constraints), (outcome.levels, session.constraints)
    assert thought or not scenario.thinking
