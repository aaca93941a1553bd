"""Traces persist and export (issue 16, part 3): every turn's trace is stored with the session (an
older database is migrated), and a session exports as Markdown, JSON or one self-contained HTML
file, from app/trace_export.py and from ``thinkrec trace export|list``."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from engine.events import BeamCandidate, ItemCard, RequestInfo, Trace, TraceEvent
from engine.sessions import SessionStore, Turn
from app.trace_export import LEVEL_NAMES, SessionExport, export_session

ROOT = Path(__file__).resolve().parents[1]
ATTACK = "<script>alert(1)</script> & a 90s comedy"
LEVELS = {"derivation": "You like Sci-Fi <b>a lot</b>.", "evolution": "Recent burst of 90s titles.",
          "recommendation": "Serve Sci-Fi from the 1990s."}


def _trace(**extra) -> Trace:
    beams = [BeamCandidate(item_id="7", title="Alien <Director's Cut>", sid="<a_1><b_2><c_3>", score=-1.25),
             BeamCandidate(item_id="8", title="Gattaca", sid="<a_1><b_2><c_4>", score=-2.5),
             BeamCandidate(item_id="9", title="Heat", sid="<a_4><b_0><c_1>", score=-3.75)]
    return Trace(turn_id="t-1", prompt="<|system|>rules<|end|><|user|>" + ATTACK + "<|end|>", prompt_tokens=42,
                 thinking=True, reasoning_tokens=30, levels=LEVELS, beams=beams,
                 latency_ms={"first_token_ms": 12.0, "total_ms": 80.5}, k=2, num_beams=3,
                 request=RequestInfo(understood="wants Comedy", active="Comedy from the 1990s", available=12),
                 max_reasoning_tokens=192, **extra)


def _stored_session(store: SessionStore, with_cards: bool = True):
    """A session as the engine stores one: an answered exchange, then a refused message."""
    session = store.create(user_id="u1", history=["1", "2", "3"])
    trace = _trace()
    cards = [ItemCard(rank=1, item_id="7", title="Alien <Director's Cut>", year=1979, categories=["Sci-Fi"],
                      sid="<a_1><b_2><c_3>", score=-1.25),
             ItemCard(rank=2, item_id="8", title="Gattaca", year=1997, sid="<a_1><b_2><c_4>", score=-2.5)]
    stored = trace.model_dump(mode="json") | ({"items": [c.model_dump(mode="json") for c in cards]} if with_cards else {})
    store.add_exchange(session.id, [Turn("user", ATTACK, request={"want": [["Comedy"]]}),
                                    Turn("assistant", "2 picks. Top pick: Alien (1979).", ["7", "8"], LEVELS,
                                         trace=stored)])
    refused = Trace(turn_id="t-2", prompt="", prompt_tokens=0, thinking=True, k=2, num_beams=3,
                    request=RequestInfo(understood="wants Western", active="Western", available=0))
    store.add_exchange(session.id, [Turn("user", "a western", trace=refused.model_dump(mode="json"))])
    return store.get(session.id)


# -- persistence ---------------------------------------------------------------------------------
def test_a_turn_stores_its_trace_with_the_assistant_turn(engine):
    session = engine.start_session(user_id=next(iter(engine.user_histories)))
    events = list(engine.turn(session.id, "something new please", thinking=True, k=3, num_beams=6))
    yielded = next(e.trace for e in events if isinstance(e, TraceEvent))
    user, answer = engine.sessions.get(session.id).turns
    assert user.role == "user" and not user.trace and user.created_at is not None
    assert answer.role == "assistant" and answer.created_at >= user.created_at
    stored = answer.trace
    assert Trace.model_validate(stored) == yielded                  # everything the Trace tab showed
    assert set(stored["levels"]) == set(LEVEL_NAMES) and stored["thinking"] and stored["prompt"]
    assert len(stored["beams"]) == 6 and all(b["sid"].startswith("<a_") and isinstance(b["score"], float)
                                             for b in stored["beams"])
    assert stored["request"]["understood"] and "total_ms" in stored["latency_ms"]
    assert [c["item_id"] for c in stored["items"]] == answer.items and len(answer.items) == 3
    assert [c["rank"] for c in stored["items"]] == [1, 2, 3] and all(c["title"] for c in stored["items"])


def test_a_refused_turn_keeps_its_trace_on_the_user_turn(engine):
    rare = engine.facets.vocabulary[-1]
    session = engine.start_session()
    list(engine.turn(session.id, f"some {rare.lower()}", k=10, thinking=False))
    list(engine.turn(session.id, "more", k=10, thinking=False))                 # nothing unseen is left
    stored = engine.sessions.get(session.id)
    assert [t.role for t in stored.turns] == ["user", "assistant", "user"]     # still paired; shown() unchanged
    refused = stored.turns[-1].trace
    assert refused["request"]["available"] == 0 and refused["beams"] == [] and "total_ms" in refused["latency_ms"]
    export = SessionExport.model_validate_json(export_session(stored, "json"))
    assert [t.refused for t in export.turns] == [False, True] and export.turns[1].reply is None


def test_an_older_database_is_migrated_and_keeps_its_rows(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:            # chat_turns as thinkrec stored it before traces
        db.executescript("""
            CREATE TABLE chat_sessions (id VARCHAR(36) PRIMARY KEY, user_id VARCHAR(128), history JSON,
                excluded JSON, constraints JSON, created_at DATETIME, updated_at DATETIME);
            CREATE TABLE chat_turns (id INTEGER PRIMARY KEY, session_id VARCHAR(36) REFERENCES chat_sessions(id),
                role VARCHAR(16), text TEXT, items JSON, reasoning JSON, request JSON, created_at DATETIME);
            INSERT INTO chat_sessions VALUES ('s-old', 'u1', '["1","2"]', '[]', '{}', '2024-01-02 03:04:05',
                '2024-01-02 03:04:06');
            INSERT INTO chat_turns VALUES (1, 's-old', 'user', 'hi', '[]', '{}', '{}', '2024-01-02 03:04:05');
            INSERT INTO chat_turns VALUES (2, 's-old', 'assistant', 'picks', '["7"]', '{"derivation": "old"}', '{}',
                '2024-01-02 03:04:06');
        """)
    store = SessionStore(f"sqlite:///{path}")
    old = store.get("s-old")
    assert [(t.role, t.text, t.items, t.trace) for t in old.turns] == [("user", "hi", [], {}),
                                                                      ("assistant", "picks", ["7"], {})]
    assert old.history == ["1", "2"] and old.turns[0].created_at.year == 2024
    store.add_exchange("s-old", [Turn("user", "more"), Turn("assistant", "x", ["8"], trace=_trace().model_dump())])
    again = SessionStore(f"sqlite:///{path}").get("s-old")
    assert len(again.turns) == 4 and again.turns[-1].trace["turn_id"] == "t-1"
    # An export of the old turn falls back on the levels it stored and says it has no trace.
    export = SessionExport.model_validate_json(export_session(again, "json"))
    assert export.turns[0].trace is None and export.turns[0].levels == {"derivation": "old"}
    assert "No trace stored" in export_session(again, "md")


# -- export formats ------------------------------------------------------------------------------
@pytest.fixture
def session(tmp_path):
    return _stored_session(SessionStore(f"sqlite:///{tmp_path / 'sessions.db'}"))


def test_json_export_round_trips_with_levels_items_and_trace(session):
    text = export_session(session, "json")
    data = json.loads(text)
    assert data["schema_version"] == 1 and data["session_id"] == session.id and data["history_size"] == 3
    assert [h["item_id"] for h in data["history_last"]] == ["3", "2", "1"]          # newest first
    first = data["turns"][0]
    assert first["user_text"] == ATTACK and first["levels"] == LEVELS
    assert [(i["rank"], i["title"], i["year"], i["sid"], i["score"]) for i in first["items"]] == [
        (1, "Alien <Director's Cut>", 1979, "<a_1><b_2><c_3>", -1.25), (2, "Gattaca", 1997, "<a_1><b_2><c_4>", -2.5)]
    assert first["trace"]["beams"][2]["title"] == "Heat" and first["trace"]["latency_ms"]["total_ms"] == 80.5
    again = SessionExport.model_validate_json(text)
    assert again.model_dump_json(indent=2) + "\n" == text and again.turns[0].trace == _trace()


def test_markdown_export_is_a_readable_transcript(session):
    text = export_session(session, "md")
    for name in LEVEL_NAMES.values():
        assert re.search(rf"^### {name} — ", text, re.M), name
    assert "| 1 | Alien &lt;Director's Cut&gt; | 1979 | `<a_1><b_2><c_3>` | -1.2500 |" in text
    assert "### Beams" in text and "| 3 | Heat | `<a_4><b_0><c_1>` | -3.7500 |" in text
    assert "- understood: wants Comedy" in text and "total 80 ms" in text
    assert "<details><summary>Prompt</summary>" in text and "```text\n<|system|>rules" in text
    assert "<script>" not in text.split("<details>")[0] and "&lt;script&gt;alert(1)" in text
    assert "**Refused:**" in text


def test_html_export_is_self_contained_and_escapes_every_text(session):
    page = export_session(session, "html")
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert not re.search(r"https?://", page) and "<link" not in page and "@import" not in page
    assert "<script" not in page                                  # nothing runs, nothing is needed to read it
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; a 90s comedy" in page
    assert "You like Sci-Fi &lt;b&gt;a lot&lt;/b&gt;." in page and "Alien &lt;Director&#x27;s Cut&gt;" in page
    for n, name in enumerate(LEVEL_NAMES.values(), 1):
        assert f"<summary>{n}. {name} — " in page
    assert page.count("<details") == 4 and '<details class="prompt">' in page        # 3 levels + the prompt
    assert page.count('<table class="items">') == 1 and page.count('<table class="beams">') == 1
    assert "<code>&lt;a_4&gt;&lt;b_0&gt;&lt;c_1&gt;</code>" in page and "-3.7500" in page


def test_turns_stored_without_cards_take_titles_from_the_lookup(tmp_path):
    session = _stored_session(SessionStore(f"sqlite:///{tmp_path / 's.db'}"), with_cards=False)
    asked = []

    def lookup(ids):
        asked.append(sorted(ids))
        return {i: {"title": f"Item {i}", "year": 2000, "categories": ["Drama"], "sid": f"<a_{i}>"} for i in ids}

    export = SessionExport.model_validate_json(export_session(session, "json", lookup=lookup))
    assert asked == [["1", "2", "3", "7", "8"]]                    # one call for history and cards together
    assert [(i.title, i.year, i.score) for i in export.turns[0].items] == [("Item 7", 2000, -1.25),
                                                                        ("Item 8", 2000, -2.5)]
    assert export.history_last[0].title == "Item 3"
    plain = SessionExport.model_validate_json(export_session(session, "json"))       # no lookup: beams' titles
    assert [i.title for i in plain.turns[0].items] == ["Alien <Director's Cut>", "Gattaca"]
    with pytest.raises(ValueError, match="unknown trace format"):
        export_session(session, "pdf")


# -- the CLI -------------------------------------------------------------------------------------
def _cli(*args: str) -> subprocess.CompletedProcess:
    """``thinkrec`` in a subprocess; it also reports whether torch got imported."""
    code = ("import sys\nfrom app.cli import app\ntry:\n    app(sys.argv[1:], prog_name='thinkrec')\n"
            "except SystemExit as done:\n    code = done.code\nelse:\n    code = 0\n"
            "print('TORCH-LOADED' if 'torch' in sys.modules else '', file=sys.stderr)\nsys.exit(code)")
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_cli_lists_and_exports_sessions_without_the_model(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    session = _stored_session(SessionStore(f"sqlite:///{data / 'sessions.db'}"))

    listed = _cli("trace", "list", "--data", str(data), "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)[0] | {"updated_at": None} == {"id": session.id, "user_id": "u1", "turns": 3,
                                                                   "updated_at": None}
    table = _cli("trace", "list", "--data", str(data))
    assert session.id in table.stdout and "u1" in table.stdout

    out = tmp_path / "exports" / "session.html"
    done = _cli("trace", "export", session.id, "--format", "html", "--out", str(out), "--data", str(data))
    assert done.returncode == 0, done.stderr
    assert "TORCH-LOADED" not in done.stderr                      # only the session store was opened
    assert "Derivation" in out.read_text() and "&lt;script&gt;" in out.read_text()

    printed = _cli("trace", "export", session.id, "--format", "md",
                   "--sessions-url", f"sqlite:///{data / 'sessions.db'}")
    assert printed.returncode == 0 and printed.stdout.startswith(f"# thinkrec session `{session.id}`")

    unknown = _cli("trace", "export", "no-such-session", "--data", str(data))
    assert unknown.returncode != 0 and "no session 'no-such-session'" in unknown.stderr
    bad_format = _cli("trace", "export", session.id, "--format", "pdf", "--data", str(data))
    assert bad_format.returncode != 0 and "--format must be one of md, json, html" in bad_format.stderr
    missing = _cli("trace", "list", "--data", str(tmp_path / "nowhere"))
    assert missing.returncode != 0 and "no sessions database" in missing.stderr
    assert not (tmp_path / "nowhere").exists()
