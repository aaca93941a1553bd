"""A conversation that steers: constraints inside the trie, kept across turns and restarts, fresh
users, one path for app and eval, and the engine's concurrency fixes."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from engine.events import ErrorEvent, ItemsEvent, NoticeEvent, TraceEvent
from engine.prompt import NO_HISTORY_DERIVATION, NO_HISTORY_EVOLUTION


def run(engine, session_id, message, **kwargs):
    events = list(engine.turn(session_id, message, **kwargs))
    items = next((e.items for e in events if isinstance(e, ItemsEvent)), [])
    trace = next((e.trace for e in events if isinstance(e, TraceEvent)), None)
    return events, items, trace


def satisfies(item, want=(), avoid=()):
    return all(w in item.categories for w in want) and not set(avoid) & set(item.categories)


def test_a_fresh_user_gets_only_what_they_asked_for_and_it_stays(engine):
    wanted, avoided = engine.facets.vocabulary[0], engine.facets.vocabulary[2]
    session = engine.start_session()
    _, first, trace = run(engine, session.id, f"a {wanted.lower()} please", k=3)
    assert first and all(satisfies(i, [wanted]) for i in first)
    assert trace.request.understood == f"wants {wanted}" and trace.request.active == wanted
    # Fresh user: levels 1-2 say there is no history; level 3 states the request.
    assert trace.levels["derivation"] == NO_HISTORY_DERIVATION
    assert trace.levels["evolution"] == NO_HISTORY_EVOLUTION
    assert trace.levels["recommendation"].startswith(f"You asked for {wanted}")
    _, second, trace = run(engine, session.id, f"no {avoided.lower()}", k=3, thinking=False)
    assert all(satisfies(i, [wanted], [avoided]) for i in second)
    assert trace.request.active == f"{wanted}, no {avoided}"
    assert not {i.item_id for i in first} & {i.item_id for i in second}


def test_more_like_the_second_one_points_into_the_last_answer(engine):
    session = engine.start_session(user_id="u9")
    _, shown, _ = run(engine, session.id, "what should I watch?", k=4, thinking=False)
    _, _, trace = run(engine, session.id, "more like the second one", k=4, thinking=False)
    assert trace.request.understood == f"more like {shown[1].title}"
    assert trace.request.constraints["like_item"] == shown[1].item_id


def test_constraints_survive_a_restart(engine, built_dataset, tiny_checkpoint):
    from engine.engine import Engine

    wanted = engine.facets.vocabulary[0]
    session = engine.start_session(user_id="u9")
    run(engine, session.id, f"no {wanted.lower()}", k=2, thinking=False)
    restarted = Engine(built_dataset, tiny_checkpoint, sessions_url=str(engine.sessions.engine.url))
    _, items, trace = run(restarted, session.id, "what else?", k=4, thinking=False)
    assert trace.request.active == f"no {wanted}" and all(satisfies(i, avoid=[wanted]) for i in items)


def test_fewer_items_than_k_are_said_and_never_padded(engine):
    from engine.constraints import Constraints
    from engine.request import apply

    rare = engine.facets.vocabulary[-1]
    allowed = set(engine.facets.allowed_items(apply(Constraints(), engine.steps.parser.parse(f"some {rare.lower()}"))))
    session = engine.start_session()
    events, items, trace = run(engine, session.id, f"some {rare.lower()}", k=10, thinking=False)
    assert 0 < len(items) == len(allowed) < 10 and {i.item_id for i in items} == allowed
    assert any(isinstance(e, NoticeEvent) and "Only" in e.text for e in events)
    # Asked again: nothing unseen is left, the turn says so and shows nothing else.
    events, items, trace = run(engine, session.id, "more", k=10, thinking=False)
    assert not items and any(isinstance(e, ErrorEvent) and "satisfies" in e.message for e in events)
    assert trace.request.available == 0


def test_app_and_eval_give_the_same_items(engine):
    """The engine's turn and the batched Recommender.recommend (what eval and RL call) agree."""
    wanted = engine.facets.vocabulary[1]
    from engine.constraints import Constraints
    from engine.request import apply

    for thinking in (False, True):
        session = engine.start_session(user_id="u11")
        _, items, trace = run(engine, session.id, f"a {wanted.lower()}", k=5, num_beams=10, thinking=thinking)
        constraints = apply(Constraints(), engine.steps.parser.parse(f"a {wanted.lower()}"))
        (batch,) = engine.recommender.recommend([engine.dataset_history("u11")], k=10, num_beams=10,
                                                thinking=thinking, user_texts=[f"a {wanted.lower()}"],
                                                constraints=[constraints])
        assert [i.item_id for i in items] == [str(r.item_id) for r in batch.items][:5]
        if thinking:
            # The trace shows each cited span as its title; the batch keeps the raw spans.
            assert trace.levels == {name: engine.steps.render(text) for name, text in batch.levels.items()}


