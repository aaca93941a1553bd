"""Grounded by construction: reasoning can cite only the history the prompt shows, each item once,
and people see each citation as its catalog title."""

from __future__ import annotations

import re

import pytest
import torch

from engine.prompt import render_spans
from engine.sid import ITEM_BEGIN, ITEM_END, sid_string

SPAN = re.compile(re.escape(ITEM_BEGIN) + r"(.*?)" + re.escape(ITEM_END))


def test_reasoning_cites_only_the_shown_history(engine):
    rec = engine.recommender
    history = engine.dataset_history("u15")
    shown = rec.shown_history(history)
    # The prompt opens level 1 and an item span at once, so the model must cite something now.
    prompt = rec.prompt_ids(history, None, (), thinking=True) + [engine.tokenizer.item_begin_id]
    torch.manual_seed(0)
    outs = rec.backend.generate_reasoning([prompt] * 8, [set()] * 8, max_new_tokens=40, sample=True,
                                          temperature=1.5, cites=[shown] * 8)
    cited_any = 0
    for out in outs:
        tokens = [engine.tokenizer.item_begin_id] + out
        cited, current = [], None
        for token in tokens:
            if token == engine.tokenizer.item_begin_id:
                current = []
            elif token == engine.tokenizer.item_end_id and current is not None:
                item = rec.trie.lookup(current)
                if item is not None:
                    cited.append(item)
                current = None
            elif current is not None:
                current.append(token)
        assert set(cited) <= shown and len(cited) == len(set(cited)), (cited, shown)
        cited_any += bool(cited)
    assert cited_any > 0            # the forced span completed at least in some samples


def test_a_turn_shows_citations_as_titles(engine):
    session = engine.start_session(user_id="u16")
    events = list(engine.turn(session.id, None, k=3))
    levels = next(e.trace for e in events if e.type == "trace").levels
    text = levels["derivation"] + levels["evolution"]
    assert ITEM_BEGIN not in text and "<a_" not in text           # spans are rendered, never raw tokens


def test_render_spans_holds_back_a_span_in_progress():
    label = {sid_string((1, 2, 3)): "Alien (1979)"}.get
    done = f"Interests: (1) Sci-Fi: {ITEM_BEGIN}<a_1><b_2><c_3>{ITEM_END}."
    assert render_spans(done, label) == "Interests: (1) Sci-Fi: Alien (1979)."
    assert render_spans(f"Interests: (1) Sci-Fi: {ITEM_BEGIN}<a_1><b_2>", label) == "Interests: (1) Sci-Fi: "


def test_items_follow_level_three_as_a_soft_prior(engine):
    """A weight re-ranks the beams toward what level 3 states; 0 keeps the model's order."""
    from engine.decoding import RankedItem

    rec = engine.recommender
    category = engine.facets.vocabulary[0]
    carrying = [i for i in engine.facets.item_ids if category in engine.facets.categories_of(i)][:2]
    other = [i for i in engine.facets.item_ids if category not in engine.facets.categories_of(i)][:2]
    beams = [RankedItem(other[0], -1.0, ()), RankedItem(other[1], -1.5, ()),
             RankedItem(carrying[0], -2.0, ()), RankedItem(carrying[1], -4.0, ())]
    level3 = f"Serve (1) something. Next item: {category}."
    assert rec.ranker.follow(beams, level3, 0.0) == beams
    followed = rec.ranker.follow(beams, level3, 1.5)
    assert [b.item_id for b in followed] == [carrying[0], other[0], other[1], carrying[1]]
    # The bonus is part of the score shown, so scores fall with the rank.
    assert [b.score for b in followed] == pytest.approx([-0.5, -1.0, -1.5, -2.5])
    assert rec.ranker.follow(beams, "No clear interest.", 5.0) == beams       # nothing stated: nothing moves


def test_race_merges_two_rankings_by_rank():
    from engine.decoding import RankedItem
    from engine.ranking import race

    a = [RankedItem(x, -i, ()) for i, x in enumerate("ABCD")]
    b = [RankedItem(x, -i, ()) for i, x in enumerate("EBFA")]
    # Best rank first (A and E are both first; A has the smaller rank sum... tie on min rank 0:
    # A 0+3, E 4+0 -> A first), then B (1 in both), then C/F (2), then D.
    assert [i.item_id for i in race(a, b, 6)] == ["A", "E", "B", "C", "F", "D"]


