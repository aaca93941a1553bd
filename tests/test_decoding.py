"""Constrained decoding on a tiny random model: beam search returns only real catalog items,
distinct, never from the history; the gate keeps every generated item span inside the catalog."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from engine.decoding import GatedTrieProcessor, beam_search_items, build_token_trie
from engine.prompt import NO_THINK_PREFIX, THINK_PREFIX, recommendation_messages
from engine.recommender import Recommender
from engine.tokenizer import ThinkrecTokenizer
from training.presets import new_model


@pytest.fixture(scope="module")
def setup():
    rng = random.Random(0)
    codes: dict[str, tuple[int, int, int]] = {}
    while len(codes) < 80:
        c = (rng.randrange(8), rng.randrange(8), rng.randrange(8))
        if c not in codes.values():
            codes[f"i{len(codes)}"] = c
    tok = ThinkrecTokenizer.train(["recommend a film tonight please"] * 30, 3, 8, 300)
    model = new_model("tiny", len(tok), tok.pad_id, tok.end_id, seed=0).eval()
    return tok, model, codes, build_token_trie(tok, codes)


def prompt(tok, codes, history, thinking=False):
    ids, _ = tok.render_conversation(recommendation_messages([codes[i] for i in history]),
                                     add_generation_prompt=True,
                                     assistant_prefix=THINK_PREFIX if thinking else NO_THINK_PREFIX)
    return ids


def test_beam_search_gives_distinct_unseen_catalog_items(setup):
    tok, model, codes, trie = setup
    histories = [["i1", "i2", "i3"], ["i5"], [f"i{n}" for n in range(0, 60, 3)]]
    results = beam_search_items(model, [prompt(tok, codes, h) for h in histories], trie,
                                [set(h) for h in histories], tok.pad_id, k=15, num_beams=20)
    for history, ranked in zip(histories, results):
        items = [r.item_id for r in ranked]
        assert len(items) == 15 and len(set(items)) == 15
        assert set(items) <= set(codes) and not set(items) & set(history)
        for r in ranked:                           # the token path spells the item's SID
            assert tok.codes_of(r.token_ids) == codes[r.item_id]
        assert [r.score for r in ranked] == sorted((r.score for r in ranked), reverse=True)


def test_beam_scores_match_a_plain_forward_pass(setup):
    tok, model, codes, trie = setup
    histories = [["i1", "i2"], [f"i{n}" for n in range(10)]]          # different lengths: left padding
    prompts = [prompt(tok, codes, h) for h in histories]
    results = beam_search_items(model, prompts, trie, [set(h) for h in histories], tok.pad_id, k=3)
    for p, ranked in zip(prompts, results):
        for r in ranked:
            ids = torch.tensor([p + list(r.token_ids)])
            with torch.no_grad():
                logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
            start = len(p) - 1
            expected = sum(logprobs[start + j, t].item() for j, t in enumerate(r.token_ids))
            assert r.score == pytest.approx(expected, abs=1e-4)


def test_exhausted_catalog_returns_what_is_left(setup):
    tok, model, codes, trie = setup
    history = [i for i in codes if i not in ("i7", "i9")]
    (ranked,) = beam_search_items(model, [prompt(tok, codes, history[:5])], trie, [set(history)], tok.pad_id, k=10)
    assert {r.item_id for r in ranked} == {"i7", "i9"}


class PreferItems(LogitsProcessor):
    """Push a random model toward opening items, so the gate has work to do."""

    def __init__(self, tok):
        self.ids = torch.tensor([tok.item_begin_id, *tok.sid_code_of])

    def __call__(self, input_ids, scores):
        scores[:, self.ids] += 8.0
        return scores


def test_gate_keeps_generated_items_in_the_catalog(setup):
    tok, model, codes, trie = setup
    history = ["i1", "i2", "i3"]
    ids = torch.tensor([prompt(tok, codes, history, thinking=True)])
    gate = GatedTrieProcessor(tok, trie, ids.shape[1], [set(history)])
    torch.manual_seed(0)
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=120, do_sample=True,
                         logits_processor=LogitsProcessorList([PreferItems(tok), gate]),
                         pad_token_id=tok.pad_id, eos_token_id=None)
    generated = out[0, ids.shape[1]:].tolist()
    spans, current, outside_sid = [], None, 0
    for t in generated:
        if t == tok.item_begin_id:
            current = []
        elif t == tok.item_end_id:
            spans.append(tuple(current))
            current = None
        elif current is not None:
            current.append(t)
        elif t in tok.sid_code_of:
            outside_sid += 1
    assert len(spans) >= 3 and outside_sid == 0
    items = [trie.lookup(span) for span in spans]
    assert None not in items and len(set(items)) == len(items) and not set(items) & set(history)
    assert gate.gates[0].errors == 0


def test_dead_prefix_allows_only_item_end(setup):
    tok, model, codes, trie = setup
    only = "i4"
    gate = GatedTrieProcessor(tok, trie, 1, [set(codes) - {only}])
    first = tok.sid_token_ids(codes[only])[0]
    wrong = next(t for t in tok.sid_ids[0] if t != first)
    ids = torch.tensor([[0, tok.item_begin_id, wrong]])
    scores = gate(ids, torch.zeros(1, len(tok)))
    assert torch.isfinite(scores[0]).nonzero().flatten().tolist() == [tok.item_end_id]
    gate(torch.tensor([[0, tok.item_begin_id, wrong, tok.item_end_id]]), torch.zeros(1, len(tok)))
    assert gate.gates[0].errors == 1


def test_recommender_same_seed_same_output(setup):
    tok, model, codes, trie = setup
    recommender = Recommender(model, tok, codes)
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        answers = recommender.recommend([["i1", "i2"], ["i3"]], k=5, thinking=True, max_reasoning_tokens=12, sample=True)
        runs.append([(a.reasoning, [i.item_id for i in a.items]) for a in answers])
    assert runs[0] == runs[1]
    for _, items in runs[0]:
        assert len(items) == 5 and set(items) <= set(codes)


def test_catalog_scale_benchmark_runs_small(tmp_path):
    """`thinkrec bench-catalog` end to end on a small synthetic catalog: every measure present."""
    import json

    from typer.testing import CliRunner

    from app.cli import app

    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench-catalog", "--items", "3000", "--steps", "600", "--decode-repeats", "2",
                                      "--index", "flat", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["sid"]["levels"] >= 3 and report["trie"]["step_us"] > 0
    assert report["trie"]["depth"][0]["mean_branching"] == report["sid"]["codebook_size"]
    assert report["faiss"]["kind"] == "flat" and report["faiss"]["query_ms"] > 0
    assert report["decoding"]["constrained_ms"] > 0 and report["decoding"]["unconstrained_ms"] > 0


def test_vllm_request_gates_mask_like_the_transformers_gate(built_dataset, tiny_checkpoint, tmp_path):
    """The server-side state (engine/serving/vllm_trie.py, no vLLM needed): rows that asked are masked to
    the trie and carry log-probabilities; rows that did not are untouched; rows follow moves."""
    import torch

    from data.catalog import Catalog
    from engine.tokenizer import ThinkrecTokenizer
    from engine.serving.vllm_trie import RequestGates, TrieSpec, request_excludes, write_trie_spec

    tok = ThinkrecTokenizer.load(tiny_checkpoint)
    codes = Catalog(built_dataset).sid_codes()
    spec = TrieSpec(write_trie_spec(tmp_path / "trie.json", tok, codes, "fp"))
    first_item = next(iter(codes))
    path = tok.sid_token_ids(codes[first_item])
    gates = RequestGates(spec)
    in_item, in_text = [], []
    gates.add(0, {first_item}, [tok.end_id, tok.item_begin_id] + path[:1], in_item)   # prompt ends inside an item
    gates.add(1, set(), [tok.end_id, tok.think_id], in_text)
    logits = torch.randn(3, len(tok))
    before = logits.clone()
    out = gates.apply(logits)
    cursor = spec.trie.cursor(exclude={first_item})
    cursor.accept(path[0])
    expected = set(cursor.allowed() or [tok.item_end_id])
    finite = set(torch.isfinite(out[0]).nonzero().flatten().tolist())
    assert finite == expected
    reference = torch.log_softmax(before[0], dim=-1)
    assert all(abs(out[0, t].item() - reference[t].item()) < 1e-5 for t in expected)
    sid_ids = sorted(tok.sid_code_of)
    assert torch.isinf(out[1, sid_ids]).all() and torch.isinf(out[1, tok.item_end_id])
    assert torch.allclose(out[1, :10], torch.log_softmax(before[1], dim=-1)[:10])
    assert torch.equal(out[2], before[2])                                      # never asked
    # Decoding moves on: the row sees its new output token; then vLLM swaps rows 0 and 2.
    in_item.append(path[1])
    gates.move(0, 2, swap=True)
    out = gates.apply(torch.randn(3, len(tok)))
    cursor.accept(path[1])
    assert set(torch.isfinite(out[2]).nonzero().flatten().tolist()) == set(cursor.allowed() or [tok.item_end_id])
    assert torch.isfinite(out[0]).all()
    gates.remove(2)
    assert set(gates.rows) == {1}
    assert request_excludes({"thinkrec": 1, "thinkrec_exclude": [1, "2"]}) == {"1", "2"}
    assert request_excludes({"other": 1}) is None
    with pytest.raises(ValueError, match="list of item ids"):
        request_excludes({"thinkrec": 1, "thinkrec_exclude": "3"})
