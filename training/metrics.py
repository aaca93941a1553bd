"""Ranking metrics for leave-one-out evaluation: hit rate and NDCG at K with one relevant item.

Every split row has exactly one target, so HR@K is "is the target in the top K" and NDCG@K is
1 / log2(rank + 2) for a 0-based rank below K (the ideal DCG is 1). Values are means over rows.
`evaluate_rows` runs any batched recommender over split rows, so popularity, SASRec and the
generative model are scored by the same code; `thinkrec eval` (training/evaluate.py) reports them
side by side.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

DEFAULT_KS = (1, 5, 10, 20)


def rank_of(ranked_list: Sequence[str], target: str) -> int | None:
    """0-based position of the target in the ranking, or None when it is not ranked at all."""
    for position, item_id in enumerate(ranked_list):
        if item_id == target:
            return position
    return None


def hit_ndcg(ranked: Sequence[Sequence[str]], targets: Sequence[str],
             ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Mean "hr@K" and "ndcg@K" over rows; an empty input gives zeros rather than a NaN."""
    if len(ranked) != len(targets):
        raise ValueError(f"{len(ranked)} rankings for {len(targets)} targets")
    hits = {k: 0.0 for k in ks}
    gains = {k: 0.0 for k in ks}
    for ranked_list, target in zip(ranked, targets):
        rank = rank_of(ranked_list, target)
        if rank is None:
            continue
        gain = 1.0 / math.log2(rank + 2)
        for k in ks:
            if rank < k:
                hits[k] += 1.0
                gains[k] += gain
    count = max(len(targets), 1)
    metrics: dict[str, float] = {}
    for k in ks:
        metrics[f"hr@{k}"] = hits[k] / count
        metrics[f"ndcg@{k}"] = gains[k] / count
    return metrics


def evaluate_rows(rows: Sequence[dict],
                  recommend_batch: Callable[[list[list[str]], int], list[list[str]]],
                  ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Score a recommender on valid/test split rows ({"history", "target"}) at the largest K."""
    histories = [list(row["history"]) for row in rows]
    targets = [row["target"] for row in rows]
    ranked = recommend_batch(histories, max(ks))
    return hit_ndcg(ranked, targets, ks)

