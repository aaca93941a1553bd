"""Vocabulary slots: where the reasoning names an interest, a trend or the next item's attributes,
only the catalog's words fit, names never repeat within a trace, and each interest's evidence
cites history items that carry its name."""

from __future__ import annotations

import re

import torch

from engine.slots import SlotGrammar
from engine.tokenizer import DERIVATION, EVOLUTION, RECOMMENDATION


def _walk(state, tokenizer, text: str) -> None:
    for token in tokenizer.encode(text, trusted=False):
        state.advance(token)


def _spell(state, path) -> bool:
    """Whether the open slot accepts ``path`` token by token (a copy of the state is not needed:
    callers spell one path per fresh state)."""
    for token in path:
        allowed = state.allowed()
        if allowed is None or token not in allowed:
            return False
        state.advance(token)
    return True


def _open_level(tokenizer, grammar, cite=None):
    state = grammar.state(cite)
    state.advance(tokenizer.ids[DERIVATION])
    return state


def test_interest_names_come_from_the_history_and_never_repeat(engine):
    tok, grammar = engine.tokenizer, engine.recommender.slots
    history = engine.recommender.shown_history(engine.dataset_history("u15"))
    supported, fits = grammar.supported_names(sorted(history))
    assert supported and "mixed" in supported
    unsupported = sorted(set(grammar.names.items) - supported)
    assert unsupported, "the themed catalog has names this history cannot support"

    state = _open_level(tok, grammar, history)
    _walk(state, tok, "Interests: (1)")
    first = state.allowed()
    assert first is not None                         # a name slot is open after "(1)"
    name = sorted(supported)[0]
    assert _spell(state, grammar.names.path(name))
    assert state.names == {1: name} and state.allowed() is None      # ":" closed the slot: free text
    assert set(state.scope) == set(fits[name])       # its evidence: history items that fit the name

    # The same name is not offered to the next interest; an unsupported one never is.
    _walk(state, tok, ". (2)")
    assert state.scope is None
    again = grammar.state(history)
    again.advance(tok.ids[DERIVATION])
    _walk(again, tok, "Interests: (1)")
    assert not _spell(again, grammar.names.path(unsupported[0]))
    assert not _spell(state, grammar.names.path(name))


def test_level_three_copies_the_served_name_and_states_vocabulary_attributes(engine):
    tok, grammar = engine.tokenizer, engine.recommender.slots
    history = engine.recommender.shown_history(engine.dataset_history("u15"))
    supported, _ = grammar.supported_names(sorted(history))
    name = sorted(supported)[-1]
    state = _open_level(tok, grammar, history)
    _walk(state, tok, "Interests: (1)")
    assert _spell(state, grammar.names.path(name))
    state.advance(tok.ids[EVOLUTION])
    _walk(state, tok, "(1)")
    trends = state.allowed()
    assert trends and _spell(state, tok.encode(" growing,", trusted=False))
    state.advance(tok.ids[RECOMMENDATION])
    _walk(state, tok, "Serve (1)")
    assert state.allowed() == [grammar.name_paths[name][0]]   # only interest (1)'s own name fits
    assert _spell(state, grammar.name_paths[name])
    assert state.allowed() is None

    category = engine.facets.vocabulary[0]
    _walk(state, tok, ", the lasting interest. Next item:")
    assert state.allowed() is not None
    assert not _spell(grammar.state(), tok.encode(" Nonsense,", trusted=False))
    assert _spell(state, tok.encode(f" {category},", trusted=False))
    # The category just stated is not offered again; the list ends with a decade or a full stop.
    again_first = tok.encode(f" {category}", trusted=False)[0]
    assert state.allowed() is not None and again_first not in state.allowed()
    year = next(y for y in (engine.facets.year_of(i) for i in engine.facets.item_ids) if y is not None)
    assert _spell(state, tok.encode(f" {year // 10 * 10}s.", trusted=False))
    assert state.stated == [category, f"{year // 10 * 10}s"] and state.allowed() is None


