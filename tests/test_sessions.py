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


def test_sessions_are_retained_by_a_policy(tmp_path, monkeypatch):
    """Untouched for the TTL, or beyond the maximum count (least recently updated first), a session
    goes with its turns and feedback; creating sessions applies the policy on its own."""
    from datetime import timedelta

    import engine.sessions as sessions

    store = SessionStore(f"sqlite:///{tmp_path / 's.db'}", max_sessions=3, ttl_days=1)
    old = store.create()
    store.add_turn(old.id, Turn("user", "hi"))
    store.feedback(old.id, "7", "dislike")
    from sqlalchemy import update
    from sqlalchemy.orm import Session

    with Session(store.engine) as db, db.begin():          # last touched two days ago
        db.execute(update(sessions.SessionRow).where(sessions.SessionRow.id == old.id)
                   .values(updated_at=sessions._now() - timedelta(days=2)))
    kept = [store.create() for _ in range(3)]
    assert store.prune() == 1
    with pytest.raises(KeyError):
        store.get(old.id)
    assert store.feedback_of(old.id) == []
    newest = store.create()
    assert store.prune() == 1                       # four fresh ones, three allowed: the oldest goes
    with pytest.raises(KeyError):
        store.get(kept[0].id)
    assert store.get(newest.id).id == newest.id
    monkeypatch.setattr(sessions, "PRUNE_EVERY", 2)
    for _ in range(6):
        store.create()
    assert len(store.recent(limit=100)) <= 4        # bounded while creating, pruned every 2


def test_the_hot_path_reads_turns_without_their_traces(tmp_path):
    store = SessionStore(f"sqlite:///{tmp_path / 't.db'}")
    session = store.create()
    store.add_turn(session.id, Turn("assistant", "x", items=["1"], trace={"turn_id": "t", "prompt": "p" * 1000}))
    assert store.get(session.id).turns[0].trace["turn_id"] == "t"
    light = store.get(session.id, traces=False).turns[0]
    assert light.trace == {} and light.items == ["1"]
