"""Demo scenarios: bundled files load, bad files are refused with the reason, and a scenario played
on the tiny engine does what its steps say (the request moves the items, a dislike never returns)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from app.scenarios import Scenario, bundled, load_scenario, pick_user, play, transcript_markdown


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