def test_generated_reasoning_names_only_supported_interests(engine):
    """Sampling hot from the barely trained model: whatever it writes, the names after "(k)" in
    level 1 are supported by the history, distinct, and each interest cites items that fit it."""
    rec, tok = engine.recommender, engine.tokenizer
    history = engine.dataset_history("u15")
    shown = rec.shown_history(history)
    supported, fits = rec.slots.supported_names(sorted(shown))
    prompt = rec.prompt_ids(history, None, (), thinking=True) + tok.encode("Interests: (1)", trusted=False)
    torch.manual_seed(0)
    outs = rec.backend.generate_reasoning([prompt] * 6, [set()] * 6, max_new_tokens=60, sample=True,
                                          temperature=1.5, cites=[shown] * 6)
    label = {}
    for item in shown:
        label[tuple(rec.trie.path(item))] = item
    for out in outs:
        text = tok.decode(out)
        name = re.match(r"\s*(.+?):", text).group(1)         # the prompt opened the first name slot
        assert name in supported, text
        names = [name] + re.findall(r"\(\d\) ([^:<>()]+?):", text[len(name) + 1:].split("<|evolution|>")[0])
        assert len(names) == len(set(names)), text
        # Citations right after the first name fit that name.
        first_interest = out[:next((i for i, t in enumerate(out) if tok.decode([t]) == "."), len(out))]
        cited, current = [], None
        for token in first_interest:
            if token == tok.item_begin_id:
                current = []
            elif token == tok.item_end_id and current is not None:
                cited.append(label.get(tuple(current)))
                current = None
            elif current is not None:
                current.append(token)
        assert all(item in fits[name] for item in cited), (text, cited)


def test_the_grammar_travels_to_the_vllm_server_unchanged(engine, tmp_path):
    """The server rebuilds the grammar from the catalog file and allows exactly the same tokens."""
    from engine.serving.vllm_trie import TrieSpec, write_trie_spec

    rec, tok = engine.recommender, engine.tokenizer
    spec = TrieSpec(write_trie_spec(tmp_path / "trie.json", tok, rec.sid_codes, "fp", facets=engine.facets,
                                    slots=rec.slots))
    history = sorted(rec.shown_history(engine.dataset_history("u15")))
    here, there = rec.slots.state(history), spec.slots.state(history)
    text = "Interests: (1)"
    for state, grammar in ((here, rec.slots), (there, spec.slots)):
        state.advance(tok.ids[DERIVATION])
        _walk(state, tok, text)
    assert sorted(here.allowed()) == sorted(there.allowed())
    assert isinstance(spec.slots, SlotGrammar) and spec.slots.catalog is spec.trie


def test_every_trace_ends_with_a_statement_the_items_can_follow(engine):
    """The whole staged reasoning, sampled hot from the barely trained model: each level opens once
    and in order, level 3 cites nothing, and it always states a catalog category or decade that
    the engine reads back (the engine writes "Next item:" when the model leaves it out)."""
    from engine.prompt import stated_attributes

    rec, tok = engine.recommender, engine.tokenizer
    histories = [engine.dataset_history(u) for u in ("u15", "u3", "u7", "u21")]
    torch.manual_seed(1)
    answers = rec.recommend(histories, k=5, num_beams=8, thinking=True, sample=True, temperature=1.6,
                            max_reasoning_tokens=96)
    openers = [tok.ids[DERIVATION], tok.ids[EVOLUTION], tok.ids[RECOMMENDATION]]
    for answer in answers:
        ids = answer.prompt_ids[-1:] + answer.reasoning_ids        # the prompt opened level 1
        seen = [t for t in ids if t in openers]
        assert seen == openers, tok.decode(ids)
        level3 = ids[ids.index(openers[2]):]
        assert tok.item_begin_id not in level3, tok.decode(level3)
        categories, decade = stated_attributes(answer.levels["recommendation"], rec.ranker.vocabulary)
        assert categories or decade is not None, answer.levels["recommendation"]


