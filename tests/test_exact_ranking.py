"""Exact ranking of the admissible catalog (engine/decoding.py score_trees) and the item-ID head
(engine/item_head.py, training/item_targets.py)."""

from __future__ import annotations

import random

import pytest
import torch


@pytest.fixture(scope="module")
def small_world():
    """A random Qwen3 model and a 150-item trie of 3-level SIDs (a few items 4 levels deep)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from engine.item_head import ItemHead, attach
    from engine.sid import SIDTrie

    torch.manual_seed(0)
    rng = random.Random(0)
    config = Qwen3Config(vocab_size=140, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=32)
    model = Qwen3ForCausalLM(config).eval()
    paths = set()
    while len(paths) < 150:
        paths.add((rng.randint(60, 69), rng.randint(70, 89), rng.randint(90, 119)))
    paths = sorted(paths)
    # Two prefixes get a fourth level: their items are 4 tokens long, the rest 3.
    deep = [p + (120 + n,) for n, p in enumerate([(60, 70, 90), (60, 70, 91)] * 2)]
    deep = sorted(set(deep))
    paths = [p for p in paths if p[:3] not in {d[:3] for d in deep}] + deep
    items = [f"i{n}" for n in range(len(paths))]
    trie = SIDTrie(zip(items, paths))
    attach(model, ItemHead(items, config.hidden_size, init_std=0.1))
    prompts = [[rng.randint(1, 59) for _ in range(length)] for length in (7, 12, 3)]
    return model, trie, items, prompts


def test_exact_ranking_equals_brute_force_per_item_scoring(small_world):
    from engine.decoding import admissible_tree, score_paths, score_trees
    from engine.item_head import head_of

    model, trie, items, prompts = small_world
    excludes = [{"i0", "i5"}, set(), {"i3", "i7"}]
    restricts = [None, trie.restrict_to(items[::3]), None]
    trees = [admissible_tree(trie, e, r, 10**6) for e, r in zip(excludes, restricts)]
    assert [len(t.items) for t in trees] == [len(items) - 2, len(items[::3]), len(items) - 2]
    assert any(len(p) == 4 for p in trees[0].paths)                     # mixed SID lengths are covered
    for head_weight in (0.0, 1.5):
        # The whole mask at once, then a mask budget small enough to force chunks in every level.
        for cells in (1 << 25, 2000):
            exact = score_trees(model, prompts, trees, pad_id=0, head=head_of(model), head_weight=head_weight,
                                max_mask_cells=cells)
            brute = []                                       # one item at a time, no sharing at all
            for prompt, tree in zip(prompts, trees):
                brute.append([score_paths(model, [prompt], [[path]], pad_id=0, head=head_of(model),
                                          head_weight=head_weight, items=[[item]])[0][0]
                              for item, path in zip(tree.items, tree.paths)])
            for ours, theirs, tree in zip(exact, brute, trees):
                assert max(abs(a - b) for a, b in zip(ours, theirs)) < 1e-5
                order = sorted(range(len(ours)), key=lambda n: -ours[n])
                assert order == sorted(range(len(theirs)), key=lambda n: -theirs[n])


def test_the_tree_walk_stops_at_the_budget(small_world):
    from engine.decoding import admissible_tree

    _, trie, items, _ = small_world
    full = admissible_tree(trie, set(), None, 10**6)
    assert full.steps == len({p[:1] for p in full.paths}) + len({p[:2] for p in full.paths}) + \
        len({p[:3] for p in full.paths if len(p) == 4})
    assert admissible_tree(trie, set(), None, full.steps) is not None
    assert admissible_tree(trie, set(), None, full.steps - 1) is None
    # A filter narrows the tree below the budget again.
    assert admissible_tree(trie, set(), trie.restrict_to(items[:5]), 12) is not None


def test_recommender_ranks_exactly_under_the_budget_and_by_beams_above(built_dataset, tiny_checkpoint):
    from data.catalog import Catalog
    from engine.constraints import Constraints, Facets
    from engine.recommender import open_recommender

    codes = Catalog(built_dataset).sid_codes()
    recommender, _ = open_recommender(tiny_checkpoint, built_dataset, codes)
    assert recommender.ranker.head is not None and recommender.ranker.head_weight > 0
    facets = Facets(*Catalog(built_dataset).attribute_table())
    comedy = Constraints(want=[["Comedy"]])
    allowed = set(facets.allowed_items(comedy))
    history = ["1", "2", "13"]
    exact = recommender.recommend([history, history], k=5, num_beams=8, constraints=[None, comedy])
    assert [r.ranking["method"] for r in exact] == ["exact", "exact"]
    assert exact[0].ranking["admissible"] == len(codes) - 3
    assert {i.item_id for i in exact[1].items} <= allowed - set(history)
    # Exact ranking scores every admissible item: its top 5 are the best of all of them.
    scores = [i.score for i in exact[0].items]
    assert scores == sorted(scores, reverse=True)
    recommender.ranker.exact_steps = 1
    beams = recommender.recommend([history], k=5, num_beams=8)[0]
    assert beams.ranking["method"] == "beam"
    assert len(beams.items) == 5 and not {i.item_id for i in beams.items} & set(history)
    # On the same scale: beam search can only find items exact ranking scores no higher.
    assert beams.items[0].score <= exact[0].items[0].score + 1e-4


def test_thinking_reuses_exact_scores_instead_of_scoring_views_again(built_dataset, tiny_checkpoint):
    """Exact ranking already scored every admissible item under the reasoned and the direct prompt, so
    the fused ranking runs the model again only for the reasoning-alone view (none by default, whose
    contrast is 0), and ranks the same as scoring every view again."""
    from data.catalog import Catalog
    from engine.constraints import Constraints
    from engine.ranking import ThinkRank
    from engine.recommender import open_recommender

    codes = Catalog(built_dataset).sid_codes()
    recommender, _ = open_recommender(tiny_checkpoint, built_dataset, codes)
    ranker, backend = recommender.ranker, recommender.ranker.backend
    history, comedy = ["1", "2", "13"], Constraints(want=[["Comedy"]])
    calls = []
    score_paths = backend.score_paths

    def counted(prompts, *args, **kwargs):
        calls.append(len(prompts))
        return score_paths(prompts, *args, **kwargs)

    backend.score_paths = counted
    default = recommender.recommend([history], k=5, num_beams=8, thinking=True, constraints=[comedy])[0]
    assert default.ranking["method"] == "exact" and calls == []
    contrast = ThinkRank(contrast=0.5)
    reused = recommender.recommend([history], k=5, num_beams=8, thinking=True, constraints=[comedy],
                                   think_rank=contrast)[0]
    assert calls == [1]
    # The same turn with nothing handed on: every view scored by the model again.
    rank_items = ranker.rank_items
    ranker.rank_items = lambda *args, scored=None, **kwargs: rank_items(*args, **kwargs)
    calls.clear()
    again = recommender.recommend([history], k=5, num_beams=8, thinking=True, constraints=[comedy],
                                  think_rank=contrast)[0]
    assert calls == [1, 1, 1]
    assert [i.item_id for i in reused.items] == [i.item_id for i in again.items]
    assert [i.score for i in reused.items] == pytest.approx([i.score for i in again.items], abs=1e-4)


def test_item_targets_train_answers_and_history_but_not_citations():
    from engine.tokenizer import ThinkrecTokenizer  # noqa: F401  (the ids below mirror its attributes)
    from training.item_targets import ItemTargets

    class Tok:
        item_begin_id, item_end_id, think_id, think_end_id = 1, 2, 3, 4

        @staticmethod
        def sid_token_ids(codes):
            return [10 + codes[0], 20 + codes[1]]

    targets = ItemTargets(Tok(), {"a": (0, 0), "b": (1, 1)}, ["a", "b"])
    # history span (trained) | <think> cited span </think> | answer span (trained) | untrained span
    ids = torch.tensor([[1, 10, 20, 2, 3, 1, 11, 21, 2, 4, 1, 11, 21, 2, 1, 10, 20, 2]])
    labels = ids.clone()
    labels[0, 15:] = -100
    rows, cols, items = targets.find(ids, labels)
    assert cols.tolist() == [0, 10] and items.tolist() == [0, 1]


def test_item_head_saves_beside_the_weights_and_refuses_another_catalog(tmp_path):
    from engine.item_head import ItemHead

    head = ItemHead(["x", "y", "z"], 8)
    head.save(tmp_path)
    again = ItemHead.load(tmp_path, expected_items=["z", "y", "x"])
    assert again.item_ids == ["x", "y", "z"] and torch.equal(again.embedding, head.embedding)
    with pytest.raises(ValueError, match="another dataset build"):
        ItemHead.load(tmp_path, expected_items=["x", "y", "w"])
    assert ItemHead.load(tmp_path / "nothing") is None
    assert ItemHead.nbytes(10**6, 256) == 10**6 * 257 * 4


def test_training_steps_move_the_item_head(built_dataset, tmp_path):
    """Two optimizer steps of pre-training change the item head's table and log its loss."""
    import json

    from engine.item_head import ItemHead
    from training.pretrain import PretrainArgs, run

    out = tmp_path / "pretrain"
    run(PretrainArgs(data=str(built_dataset), out=str(out), max_steps=2, vocab_size=600, batch_tokens=2048,
                     save_every=0))
    head = ItemHead.load(out)
    torch.manual_seed(0)
    fresh = ItemHead(head.item_ids, head.embedding.shape[1])
    assert not torch.allclose(head.embedding, fresh.embedding)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert all("head_loss" in r and r["head_loss"] > 0 for r in log)
    # vLLM loads every top-level *.safetensors as model weights: the head keeps to its own folder.
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]


