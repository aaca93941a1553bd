"""Sessions persist in SQL across store instances (an app restart), stay isolated, and feedback
changes what the next turn may recommend."""

from __future__ import annotations

import pytest

from engine.events import Event, ItemCard, ItemsEvent, ReasoningDelta
from engine.sessions import SessionStore, Turn


def test_sessions_survive_a_restart_and_stay_isolated(tmp_path):
    url = f"sqlite:///{tmp_path / 'app.db'}"
    store = SessionStore(url)
    alice = store.create(user_id="1", history=["10", "20"])
    bob = store.create()
    store.add_turn(alice.id, Turn("user", "a 90s comedy"))
    store.add_turn(alice.id, Turn("assistant", "Try these", items=["30", "40"], reasoning={"derivation": "x"}))
    store.feedback(alice.id, "30", "like")
    store.feedback(alice.id, "40", "dislike")

    restarted = SessionStore(url)                  # a new process opening the same database
    again = restarted.get(alice.id)
    assert again.history == ["10", "20", "30"] and again.excluded == ["40"]
    assert [(t.role, t.text, t.items) for t in again.turns] == [
        ("user", "a 90s comedy", []), ("assistant", "Try these", ["30", "40"])]
    assert again.turns[1].reasoning == {"derivation": "x"}
    other = restarted.get(bob.id)
    assert other.history == [] and other.turns == [] and other.excluded == []


def test_like_after_dislike_moves_the_item_back(tmp_path):
    store = SessionStore(f"sqlite:///{tmp_path / 'app.db'}")
    session = store.create()
    store.feedback(session.id, "7", "dislike")
    after = store.feedback(session.id, "7", "like")
    assert after.excluded == [] and after.history == ["7"]


def test_bad_feedback_and_unknown_session(tmp_path):
    store = SessionStore(f"sqlite:///{tmp_path / 'app.db'}")
    session = store.create()
    with pytest.raises(ValueError, match="like"):
        store.feedback(session.id, "7", "love")
    with pytest.raises(KeyError, match="no session"):
        store.get("nope")
    assert store.get(session.id).history == []      # nothing changed by the bad call


def test_events_round_trip_through_json():
    from pydantic import TypeAdapter

    adapter = TypeAdapter(list[Event])
    events = [ReasoningDelta(level="evolution", text="recent burst"),
              ItemsEvent(items=[ItemCard(rank=1, item_id="50", title="Star Wars", year=1977, sid="<a_1><b_2><c_3>", score=-1.5)])]
    again = adapter.validate_json(adapter.dump_json(events))
    assert again == events and isinstance(again[1], ItemsEvent)