def test_level_three_prior_reaches_past_the_top_k(engine):
    """The prior re-ranks every candidate, so a strong one fills the top k with items that carry
    what level 3 states whenever the candidates hold that many (0 keeps the model's order)."""
    from engine.prompt import stated_attributes

    rec = engine.recommender
    history = engine.dataset_history("u15")
    (plain,) = rec.recommend([history], k=5, num_beams=20, thinking=True, follow_weight=0.0, follow_share=0.0)
    (strong,) = rec.recommend([history], k=5, num_beams=20, thinking=True, follow_weight=100.0, follow_share=0.0,
                              reasoning=[plain.reasoning_ids])
    assert [i.item_id for i in plain.items] == [i.item_id for i in plain.candidates[:5]]
    categories, decade = stated_attributes(plain.levels["recommendation"], rec.ranker.vocabulary)

    def carries(item) -> bool:
        year = engine.facets.year_of(str(item.item_id))
        return bool(set(engine.facets.categories_of(str(item.item_id))) & set(categories)) or (
            decade is not None and year is not None and year // 10 * 10 == decade)

    following = [i for i in plain.candidates if carries(i)]
    assert len(plain.candidates) > 5
    assert sum(map(carries, strong.items)) == min(5, len(following))
    assert {i.item_id for i in strong.items} <= {i.item_id for i in plain.candidates}


def test_the_share_floor_keeps_the_models_order_within_its_allowance(engine):
    """share 0.8 of 5 shown: one item that carries nothing stated may stay in the top 5 (the first
    such, in the model's order); the next ones move below, and carrying items keep their order."""
    from engine.decoding import RankedItem

    rec, facets = engine.recommender, engine.facets
    category = facets.vocabulary[0]
    carrying = [i for i in facets.item_ids if category in facets.categories_of(i)]
    other = [i for i in facets.item_ids if category not in facets.categories_of(i)]
    order = [other[0], carrying[0], other[1], carrying[1], other[2], carrying[2], carrying[3], carrying[4]]
    items = [RankedItem(i, -float(n), ()) for n, i in enumerate(order)]
    said = f"Serve (1) x. Next item: {category}."
    followed = [i.item_id for i in rec.ranker.follow(items, said, share=0.8, shown=5)]
    assert followed[:5] == [other[0], carrying[0], carrying[1], carrying[2], carrying[3]]
    assert sorted(followed) == sorted(order)                      # nothing lost, only moved
    assert [i.item_id for i in rec.ranker.follow(items, said)] == order     # neither way asked: the model's order
    assert [i.item_id for i in rec.ranker.follow(items, "Serve (1) x.", share=1.0, shown=5)] == order   # nothing stated


def test_level_three_states_the_request_first(engine):
    """Under a request, "Next item:" states what was asked (the engine writes those pieces, the
    model may add to them), in the batched path and in a streamed app turn alike."""
    from engine.constraints import Constraints
    from engine.prompt import stated_attributes

    rec = engine.recommender
    comedy_90s = Constraints(want=[["Comedy"]], year_min=1990, year_max=1999)
    torch.manual_seed(2)
    answers = rec.recommend([engine.dataset_history(u) for u in ("u15", "u3", "u7")], k=5, num_beams=8,
                            thinking=True, sample=True, temperature=1.6, max_reasoning_tokens=96,
                            constraints=[comedy_90s] * 3)
    for answer in answers:
        categories, decade = stated_attributes(answer.levels["recommendation"], rec.ranker.vocabulary)
        assert "Comedy" in categories and decade == 1990, answer.levels["recommendation"]
        assert answer.levels["recommendation"].count("Next item:") == 1

    # Only a category asked for: it comes first and the model goes on with the list.
    only = Constraints(want=[["Comedy"]])
    (answer,) = rec.recommend([engine.dataset_history("u15")], k=5, num_beams=8, thinking=True, constraints=[only])
    categories, _ = stated_attributes(answer.levels["recommendation"], rec.ranker.vocabulary)
    assert categories[:1] == ["Comedy"], answer.levels["recommendation"]

    session = engine.start_session(user_id="u16")
    events = list(engine.turn(session.id, "a 90s comedy please", k=3))
    levels = next(e.trace for e in events if e.type == "trace").levels
    categories, decade = stated_attributes(levels["recommendation"], rec.ranker.vocabulary)
    assert "Comedy" in categories and decade == 1990, levels["recommendation"]


def test_level_three_copies_names_that_begin_one_another():
    """Two interests named "Comedy, 1980s" and "Comedy, 1980s-1990s": the copy trie keeps the
    longer name instead of failing the turn (a trie cannot hold a path and its extension)."""
    import pytest

    from engine.sid import SIDTrie
    from engine.slots import copyable

    paths = {"Comedy, 1980s": (5, 6, 7), "Comedy, 1980s-1990s": (5, 6, 7, 8, 9), "Drama, 1990s": (11, 12)}
    kept = copyable(paths)
    assert set(kept) == {"Comedy, 1980s-1990s", "Drama, 1990s"}
    cursor = SIDTrie(kept.items()).cursor()
    for token in (5, 6, 7, 8, 9):
        assert cursor.accept(token)
    assert cursor.item == "Comedy, 1980s-1990s"
    with pytest.raises(ValueError, match="extends"):
        SIDTrie(paths.items())
