"""Ranking metrics by hand, the popularity baseline, and SASRec learning a cyclic pattern (CPU, seconds)."""

from __future__ import annotations

import math
import random

import pytest
import torch

from training.metrics import evaluate_rows, hit_ndcg, rank_of
from training.popularity import PopularityRecommender
from training.sasrec import (
    SASRecConfig,
    SASRecModel,
    SASRecNetwork,
    train_sasrec,
    training_windows,
)

# --------------------------------------------------------------------------- metrics


def test_rank_of_finds_position_or_none():
    assert rank_of(["a", "b", "c"], "a") == 0
    assert rank_of(["a", "b", "c"], "c") == 2
    assert rank_of(["a", "b", "c"], "z") is None
    assert rank_of([], "a") is None


def test_hit_ndcg_hand_checked():
    ranked = [["t1", "x", "y"], ["x", "y", "t2"], ["x", "y", "z"]]
    targets = ["t1", "t2", "t3"]            # ranks 0, 2 and absent
    metrics = hit_ndcg(ranked, targets, ks=(1, 3, 10))
    assert metrics["hr@1"] == pytest.approx(1 / 3)
    assert metrics["ndcg@1"] == pytest.approx(1 / 3)                 # 1/log2(2) = 1 for rank 0
    assert metrics["hr@3"] == pytest.approx(2 / 3)
    assert metrics["ndcg@3"] == pytest.approx((1.0 + 0.5) / 3)       # rank 2: 1/log2(4) = 0.5
    assert metrics["hr@10"] == pytest.approx(2 / 3)
    assert metrics["ndcg@10"] == pytest.approx(1.5 / 3)
    assert set(metrics) == {"hr@1", "ndcg@1", "hr@3", "ndcg@3", "hr@10", "ndcg@10"}


def test_hit_ndcg_rank_one_and_mismatch():
    metrics = hit_ndcg([["x", "t"]], ["t"], ks=(1, 2))
    assert metrics["hr@1"] == 0.0 and metrics["ndcg@1"] == 0.0
    assert metrics["ndcg@2"] == pytest.approx(1 / math.log2(3))
    with pytest.raises(ValueError):
        hit_ndcg([["a"]], ["a", "b"])


# --------------------------------------------------------------------------- popularity

TRAIN_ROWS = [
    {"user_id": "u1", "item_ids": ["c", "a", "b"]},
    {"user_id": "u2", "item_ids": ["a", "b", "d"]},
    {"user_id": "u3", "item_ids": ["a", "e"]},
]


def test_popularity_counts_ties_and_excludes_history():
    model = PopularityRecommender().fit(TRAIN_ROWS)
    # a:3, b:2, then c, d, e tied at 1 in order of first appearance.
    assert model.ranking == ["a", "b", "c", "d", "e"]
    assert model.recommend([], 3) == ["a", "b", "c"]
    assert model.recommend(["a", "c"], 3) == ["b", "d", "e"]
    assert model.recommend(["a", "b", "c", "d"], 5) == ["e"]
    assert PopularityRecommender().fit(TRAIN_ROWS).ranking == model.ranking


def test_popularity_extra_items_change_the_order():
    model = PopularityRecommender().fit(TRAIN_ROWS, extra_items=["e", "e", "f"])
    assert model.ranking == ["a", "e", "b", "c", "d", "f"]
    rows = [{"history": ["a"], "target": "e"}, {"history": ["e"], "target": "b"}]
    metrics = evaluate_rows(rows, model.recommend_batch, ks=(1, 2))
    assert metrics["hr@1"] == pytest.approx(0.5)     # e first for the first user; a first for the second
    assert metrics["hr@2"] == pytest.approx(1.0)


# --------------------------------------------------------------------------- transitions (markov)


def test_transition_counts_follow_the_latest_items_then_popularity():
    from types import SimpleNamespace

    from training.transitions import TransitionRecommender, known_sequences

    model = TransitionRecommender(order=2).fit([["a", "b", "c"], ["a", "b", "d"], ["x", "c"], ["b", "d"]])
    # After "b": d twice, c once; after "a": b twice (lag 2 counts half).
    assert model.scores(["a", "b"]) == {"d": 2.0, "c": 1.0, "b": 1.0}
    assert model.recommend(["a", "b"], 3) == ["d", "c", "x"]      # b is history; popularity fills the rest
    assert model.recommend(["q"], 2) == ["b", "a"]       # nothing follows "q": by popularity (ties: first seen)
    assert "a" not in model.recommend(["a"], 5)
    # The test split may count the valid target as the end of each user's sequence; valid may not.
    view = SimpleNamespace(train=[{"user_id": "u1", "item_ids": ["a", "b"]}],
                           valid=[{"user_id": "u1", "history": ["a", "b"], "target": "c"}])
    assert known_sequences(view, "valid") == [["a", "b"]]
    assert known_sequences(view, "test") == [["a", "b", "c"]]


# --------------------------------------------------------------------------- SASRec

NUM_ITEMS = 20
CATALOG = [f"i{n}" for n in range(NUM_ITEMS)]
TINY = SASRecConfig(max_len=10, hidden=32, blocks=1, heads=1, dropout=0.1, lr=5e-3,
                    batch_size=32, epochs=20, eval_every=10, patience=3, seed=0)


def cyclic_users(num_users: int = 60, length: int = 8, seed: int = 0) -> list[list[str]]:
    """Each user walks i -> i+1 (mod 20) from a random start; the next item is fully determined."""
    rng = random.Random(seed)
    users = []
    for _ in range(num_users):
        start = rng.randrange(NUM_ITEMS)
        users.append([CATALOG[(start + step) % NUM_ITEMS] for step in range(length)])
    return users