def test_thinking_mode_ranks_beams_of_both_contexts_within_the_constraints(engine):
    """Every thinking rank returns k distinct items that satisfy the request and skip the history;
    ``reasoned`` keeps the reasoned beams' own order; ``fused`` scores add up both contexts."""
    from engine.constraints import Constraints
    from engine.ranking import ThinkRank

    rec = engine.recommender
    history = engine.dataset_history("u15")
    category = engine.facets.vocabulary[0]
    wanted = Constraints(want=[[category]])
    expected = min(5, rec.available(wanted, set(history)))
    assert expected >= 2
    out = {}
    # The sums below are the views' own scores: no transitions prior, no soft prior toward level 3.
    weight, rec.ranker.prior_weight = rec.ranker.prior_weight, 0.0
    for mode in ("reasoned", "race", "fused"):
        answer = rec.recommend([history], k=5, num_beams=10, thinking=True, constraints=[wanted],
                               max_reasoning_tokens=24, think_rank=ThinkRank(mode, 1.0, 0.0), follow_weight=0.0)[0]
        ids = [i.item_id for i in answer.items]
        assert len(ids) == len(set(ids)) == expected and not set(ids) & set(history)
        assert all(category in engine.facets.categories_of(i) for i in ids)
        out[mode] = answer
    # Fused (weight 1, no contrast): each item's score is its direct score plus its reasoned score.
    direct = rec.recommend([history], k=5, num_beams=10, thinking=False, constraints=[wanted])[0]
    rec.ranker.prior_weight = weight
    reasoned = {i.item_id: i.score for i in out["reasoned"].items}
    plain = {i.item_id: i.score for i in direct.items}
    both = [i for i in out["fused"].items if i.item_id in reasoned and i.item_id in plain]
    assert both
    for item in both:
        assert abs(item.score - (reasoned[item.item_id] + plain[item.item_id])) < 1e-3


def test_a_film_listed_twice_is_cited_once(engine, monkeypatch):
    """ML-100K lists a few films under two ids; the reasoning may cite such a film only once, by
    its latest id in the history (Catalog.duplicates finds them; here two history items are
    declared one film)."""
    rec = engine.recommender
    history = engine.dataset_history("u15")
    shown = [i for i in history if i in rec.sid_codes][-rec.history_items:]
    first, second = shown[0], shown[-1]
    monkeypatch.setattr(rec, "same_item", {first: first, second: first})
    cite = rec.shown_history(history)
    assert second in cite and first not in cite and len(cite) == len(set(shown)) - 1
    assert rec.planner.plan(history, None).cite == cite


def test_two_history_views_rank_within_the_constraints(engine, monkeypatch):
    """Non-thinking mode with a second, recent view: k distinct items that satisfy the request and
    skip the history, each scored as its full-prompt score plus the weighted recent-view score."""
    from engine.constraints import Constraints

    rec = engine.recommender
    history = engine.dataset_history("u15")
    category = engine.facets.vocabulary[0]
    wanted = Constraints(want=[[category]])
    monkeypatch.setattr(rec.ranker, "prior_weight", 0.0)     # the views' own scores, no transitions prior
    one_view = rec.recommend([history], k=5, num_beams=10, constraints=[wanted])[0]
    recent = rec.recommend([history[-3:]], k=10, num_beams=10, constraints=[wanted], exclude=[set(history)])[0]
    monkeypatch.setattr(rec.ranker, "recent_view", 3)
    monkeypatch.setattr(rec.ranker, "recent_weight", 1.0)
    two_views = rec.recommend([history], k=5, num_beams=10, constraints=[wanted])[0]
    ids = [i.item_id for i in two_views.items]
    assert len(ids) == len(set(ids)) == min(5, rec.available(wanted, set(history))) and not set(ids) & set(history)
    assert all(category in engine.facets.categories_of(i) for i in ids)
    assert [i.score for i in two_views.items] == sorted((i.score for i in two_views.items), reverse=True)
    full, short = {i.item_id: i.score for i in one_view.items}, {i.item_id: i.score for i in recent.items}
    both = [i for i in two_views.items if i.item_id in full and i.item_id in short]
    assert both
    for item in both:
        assert abs(item.score - (full[item.item_id] + short[item.item_id])) < 1e-3


def test_levels_one_and_two_are_read_from_the_long_history(engine):
    """With a reader the engine writes levels 1-2 over the whole history (beyond the prompt's
    window), true by recount; the model writes level 3; an active request is served by an interest
    that fits it, or level 3 says none does."""
    from engine.constraints import Constraints
    from engine.interests import check_trends

    rec = engine.recommender
    assert rec.planner.reader is not None and rec.planner.read_levels
    history = list(rec.sid_codes)[:rec.history_items + 10]     # longer than the prompt's window
    reading = rec.planner.reader.read(history)
    [answer] = rec.recommend([history], k=5, thinking=True)
    assert answer.levels["evolution"] == reading.evolution.strip()
    statements, true = check_trends(reading.derivation, reading.evolution, history, rec.planner.reader.items)
    assert statements == true > 0
    cited = {i for it in reading.interests for i in it.evidence_ids}
    assert cited <= set(history)
    # Level 3 is the model's, after the engine's levels.
    assert "Next item:" in answer.levels["recommendation"]
    wanted = rec.facets.vocabulary[0]
    constraints = Constraints(want=[[wanted]])
    [steered] = rec.recommend([history], k=5, thinking=True, constraints=[constraints])
    level3 = steered.levels["recommendation"]
    assert level3.startswith(f"You asked for {wanted}")
    fits = [n + 1 for n, it in enumerate(reading.interests) if wanted in it.categories]
    if fits:
        assert any(f"serve it through ({n}) " in level3 for n in fits), level3
    else:
        assert "none of the interests fits, so serve the request alone." in level3, level3


