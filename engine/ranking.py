"""Ranking: the top-K admissible items for a prompt that ends with ``<|item_begin|>``. Exact (every
admissible item scored) when the request narrows the catalog enough, beam search over the SID steps
otherwise; the item head's log-probability beside the SID path's; two views of the history for the
direct answer; thinking mode's fusion of the reasoned and direct views; level 3's statement as a floor
on the items shown. The settings live here, one place, and callers tune them on ``Recommender.ranker``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from engine.constraints import Constraints, Facets
from engine.decoding import RankedItem, admissible_tree
from engine.prompt import stated_attributes


@dataclass(frozen=True)
class ThinkRank:
    """How thinking mode turns beams into a ranking.

    ``reasoned``: the beams that follow the reasoning, as they come. ``race``: the reasoned beams
    and the direct (non-thinking) beams merged by rank (OneReason's Race). ``fused`` (default): the
    union of both beam sets, each candidate scored under both contexts,
    ``log p(item | history) + weight * log p(item | history, reasoning) - contrast * log p(item | reasoning)``;
    ``contrast`` > 0 is the linguistic-inertia calibration (what the reasoning predicts by itself is
    taken out). The weights are set by measurement: contrast 0.5 helped while the model wrote the
    reasoning (docs/RESULTS.md, issue 13); since the engine writes levels 1-2 from the whole history,
    what the reasoning predicts by itself is information the prompt's window lacks, and taking it out
    cost 9 % on all 943 ML-100K valid users (0.1102 without, 0.0999 at 0.5; docs/RESULTS.md, #s40),
    so the default has none, and the reasoning-alone view is not run."""
    mode: str = "fused"
    weight: float = 0.5
    contrast: float = 0.0

    def __post_init__(self):
        if self.mode not in THINK_RANKS:
            raise ValueError(f"unknown thinking rank '{self.mode}' (choose from {', '.join(THINK_RANKS)})")


THINK_RANKS = ("reasoned", "race", "fused")


def _union(first: list[list[RankedItem]], second: list[list[RankedItem]]) -> list[list[RankedItem]]:
    """Per user, the candidates of two beam searches, each item once."""
    return [list({i.item_id: i for i in list(a) + list(b)}.values()) for a, b in zip(first, second)]


def race(first: Sequence[RankedItem], second: Sequence[RankedItem], k: int) -> list[RankedItem]:
    """Two rankings merged by rank: an item takes its better rank of the two (ties: the smaller sum
    of ranks, then ``first`` before ``second``)."""
    rank_a = {i.item_id: r for r, i in enumerate(first)}
    rank_b = {i.item_id: r for r, i in enumerate(second)}
    missing = len(first) + len(second)
    by_id = {i.item_id: i for i in list(second) + list(first)}

    def key(item_id):
        a, b = rank_a.get(item_id, missing), rank_b.get(item_id, missing)
        return (min(a, b), a + b, a)

    return [by_id[i] for i in sorted(by_id, key=key)[:k]]


# Weight of the item head's log-probability beside the SID path's (chosen on ML-100K valid, docs/RESULTS.md
# issue 25). Exact ranking's budget, in forward steps (one per distinct admissible prefix), is by
# default EXACT_FACTOR times the rows beam search itself forwards (num_beams per SID level after the
# first): 400 for 20 beams over 3 levels. Measured on 2 cores, exact ranking costs about what beam
# search with the head does at that size, so a request that narrows the catalog (a genre and a
# decade) is ranked exactly, while the whole unseen ML-100K catalog (~830 steps) goes to the beams
# plus the head's favourites, which scored the same NDCG on valid at 0.6x the latency.
DEFAULT_HEAD_WEIGHT = 1.0
EXACT_FACTOR = 10
DEFAULT_EXACT_STEPS = None      # None: sized as above; 0: never exact
# Weight of the transition counts' log-probability (engine.interests.Transitions.log_prior, the
# dataset's training sequences) beside the model's score, in both modes; chosen on ML-100K valid
# (docs/RESULTS.md, issue 27).
TRANSITION_PRIOR_WEIGHT = 0.25
DEFAULT_FOLLOW_WEIGHT = 0.5


class Ranker:
    """Ranks admissible items for prompts through ``backend``. ``trie`` and ``filter_for`` decide
    what is admissible; ``head`` (the model's item-ID head, or None) and ``sid_depth`` size the
    scores and the exact budget; ``facets`` lets ``follow`` read an item's attributes."""

    def __init__(self, backend, trie, filter_for, head=None, sid_depth: int = 1, facets: Facets | None = None,
                 follow_weight: float = DEFAULT_FOLLOW_WEIGHT, follow_share: float = 0.8, think_rank: ThinkRank | None = None,
                 recent_view: int = 0, recent_weight: float = 0.5, head_weight: float = DEFAULT_HEAD_WEIGHT,
                 exact_steps: int | None = DEFAULT_EXACT_STEPS):
        self.backend, self.trie, self.filter_for = backend, trie, filter_for
        self.head, self.sid_depth, self.facets = head, sid_depth, facets
        self.vocabulary = set(facets.vocabulary) if facets is not None else set()
        # Soft prior toward level 3's attributes (see follow). It cost 6-16 % while level 3 was the
        # model's own guess; since level 3 leads with the predicted category it gains (ML-100K valid,
        # 300 users: 0.1078 -> 0.1151 at 0.5, 0.1137 at 0.25; docs/RESULTS.md, issue 27).
        self.follow_weight = follow_weight
        # Floor on the shown items that carry them (see follow). 0.8 by measurement: on all 943 ML-100K
        # valid users it cost no NDCG@10 (0.0597 vs 0.0596) where the soft prior cost 6-16 %.
        self.follow_share = follow_share
        # Non-thinking ranking from two views of the history: the whole prompt, and only its latest
        # ``recent_view`` items (0: one view). Candidates are both views' beams, scored
        # log p(i | history) + recent_weight * log p(i | latest items). See rank_direct.
        self.recent_view, self.recent_weight = recent_view, recent_weight
        self.think_rank = think_rank or ThinkRank()  # how thinking mode ranks its candidates (see rank_thinking)
        # score = log p(SID path) + head_weight * log p_head(item), the item-ID head's memorisation
        # beside the SID's generalisation (0: SID only, or no head); every admissible item is scored
        # exactly when its prefix tree needs at most exact_steps forward steps.
        self.head_weight = head_weight if head is not None else 0.0
        self.exact_steps = exact_steps
        # Decode-time prior from a second model (an option, off by default): ``prior(histories)`` gives
        # each history a {item_id: log-probability} map, and ranking adds prior_weight times it. The
        # engine cannot import the teachers (training/ sits above it): the caller hands the callable in.
        self.prior, self.prior_weight, self.prior_name = None, 0.0, ""

    def use_transitions(self, transitions, catalog_size: int, weight: float = TRANSITION_PRIOR_WEIGHT) -> None:
        """Rank with the catalog's item-to-item transition counts as the prior (weight 0: off)."""
        self.prior = lambda histories: [transitions.log_prior(list(h), catalog_size) for h in histories]
        self.prior_weight, self.prior_name = weight, "transitions"

    def priors(self, histories: Sequence[Sequence[str]]) -> list[dict] | None:
        """The second model's prior for each history (None: no prior set)."""
        return self.prior(histories) if self.prior is not None and self.prior_weight else None

    def rank_items(self, prompts: list[list[int]], excludes: Sequence[set], constraints: Sequence[Constraints | None],
                   k: int, num_beams: int, batch_size: int, priors: Sequence[dict] | None = None,
                   scored: list[dict] | None = None) -> tuple[list[list[RankedItem]], list[dict]]:
        """Top ``k`` admissible items per prompt (each prompt ends with ``<|item_begin|>``), ranked by
        ``log p(SID path) + head_weight * log p_head(item)``, and how each list was made.

        Exact when the admissible items' prefix tree needs at most ``exact_steps`` forward steps
        (and the backend scores trees): every admissible item gets its full score, nothing is
        pruned. Otherwise beam search over the SID steps; with a head, the head's ``num_beams`` best
        admissible items join the beams and all are re-scored on the same scale.
        ``priors`` (one {item: log p} per prompt): a second model's prior, added with ``prior_weight``.
        ``scored``: a list, filled with one {item: score} per prompt, every item this ranking scored,
        before the prior (so a later view of the same prompt need not score them again)."""
        filters = [self.filter_for(c) for c in constraints]
        budget = self.exact_budget(num_beams)
        can_exact = budget > 0 and hasattr(self.backend, "score_trees")
        trees = [admissible_tree(self.trie, e, f, budget) if can_exact else None
                 for e, f in zip(excludes, filters)]
        ranked: list[list[RankedItem]] = [[] for _ in prompts]
        info = [{"method": "exact" if t is not None else "beam", "budget": budget,
                 "head_weight": self.head_weight, "steps": t.steps if t is not None else None,
                 "admissible": len(t.items) if t is not None else None} for t in trees]
        if priors is not None:
            for entry in info:
                entry["prior"], entry["prior_weight"] = self.prior_name or "second model", self.prior_weight

        seen: list[dict] = [{} for _ in prompts]      # every score computed, before the prior

        def with_prior(i: int, pool: list[RankedItem]) -> list[RankedItem]:
            seen[i] = {r.item_id: r.score for r in pool}
            return self.add_prior(pool, priors[i] if priors is not None else None)[:k]

        exact = [i for i, t in enumerate(trees) if t is not None]
        if exact:
            tree_scores = self.backend.score_trees([prompts[i] for i in exact], [trees[i] for i in exact],
                                                   self.head_weight, batch_size)
            for i, scores in zip(exact, tree_scores):
                tree = trees[i]
                ranked[i] = with_prior(i, [RankedItem(item, float(score), path)
                                           for item, score, path in zip(tree.items, scores, tree.paths)])
        rest = [i for i, t in enumerate(trees) if t is None]
        if rest:
            wide = self.head_weight or priors is not None
            beams = self.backend.beam_search([prompts[i] for i in rest], [excludes[i] for i in rest],
                                             k=max(k, num_beams) if wide else k, num_beams=num_beams,
                                             batch_size=batch_size, constraints=[constraints[i] for i in rest])
            if self.head_weight:
                # The head's own favourites join the beams (beam search may have pruned their prefixes).
                admissible = [self._admissible(excludes[i], filters[i]) for i in rest]
                items, paths, scores = self.backend.score_with_head([prompts[i] for i in rest],
                                                                   [[r.item_id for r in pool] for pool in beams],
                                                                   self.head_weight, admissible, num_beams, batch_size)
                beams = [[RankedItem(i, float(x), tuple(p)) for i, p, x in zip(a, b, c)]
                         for a, b, c in zip(items, paths, scores)]
            for i, items in zip(rest, beams):
                ranked[i] = with_prior(i, items)
        if scored is not None:
            scored[:] = seen
        return ranked, info

    def add_prior(self, pool: list[RankedItem], prior) -> list[RankedItem]:
        """``pool`` best first, each score plus ``prior_weight`` × the prior's log-probability of the
        item (``prior.get(item_id)``; an item it does not know gets the pool's lowest). None: as is."""
        if prior is not None:
            said = [prior.get(str(r.item_id)) for r in pool]
            floor = min((x for x in said if x is not None), default=0.0)
            pool = [RankedItem(r.item_id, r.score + self.prior_weight * (floor if x is None else x), r.token_ids)
                    for r, x in zip(pool, said)]
        return sorted(pool, key=lambda r: -r.score)

    def exact_budget(self, num_beams: int) -> int:
        """Forward steps exact ranking may take: ``exact_steps``, or EXACT_FACTOR × the beam's own rows."""
        if self.exact_steps is not None:
            return self.exact_steps
        return EXACT_FACTOR * num_beams * max(1, self.sid_depth - 1)

    def _admissible(self, exclude: set, restrict) -> callable:
        """Whether an item may be recommended: unseen, known to the trie, inside the filter."""
        return lambda item: item not in exclude and item in self.trie and (restrict is None or restrict.allows(item))

    def rank_direct(self, prompts: list[list[int]], recent: list[list[int]], excludes, constraints, k: int,
                    num_beams: int, batch_size: int, priors: Sequence | None = None) -> list[list[RankedItem]]:
        """Non-thinking top ``k`` from two views: the beams of the full prompt and of the latest
        items alone, each candidate scored ``log p(i | prompt) + recent_weight * log p(i | recent)``
        (teacher-forced, the beams' own scores). Every candidate is a beam of one of the two
        searches, so it satisfies the same exclusions and constraints."""
        full = self.backend.beam_search(prompts, excludes, k=num_beams, num_beams=num_beams, batch_size=batch_size,
                                        constraints=constraints)
        short = self.backend.beam_search(recent, excludes, k=num_beams, num_beams=num_beams, batch_size=batch_size,
                                         constraints=constraints)
        views = [(prompts, 1.0, True, None), (recent, self.recent_weight, True, None)]
        pools = self._score_pools(_union(full, short), views, batch_size)
        return [self.add_prior(pool, priors[i] if priors is not None else None)[:k] for i, pool in enumerate(pools)]

    def _score_pools(self, pools: list[list[RankedItem]], views: list[tuple], batch_size: int) -> list[list[RankedItem]]:
        """Each user's candidates scored as the weighted sum of their teacher-forced
        log-probabilities under each view (prompts, weight, whether the item head adds its
        ``head_weight`` × log-probability there, and the scores already known under those prompts,
        one {item: score} per user, or None), best first. A view runs the model only for the users
        whose candidates it does not all know."""
        totals = [[0.0] * len(pool) for pool in pools]
        for prompts, weight, with_head, known in views:
            if not weight:
                continue
            known = known if known is not None and len(known) == len(pools) else [{} for _ in pools]
            scores = [[k.get(i.item_id) for i in pool] for pool, k in zip(pools, known)]
            todo = [u for u, row in enumerate(scores) if None in row]
            if todo:
                extra = {"head_weight": self.head_weight} if with_head and self.head_weight else {}
                fresh = self.backend.score_paths([prompts[u] for u in todo],
                                                 [[list(i.token_ids) for i in pools[u]] for u in todo], batch_size, **extra)
                for u, row in zip(todo, fresh):
                    scores[u] = row
            for total, row in zip(totals, scores):
                total[:] = [t + weight * x for t, x in zip(total, row)]
        return [sorted((RankedItem(item.item_id, score, item.token_ids) for item, score in zip(pool, total)),
                       key=lambda item: -item.score) for pool, total in zip(pools, totals)]

    def rank_thinking(self, how: ThinkRank, reasoned: list[list[RankedItem]], direct_prompts: list[list[int]],
                      reasoned_prompts: list[list[int]], alone_prompts: list[list[int]], excludes, constraints,
                      num_beams: int, batch_size: int, priors: Sequence | None = None,
                      reasoned_scored: Sequence[dict] | None = None) -> list[list[RankedItem]]:
        """Thinking mode's candidates, best first (``how``: ThinkRank); the caller keeps the top ``k``.
        ``alone_prompts``: each user's reasoning without the history (the contrast view). Every
        candidate is a beam of one of the two searches, so it satisfies the same exclusions and
        constraints. ``reasoned_scored``: what ranking ``reasoned`` already scored under
        ``reasoned_prompts`` (``rank_items``' ``scored``); a view that knows every candidate's score
        is not run again (exact ranking scores every admissible item, so both views are known)."""
        if how.mode == "reasoned":
            return [list(beams) for beams in reasoned]
        direct_scored: list[dict] = []
        direct, _ = self.rank_items(direct_prompts, excludes, constraints, k=num_beams, num_beams=num_beams,
                                    batch_size=batch_size, priors=priors, scored=direct_scored)
        if how.mode == "race":
            return [race(a, b, len(a) + len(b)) for a, b in zip(reasoned, direct)]
        # Each view scores as rank_items does (SID path + the head), so a row's score is the sum of the
        # scores its views rank by.
        views = [(direct_prompts, 1.0, True, direct_scored), (reasoned_prompts, how.weight, True, reasoned_scored)]
        if how.contrast:
            views.append((alone_prompts, -how.contrast, True, None))
        pools = self._score_pools(_union(reasoned, direct), views, batch_size)
        return [self.add_prior(pool, priors[i] if priors is not None else None) for i, pool in enumerate(pools)]

    def follow(self, items: list[RankedItem], recommendation: str, weight: float = 0.0, share: float = 0.0,
               shown: int = 10) -> list[RankedItem]:
        """Items follow what level 3 states (its categories and decade), two ways, both measured
        (docs/RESULTS.md, issue 13); ``recommend`` passes the settings (``follow_weight``, ``follow_share``):

        - ``weight``, a soft prior: each candidate's log-probability gains ``weight`` per stated
          attribute it carries, and all are re-ranked;
        - ``share``, a floor: at least that share of the first ``shown`` items carry a stated
          attribute. Walking the model's order, the first candidates that carry none keep their
          places while the allowance lasts (the model's strongest beliefs outside the statement);
          the others move below the first ``shown``.

        0 and 0 leave the model's order."""
        if not (weight or share) or self.facets is None or not items:
            return items
        categories, decade = stated_attributes(recommendation, self.vocabulary)
        if not categories and decade is None:
            return items

        def hits(item: RankedItem) -> int:
            have = set(self.facets.categories_of(str(item.item_id)))
            year = self.facets.year_of(str(item.item_id))
            return len(have & set(categories)) + int(decade is not None and year is not None and year // 10 * 10 == decade)

        if weight:
            # The bonus joins the score, so the score an item card shows is the one it was ranked by.
            items = sorted((RankedItem(i.item_id, i.score + weight * hits(i), i.token_ids) for i in items),
                           key=lambda item: -item.score)
        if not share:
            return items
        allowance = int(shown * (1 - share) + 1e-9)
        front = []
        for item in items:
            if len(front) == shown:
                break
            if hits(item) or allowance > 0:
                allowance -= 0 if hits(item) else 1
                front.append(item)
        placed = {id(i) for i in front}
        return front + [i for i in items if id(i) not in placed]