def next_item(history: list[str]) -> str:
    return CATALOG[(CATALOG.index(history[-1]) + 1) % NUM_ITEMS]


@pytest.fixture(scope="module")
def cyclic_model() -> SASRecModel:
    users = cyclic_users()
    train = [u[:-1] for u in users]
    valid = [(u[:-1], u[-1]) for u in users]
    return train_sasrec(CATALOG, train, valid, TINY, progress=False, device="cpu")


def test_training_windows_cover_every_transition_once():
    sequence = [f"i{n}" for n in range(15)]
    item_row = {item: n + 1 for n, item in enumerate(CATALOG)}
    inputs, targets = training_windows([sequence], item_row, max_len=6)
    real_targets = targets[targets != 0].tolist()
    assert sorted(real_targets) == list(range(2, 16))                 # items i1..i14 as rows 2..15
    assert inputs.shape == targets.shape == (3, 6)
    shifted = targets[:, :-1] != 0                                   # targets are inputs shifted by one
    assert torch.equal(inputs[:, 1:][shifted], targets[:, :-1][shifted])
    assert torch.equal((inputs != 0), (targets != 0))                # each real input has a target


def test_sasrec_learns_cyclic_next_item(cyclic_model):
    histories = [u[:-1] for u in cyclic_users(num_users=40, seed=1)]
    top1 = cyclic_model.recommend_batch(histories, 1)
    correct = sum(rec[0] == next_item(h) for rec, h in zip(top1, histories))
    assert correct >= 0.8 * len(histories), f"{correct}/{len(histories)} right"
    assert cyclic_model.valid_curve and cyclic_model.best_epoch > 0


def test_sasrec_recommendations_exclude_history_and_are_distinct(cyclic_model):
    histories = [u[:-1] for u in cyclic_users(num_users=30, length=12, seed=2)] + [[], CATALOG[:-2]]
    recommendations = cyclic_model.recommend_batch(histories, 5)
    for history, recs in zip(histories, recommendations):
        assert len(recs) == min(5, NUM_ITEMS - len(set(history)))
        assert len(set(recs)) == len(recs)
        assert not set(recs) & set(history)
        assert set(recs) <= set(CATALOG)
    assert recommendations[-1] and set(recommendations[-1]) == set(CATALOG[-2:])


def test_sasrec_save_load_round_trip(cyclic_model, tmp_path):
    path = tmp_path / "sasrec.pt"
    cyclic_model.save(path)
    loaded = SASRecModel.load(path, device="cpu")
    histories = [u[:-1] for u in cyclic_users(num_users=25, seed=3)]
    assert loaded.recommend_batch(histories, 10) == cyclic_model.recommend_batch(histories, 10)
    assert loaded.config == cyclic_model.config and loaded.item_ids == CATALOG
    assert loaded.best_epoch == cyclic_model.best_epoch


def test_sasrec_same_seed_same_recommendations():
    users = cyclic_users(num_users=30)
    config = SASRecConfig(**{**TINY.__dict__, "epochs": 5})
    first = train_sasrec(CATALOG, users, None, config, progress=False, device="cpu")
    second = train_sasrec(CATALOG, users, None, config, progress=False, device="cpu")
    histories = [u[:-1] for u in cyclic_users(num_users=20, seed=4)]
    assert first.recommend_batch(histories, 10) == second.recommend_batch(histories, 10)
    for name, tensor in first.network.state_dict().items():
        assert torch.equal(tensor, second.network.state_dict()[name]), name
    other = train_sasrec(CATALOG, users, None, SASRecConfig(**{**TINY.__dict__, "epochs": 5, "seed": 1}),
                         progress=False, device="cpu")
    assert not torch.equal(first.network.item_embedding.weight, other.network.item_embedding.weight)


def test_sasrec_is_causal_and_ignores_padding():
    torch.manual_seed(0)
    network = SASRecNetwork(NUM_ITEMS, TINY).eval()
    rows = torch.tensor([[0, 0, 3, 4, 5, 6, 7, 8, 9, 10]])
    changed = rows.clone()
    changed[0, -1] = 15                                   # a different last item
    with torch.no_grad():
        before, after = network(rows), network(changed)
    assert torch.allclose(before[0, :-1], after[0, :-1])  # earlier positions never see later items
    assert not torch.allclose(before[0, -1], after[0, -1])
    assert torch.isfinite(before).all()                   # padded queries give no NaN


def test_thinking_against_direct_by_history_length_groups_users_by_their_catalog_history():
    from training.evaluate import by_history_length

    known = {f"i{n}" for n in range(100)}
    # Eight users with 1..8 catalog items (an unknown item never counts); the target is "t".
    rows = [{"history": [f"i{n}" for n in range(size)] + ["gone"], "target": "t"} for size in range(1, 9)]
    direct = [["t"] if size <= 4 else ["x"] for size in range(1, 9)]      # right for the short histories
    think = [["x"] if size <= 4 else ["x", "t"] for size in range(1, 9)]  # right (2nd) for the long ones
    groups = by_history_length(direct, think, rows, known, groups=2)
    assert [g["history_items"] for g in groups] == ["1-4", "5-8"]
    assert [g["users"] for g in groups] == [4, 4]
    assert groups[0]["direct_ndcg@10"] == 1.0 and groups[0]["thinking_ndcg@10"] == 0.0
    assert groups[1]["direct_ndcg@10"] == 0.0 and abs(groups[1]["thinking_ndcg@10"] - 1 / math.log2(3)) < 1e-4
