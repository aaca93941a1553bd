"""Recommendation rewards for RL. Each is a plain function

    reward(completions, **batch) -> list[float]      (one value in [0, 1] per completion)

so new rewards are easy to add and to test by hand. ``completions`` are :class:`Completion` (one
sampled reasoning path and the ranked items beam search gave after it); ``batch`` carries what the
prompt knew and what happened next, one entry per completion: ``targets`` (the true next item id),
``target_codes`` (its SID), ``codes`` (item id -> SID for the whole catalog), ``histories`` (seen
items), ``requests`` (a dialogue :class:`~training.teacher.Request` or None) and ``facts`` (item id
-> :class:`~training.teacher.ItemFacts`, read from the catalog). A function takes what it needs and
ignores the rest.

- :func:`rank_hit` — the target's position in the ranked list, NDCG-style: 1 / log2(rank + 2).
- :func:`prefix_credit` — hierarchical SID credit: how many leading SID levels a ranked item shares
  with the target, discounted by its rank; the best item counts. A list that misses the target but
  lands in the right coarse cluster still earns something, so a group without a hit has signal.
- :func:`format_reward` — the reasoning has all three levels in order and closes, and every item is
  a real catalog item, distinct and unseen.
- :func:`target_likelihood` — how likely the policy makes the true next item right after this
  reasoning: the geometric mean of its SID tokens' probabilities (teacher-forced, one forward pass
  per rollout). Dense where rank_hit is sparse: two paths that both miss the top K still differ in
  how close they brought the target, so almost every group has a signal.
- :func:`instruction_following` — for dialogue prompts, the share of the top items that satisfy the
  request, checked against the catalog's attributes (asked-for genre, decade, avoided genre, "more
  like" a title). Prompts without a request get 0 (the weight only matters where there is one).
- :func:`level3_match` — level 3's "Next item:" statement against the true next item: half for
  naming one of its categories, half for its decade. Reasoning is trained on its outcome, not only
  on the items after it (issue 27).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from engine.prompt import parse_reasoning, stated_attributes, well_formed
from engine.tokenizer import THINK_END
from training.teacher import ItemFacts, Request, decade_of


@dataclass
class Completion:
    items: list[str]                  # ranked item ids from beam search over the SID steps
    reasoning: str = ""               # generated reasoning, level tokens included ("" without thinking)
    thinking: bool = True
    closed: bool = True               # the reasoning ended with </think> (not cut by the length cap)
    extra: dict = field(default_factory=dict)


def _discount(rank: int) -> float:
    return 1.0 / math.log2(rank + 2)


def rank_hit(completions: Sequence[Completion], targets: Sequence[str], k: int = 10, **_) -> list[float]:
    out = []
    for completion, target in zip(completions, targets):
        ranked = completion.items[:k]
        out.append(_discount(ranked.index(target)) if target in ranked else 0.0)
    return out


def shared_levels(a: Sequence[int], b: Sequence[int]) -> int:
    """Number of leading SID levels two items share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def prefix_credit(completions: Sequence[Completion], target_codes: Sequence[Sequence[int]],
                  codes: dict[str, Sequence[int]], k: int = 10, **_) -> list[float]:
    out = []
    for completion, target in zip(completions, target_codes):
        best = 0.0
        for rank, item in enumerate(completion.items[:k]):
            if item in codes:
                best = max(best, shared_levels(codes[item], target) / len(target) * _discount(rank))
        out.append(best)
    return out


def format_reward(completions: Sequence[Completion], histories: Sequence[Sequence[str]],
                  codes: dict[str, Sequence[int]], **_) -> list[float]:
    """Share of the checks passed: reasoning well formed (three non-empty levels in order) and
    closed; items present, all in the catalog, no repeats, none from the history."""
    out = []
    for completion, history in zip(completions, histories):
        items, seen = completion.items, set(history)
        checks = [bool(items), all(i in codes for i in items), len(set(items)) == len(items),
                  not (set(items) & seen)]
        if completion.thinking:
            checks += [well_formed(completion.reasoning + THINK_END), completion.closed]
        out.append(sum(checks) / len(checks))
    return out


def satisfies(item: ItemFacts, request: Request, liked: ItemFacts | None = None) -> bool:
    """Does a catalog item meet what the user asked for?"""
    categories = set(item.categories)
    if request.categories and not categories & set(request.categories):
        return False
    if request.decade and decade_of(item.year) != request.decade:
        return False
    if request.avoid and categories & set(request.avoid):
        return False
    if liked is not None and (item.item_id == liked.item_id or not categories & set(liked.categories)):
        return False
    return True


def instruction_following(completions: Sequence[Completion], requests: Sequence[Request | None],
                          facts: dict[str, ItemFacts], k: int = 5, **_) -> list[float]:
    by_title = {f.title.lower(): f for f in facts.values()}
    out = []
    for completion, request in zip(completions, requests):
        top = [facts[i] for i in completion.items[:k] if i in facts]
        if request is None or not top:
            out.append(0.0)
            continue
        liked = by_title.get(request.like_title.lower()) if request.like_title else None
        out.append(sum(satisfies(item, request, liked) for item in top) / len(top))
    return out


def target_likelihood(completions: Sequence[Completion], **_) -> list[float]:
    """Per-token geometric-mean probability of the target's SID after the reasoning, in [0, 1]
    (``extra["target_logprob"]`` summed over the SID tokens, ``extra["target_tokens"]`` of them)."""
    return [math.exp(c.extra["target_logprob"] / c.extra["target_tokens"]) if "target_logprob" in c.extra else 0.0
            for c in completions]


def level3_match(completions: Sequence[Completion], targets: Sequence[str], facts: dict[str, ItemFacts],
                 **_) -> list[float]:
    """Half for each: the share of level 3's stated categories that are the target's (a precision,
    so naming every category earns nothing), and its stated decade being the target's. 0 without
    reasoning or without a statement."""
    vocabulary = sorted({c for item in facts.values() for c in item.categories})
    out = []
    for completion, target in zip(completions, targets):
        said = parse_reasoning(completion.reasoning).get("recommendation", "") if completion.reasoning else ""
        categories, decade = stated_attributes(said, vocabulary) if said else ([], None)
        truth = facts.get(target)
        if truth is None:
            out.append(0.0)
            continue
        hits = sum(c in truth.categories for c in categories) / len(categories) if categories else 0.0
        out.append(0.5 * hits + 0.5 * (decade is not None and decade == decade_of(truth.year)))
    return out


REWARDS: dict[str, Callable[..., list[float]]] = {
    "rank": rank_hit, "prefix": prefix_credit, "format": format_reward, "instruction": instruction_following,
    "likelihood": target_likelihood, "level3": level3_match,
}


def combine(completions: Sequence[Completion], weights: dict[str, float], **batch) -> tuple[list[float], dict[str, list[float]]]:
    """Weighted sum of the named rewards (weight 0 skips one); also each reward's values for logging."""
    parts = {name: REWARDS[name](completions, **batch) for name, w in weights.items() if w}
    total = [sum(weights[name] * values[i] for name, values in parts.items()) for i in range(len(completions))]
    return total, parts
