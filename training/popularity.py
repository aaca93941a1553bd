"""Most-popular baseline: recommend the items seen most often in training, minus the user's history.

It is the floor every learned recommender must clear on the same split. Ties are broken by the
order in which items first appear in the training data, so the ranking is deterministic.

For the test split the model may use everything before the test target, so the valid targets are
counted too (`extra_items`). It needs no training; `thinkrec eval` scores it next to the others:

    thinkrec eval --data artifacts/ml-100k --methods popularity --split test
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass
class PopularityRecommender:
    counts: dict[str, int] = field(default_factory=dict)   # insertion order = first appearance
    ranking: list[str] = field(default_factory=list)       # most popular first

    def fit(self, train_rows: Iterable[dict], extra_items: Sequence[str] = ()) -> PopularityRecommender:
        counts: dict[str, int] = {}
        for row in train_rows:
            for item_id in row["item_ids"]:
                counts[item_id] = counts.get(item_id, 0) + 1
        for item_id in extra_items:
            counts[item_id] = counts.get(item_id, 0) + 1
        first_seen = {item_id: position for position, item_id in enumerate(counts)}
        self.counts = counts
        self.ranking = sorted(counts, key=lambda item_id: (-counts[item_id], first_seen[item_id]))
        return self

    def recommend(self, history: Sequence[str], k: int) -> list[str]:
        seen = set(history)
        picked: list[str] = []
        for item_id in self.ranking:
            if len(picked) >= k:
                break
            if item_id not in seen:
                picked.append(item_id)
        return picked

    def recommend_batch(self, histories: Sequence[Sequence[str]], k: int) -> list[list[str]]:
        return [self.recommend(history, k) for history in histories]
