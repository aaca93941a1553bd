"""A baseline under the request's filter: the model's scores over the whole catalog, the items the
active constraints rule out and the excluded ones removed, top-k.

It is the fair anchor for steering: a sequential model given the same hard filter thinkrec's trie
gets (``engine.constraints.Facets.mask``, the function compliance agrees with). The steering
benchmark reports ``sasrec+filter`` and ``markov+filter`` rows with it, and the app's Compare tab
filters SASRec's column the same way (the ranker ``app/cli.py`` builds):

    thinkrec eval --steering --data artifacts/ml-100k --checkpoint checkpoints/ml-100k-tiny/sft

Filtering the full ranking, not a top-k list, is what lets the list fill: a genre can be a few
percent of the catalog and absent from an unfiltered top-100.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Collection, Mapping, Sequence

import numpy as np

from engine.constraints import Constraints, Facets


def facet_rows(facets: Facets, item_ids: Sequence[str]) -> np.ndarray:
    """Each item's row in ``facets`` (-1 for an item the facets do not know), computed once per model."""
    return np.array([facets.row_of.get(str(i), -1) for i in item_ids], dtype=np.int64)


def admissible_mask(facets: Facets, constraints: Constraints | None, rows: np.ndarray) -> np.ndarray:
    """Boolean mask over a model's items (``rows`` from ``facet_rows``) of those the constraints
    allow; an item the facets do not know fails every hard constraint (no categories, no year)."""
    if constraints is None or not constraints.is_hard():
        return np.ones(len(rows), dtype=bool)
    return facets.mask(constraints)[np.maximum(rows, 0)] & (rows >= 0)


def filtered_top_k(scores: Mapping[str, object] | np.ndarray, admissible: np.ndarray | Callable[[str], bool] | None,
                   exclude: Collection[str], k: int, item_ids: Sequence[str] | None = None) -> list[str]:
    """The ``k`` best-scored items that are admissible and not excluded, best first.

    ``scores``: a mapping item id -> score (any comparable key, e.g. a (votes, popularity) tuple), or
    an array aligned with ``item_ids``. ``admissible``: a boolean mask aligned with ``item_ids``, a
    predicate on item ids, or None (every item). Equal scores keep their input order, so the result
    is the unfiltered ranking with the inadmissible and excluded items taken out, cut at ``k``.
    """
    exclude = set(exclude)
    if isinstance(scores, Mapping):
        if isinstance(admissible, np.ndarray):
            admissible = dict(zip(item_ids, admissible.tolist())).get
        candidates = (i for i in scores if i not in exclude and (admissible is None or admissible(i)))
        return heapq.nlargest(k, candidates, key=scores.__getitem__)       # stable: sorted(reverse=True)[:k]
    if item_ids is None:
        raise ValueError("an array of scores needs the item_ids it is aligned with")
    if admissible is None:
        keep = np.ones(len(item_ids), dtype=bool)
    elif isinstance(admissible, np.ndarray):
        keep = admissible.astype(bool)                                     # a copy: the caller's mask stays
    else:
        keep = np.fromiter((bool(admissible(i)) for i in item_ids), dtype=bool, count=len(item_ids))
    if exclude:
        keep &= np.fromiter((i not in exclude for i in item_ids), dtype=bool, count=len(item_ids))
    rows = np.flatnonzero(keep)
    best = rows[np.argsort(-np.asarray(scores, dtype=np.float64)[rows], kind="stable")[:k]]
    return [item_ids[r] for r in best]