def test_a_decode_time_prior_moves_items_and_says_so(built_dataset, tiny_checkpoint):
    from data.catalog import Catalog
    from engine.recommender import open_recommender

    codes = Catalog(built_dataset).sid_codes()
    recommender, _ = open_recommender(tiny_checkpoint, built_dataset, codes)
    history = ["1", "2", "13"]
    plain = recommender.recommend([history], k=5, num_beams=8)[0]
    last = [i for i in codes if i not in history][-1]
    favourite = next(i for i in reversed(list(codes)) if i not in history and i not in {r.item_id for r in plain.items})
    recommender.ranker.prior = lambda histories: [{i: (0.0 if i == favourite else -50.0) for i in codes} for _ in histories]
    recommender.ranker.prior_weight, recommender.ranker.prior_name = 1.0, "test"
    for steps in (4096, 1):                      # exact, then the beam fallback
        recommender.ranker.exact_steps = steps
        found = recommender.recommend([history], k=5, num_beams=len(codes))[0]
        assert found.items[0].item_id == favourite and found.ranking["prior"] == "test"
        assert not {i.item_id for i in found.items} & set(history)
    assert last in codes
    # Every ranking path adds it once: thinking (fused views) and the two-view direct ranking.
    [thought] = recommender.recommend([history], k=5, num_beams=len(codes), thinking=True)
    assert thought.items[0].item_id == favourite
    recommender.ranker.recent_view = 2
    [two_views] = recommender.recommend([history], k=5, num_beams=len(codes))
    assert two_views.items[0].item_id == favourite