def test_two_feedback_clicks_at_once_both_land(engine):
    session = engine.start_session(user_id="u12")
    _, items, _ = run(engine, session.id, None, k=6, thinking=False)
    ids = [i.item_id for i in items]
    barrier = threading.Barrier(len(ids))

    def click(item_id, kind):
        barrier.wait()
        engine.feedback(session.id, item_id, kind)

    with ThreadPoolExecutor(max_workers=len(ids)) as pool:
        list(pool.map(click, ids, ["like", "dislike"] * (len(ids) // 2)))
    state = engine.sessions.get(session.id)
    assert set(ids[0::2]) <= set(state.history) and set(ids[1::2]) <= set(state.excluded)


def test_a_second_turn_in_a_busy_session_is_refused_not_queued(engine):
    """Two turns at once in one session: one answers, the other is told the session is busy at once
    (a queued turn would hold a serving thread). The next turn then sees what the first showed."""
    session = engine.start_session(user_id="u13")
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = list(pool.map(lambda _: list(engine.turn(session.id, None, thinking=False, k=4)), range(2)))
    busy = [r for r in runs if any(isinstance(e, ErrorEvent) and e.code == "busy" for e in r)]
    answered = [r for r in runs if any(isinstance(e, ItemsEvent) for e in r)]
    assert len(answered) >= 1 and len(busy) + len(answered) == 2
    first = {i.item_id for e in answered[0] if isinstance(e, ItemsEvent) for i in e.items}
    _, items, _ = run(engine, session.id, None, k=4, thinking=False)
    assert len(items) == 4 and not first & {i.item_id for i in items}


def test_a_slow_reader_does_not_hold_its_session(engine):
    """A client that reads one event and stops: the turn still finishes on its own thread, the
    session is free again, and the exchange is stored."""
    session = engine.start_session(user_id="u14")
    reader = engine.turn(session.id, None, thinking=False, k=3)
    next(reader)                                       # a client that stalls after the first event
    deadline = time.time() + 60
    while len(engine.sessions.get(session.id).turns) < 2 and time.time() < deadline:
        time.sleep(0.05)
    assert len(engine.sessions.get(session.id).turns) == 2
    _, items, _ = run(engine, session.id, None, k=3, thinking=False)
    assert len(items) == 3
    reader.close()


def test_a_failing_turn_fails_alone_and_says_so(engine, monkeypatch):
    session, other = engine.start_session(user_id="u15"), engine.start_session(user_id="u16")
    real = engine.steps.rank

    def flaky(turn):
        if turn.session.id == session.id:
            raise RuntimeError("boom")
        return real(turn)
    monkeypatch.setattr(engine.steps, "rank", flaky)
    events = list(engine.turn(session.id, None, thinking=False, k=3))
    error = next(e for e in events if isinstance(e, ErrorEvent))
    assert error.code == "failed" and "RuntimeError" in error.message and "boom" not in error.message
    assert len(engine.sessions.get(session.id).turns) == 0
    _, items, _ = run(engine, other.id, None, k=3, thinking=False)
    assert len(items) == 3
    monkeypatch.setattr(engine.steps, "rank", real)
    _, items, _ = run(engine, session.id, None, k=3, thinking=False)     # the session is free again
    assert len(items) == 3


def test_generation_settings_do_not_come_from_the_checkpoint(engine):
    """A checkpoint whose generation_config asks for top_k / beams changes nothing: every setting
    is passed explicitly (the gates would otherwise pair with the wrong rows)."""
    model = engine.recommender.model
    prompt = engine.recommender.prompt_ids(engine.dataset_history("u14"), None, (), thinking=True)
    before = engine.recommender.backend.generate_reasoning([prompt], [set()], 24)
    saved = (model.generation_config.top_k, model.generation_config.num_beams)
    model.generation_config.top_k, model.generation_config.num_beams = 2, 3
    try:
        after = engine.recommender.backend.generate_reasoning([prompt], [set()], 24)
    finally:
        model.generation_config.top_k, model.generation_config.num_beams = saved
    assert before == after


def test_the_auto_budget_reasons_only_under_a_request(engine):
    """"auto": no request is answered directly, whatever the history's length (the user with the
    longest history here), and a notice says so; a request is reasoned about."""
    from engine.events import NoticeEvent, TraceEvent

    user = max(engine.user_histories, key=lambda u: len(engine.user_histories[u]))

    def thought(text):
        session = engine.start_session(user_id=user)
        events = list(engine.turn(session.id, text, k=3, budget="auto"))
        trace = next(e.trace for e in events if isinstance(e, TraceEvent))
        said = [e.text for e in events if isinstance(e, NoticeEvent)]
        return trace.thinking, trace.levels, said

    plain, levels, said = thought(None)
    assert plain is False and not levels.get("derivation")
    assert any("answers directly" in text for text in said)
    wanted = engine.facets.vocabulary[0]
    asked, levels, said = thought(f"a {wanted.lower()} please")
    assert asked is True and levels["recommendation"].startswith(f"You asked for {wanted}")
    assert not any("answers directly" in text for text in said)


def test_two_processes_writing_one_sessions_constraints_lose_neither(engine, built_dataset, tiny_checkpoint,
                                                                     monkeypatch):
    """Constraints are read when a turn starts and written when it ends. A second engine on the same
    sessions database (another process) writes "no <avoided>" while this engine's turn for
    "<wanted> please" is running: the write is a compare-and-swap on the version, so this turn's
    save finds the newer constraints, merges its request into them, and both stay active."""
    from engine.engine import Engine
    from engine.sessions import ConstraintConflict

    wanted, avoided = engine.facets.vocabulary[0], engine.facets.vocabulary[2]
    other = Engine(built_dataset, tiny_checkpoint, sessions_url=str(engine.sessions.engine.url))
    session = engine.start_session(user_id="u9")
    rank = engine.steps.rank

    def meanwhile(turn):
        run(other, session.id, f"no {avoided.lower()}", k=2, thinking=False)
        return rank(turn)

    monkeypatch.setattr(engine.steps, "rank", meanwhile)
    run(engine, session.id, f"a {wanted.lower()} please", k=2, thinking=False)
    monkeypatch.undo()
    stored = engine.sessions.get(session.id, traces=False)
    assert wanted in [c for group in stored.constraints.want for c in group]
    assert avoided in stored.constraints.avoid
    assert stored.constraints_version == 2 and len(stored.turns) == 4
    # At the store: a write that names a stale version stores nothing and says why.
    stale = stored.constraints_version - 1
    with pytest.raises(ConstraintConflict, match="changed since version"):
        engine.sessions.add_exchange(session.id, [], stored.constraints.model_copy(update={"avoid": []}),
                                     read_version=stale)
    assert engine.sessions.get(session.id).constraints == stored.constraints


def test_a_turn_in_an_unknown_session_says_which_session(engine):
    events = list(engine.turn("no-such-session", "hi"))
    assert [type(e) for e in events] == [ErrorEvent] and events[0].message == "no session 'no-such-session'"
