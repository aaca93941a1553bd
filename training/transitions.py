"""Transition-count baseline (``markov`` in ``thinkrec eval``): no learning, only counting.

A candidate's score is how often it came right after each of the user's last ``order`` items in the
known sequences, summed over those items (the latest counts most: weight 1/lag). Items no recent
item ever led to come after, by popularity. It is the floor a sequential recommender must clear:
it knows what usually comes next and nothing else.

What it may count mirrors popularity's rule: on the valid split every training sequence; on the
test split each user's sequence also ends with that user's valid target (the test history holds it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from engine.interests import Transitions


class TransitionRecommender(Transitions):
    """The counts (engine.interests.Transitions) as a recommender: votes first, then popularity."""

    def fit(self, sequences: Iterable[Sequence[str]]) -> TransitionRecommender:
        super().fit(sequences)
        self._by_popularity = [item for item, _ in self.popularity.most_common()]
        return self

    def catalog_scores(self, history: Sequence[str], item_ids: Iterable[str]) -> dict[str, tuple[float, int]]:
        """Every catalog item's sort key, as ``recommend`` ranks: (votes, popularity), so items no
        recent item led to follow by popularity and a filtered top-k still fills (training/filtered.py)."""
        votes = self.scores(history)
        catalog = list(item_ids)
        known = set(catalog)
        # Key order = recommend's order among equal keys (a stable sort keeps it): voted items as
        # counted, then by popularity, then items never seen in catalog order.
        order = dict.fromkeys([i for i in votes if i in known] + [i for i in self._by_popularity if i in known]
                              + catalog)
        return {i: (votes.get(i, 0.0), self.popularity.get(i, 0)) for i in order}

    def recommend(self, history: Sequence[str], k: int) -> list[str]:
        seen = set(history)
        votes = self.scores(history)
        # Ties (and items no recent item led to) go to the more popular item.
        ranked = sorted((i for i in votes if i not in seen), key=lambda i: (-votes[i], -self.popularity[i]))[:k]
        if len(ranked) < k:
            chosen = set(ranked)
            ranked += [i for i in self._by_popularity if i not in seen and i not in chosen][:k - len(ranked)]
        return ranked

    def recommend_batch(self, histories: Sequence[Sequence[str]], k: int) -> list[list[str]]:
        return [self.recommend(history, k) for history in histories]


def known_sequences(view, split: str) -> list[list[str]]:
    """Every user's sequence as far as the ``split``'s targets allow: the training items, plus the
    valid target when evaluating on test."""
    sequences = {row["user_id"]: list(row["item_ids"]) for row in view.train}
    if split == "test":
        for row in view.valid:
            sequences.setdefault(row["user_id"], list(row["history"])).append(row["target"])
    return list(sequences.values())