def test_the_served_prior_is_the_training_splits_transitions(built_dataset, tiny_checkpoint):
    """open_recommender ranks with the dataset's transition counts by default; their log-prior is a
    distribution over the catalog, and an item that followed the latest one gains on the rest."""
    import math

    from data.catalog import Catalog
    from engine.ranking import TRANSITION_PRIOR_WEIGHT
    from engine.recommender import open_recommender

    codes = Catalog(built_dataset).sid_codes()
    recommender, _ = open_recommender(tiny_checkpoint, built_dataset, codes)
    ranker, counts = recommender.ranker, recommender.planner.reader.transitions
    assert ranker.prior_name == "transitions" and ranker.prior_weight == TRANSITION_PRIOR_WEIGHT
    latest = next(i for i in codes if counts.following.get(i))
    [prior] = ranker.priors([[latest]])
    assert abs(sum(math.exp(prior.get(i)) for i in codes) - 1) < 1e-3
    after = counts.following[latest].most_common(1)[0][0]
    never = min((i for i in codes if i not in counts.following[latest]), key=lambda i: counts.popularity.get(i, 0))
    assert prior.get(after) > prior.get(never)


def test_bench_exact_reports_both_ways_by_size():
    from app.bench.exact import ExactBenchArgs, markdown, run

    report = run(ExactBenchArgs(items="300,2000", repeats=1, prompt_tokens=20, history=5), progress=lambda row: None)
    small, large = report["rows"]
    assert small["exact_steps"] < large["exact_steps"] and small["exact_by_default"]
    assert small["exact_ms"] > 0 and small["beam_ms"] > 0 and large["head_mb"] > small["head_mb"]
    assert "| 2,000 |" in markdown(report)


def test_the_benchmark_leaves_autograd_on():
    from app.bench.exact import ExactBenchArgs, run

    run(ExactBenchArgs(items="100", repeats=1, prompt_tokens=8, history=2), progress=lambda row: None)
    assert torch.is_grad_enabled()