def test_level_three_states_the_predicted_category_through_an_interest_that_carries_it(engine):
    """Without a request, level 3 serves the interest carrying the predicted next category and names
    that category first; under a request that names no category ("nothing older than 1990"), the
    first category comes from the interest it serves, so level 3 never serves one thing and states
    another. The model's own choice stays an option (``lead_next = False``)."""
    from engine.constraints import Constraints
    from engine.interests import next_categories
    from training.reasoning_metrics import ReasoningScorer

    rec = engine.recommender
    planner = rec.planner
    assert planner.reader.transitions is not None        # read from the dataset's training split
    history = list(rec.sid_codes)[:30]
    predicted = next_categories(planner.reader.items, planner.reader.transitions, history)
    reading = planner.reader.read(history)
    [answer] = rec.recommend([history], k=5, thinking=True)
    level3 = answer.levels["recommendation"]
    assert f"Next item: {predicted[0]}" in level3, level3
    served = re.match(r"Serve \((\d+)\) ", level3)
    if served:
        assert predicted[0] in reading.interests[int(served.group(1)) - 1].categories
    else:
        assert level3.startswith(f"The latest items lead to {predicted[0]}, which no interest names"), level3

    newer = Constraints(year_min=1990)
    [steered] = rec.recommend([history], k=5, thinking=True, constraints=[newer])
    level3 = steered.levels["recommendation"]
    served = re.search(r"serve(?: it through)? \((\d+)\) ", level3)
    if served:
        interest = reading.interests[int(served.group(1)) - 1]
        stated = level3.split("Next item: ", 1)[1]
        assert stated.split(",")[0].split(".")[0].strip() in interest.categories, level3
    # Avoiding the predicted category: the lead moves to one the request allows.
    avoiding = Constraints(year_min=1990, avoid=[predicted[0]])
    [avoided] = rec.recommend([history], k=5, thinking=True, constraints=[avoiding])
    scorer = ReasoningScorer(dict(planner.reader.items), {})
    assert scorer.contradiction(avoided.levels, avoiding) is False, avoided.levels
    assert f"Next item: {predicted[0]}" not in avoided.levels["recommendation"]

    planner.lead_next = False
    try:
        assert planner.plan(history, None).statement == []          # the model writes its own sentence
    finally:
        planner.lead_next = True


class _WriterTokens:
    """Just the tokenizer surface ReasoningWriter uses: "." is one token (7), other words are 8."""
    think_end_id, end_id, item_begin_id, item_end_id = 1, 2, 3, 4

    def __init__(self):
        from engine.tokenizer import EVOLUTION, RECOMMENDATION

        self.ids = {RECOMMENDATION: 5, EVOLUTION: 6}

    def encode(self, text, trusted=False):
        return [7] if text == "." else [8] * len(text.split())


class _ScriptedBackend:
    """Level 3 is one sentence that ends at its period, or (``runaway``) words until the budget ends."""
    def __init__(self, runaway: bool):
        self.runaway = runaway

    def generate_reasoning(self, contexts, excludes, budget, sample=False, temperature=1.0, batch_size=1,
                           stop_ids=None, cites=None):
        return [[9] * budget if self.runaway else [9, 9, 7] for _ in contexts]


@pytest.mark.parametrize("runaway", [False, True])
def test_reasoning_closes_when_level3_ends_and_not_when_the_cap_cuts_it(runaway):
    """Under engine-written levels, level 3 stops at its period: that is a finished reasoning and
    closes with </think> (RL's format reward and rejection sampling read this); one the cap cut
    does not. An engine-written level 3 (a request's statement) closes too."""
    from engine.reasoning import ReasoningPlan, ReasoningWriter

    tok = _WriterTokens()
    writer = ReasoningWriter(tok, _ScriptedBackend(runaway), slots=None, next_opener=[])
    prefix = [8, 8, 6, 8]                      # level 1, the evolution marker, level 2
    own = ReasoningPlan(prefix=prefix, levels_written=True, min_tokens=len(prefix) + 4, room=4)
    stated = ReasoningPlan(prefix=prefix, statement=[8, 8], levels_written=True, min_tokens=len(prefix) + 4,
                           room=4, statement_room=3)
    [mine, written] = writer.batch([[0], [0]], [own, stated], 30, sample=False, temperature=1.0, batch_size=2)
    assert (mine[-1] == tok.think_end_id) is not runaway and len(mine) <= 30
    assert written[-1] == tok.think_end_id and written.count(tok.think_end_id) == 1
