"""Levels 1-2 of the reasoning, read from the data: a user's interests and how each moves in time.

    reader = InterestReader(items, embeddings, cite=title_of)     # items: item_id -> ItemFacts
    reading = reader.read(history)                                # history in time order, oldest first
    reading.derivation, reading.evolution                         # the two level texts
    check_trends(derivation, evolution, history, items)           # (statements checked, statements true)

The reader reads the user's long history (the latest ``read_items`` of it, not only the prompt's
window), clusters it in embedding space and names each cluster by the attributes that set it apart
in this catalog (measured information against the catalog's base rates, so an era most of the
catalog shares is not named). The training teacher writes levels 1-2 with it, and the engine writes
the same text at serving time: the statements are facts about the history, true by construction.

Trends have definitions (:func:`trend_of`) over the history's time order. An interest's items are the
history items that carry its whole name (every named category, and the era when one is named), so
anyone can recount them from the text and the history; :func:`check_trends` does exactly that.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from engine.prompt import NO_HISTORY_DERIVATION, NO_HISTORY_EVOLUTION

# The trends, by definition over the interest's positions in the time-ordered history of n items
# (thirds: early [0, n//3), middle [n//3, n - ceil(n/3)), latest [n - ceil(n/3), n)):
#   fading    none of its items in the latest third;
#   new       all of its items in the latest third (and the history is longer than that third);
#   returning at least 3 items, early and latest, none in the middle third (of at least MIN_GAP items);
#   growing   its rate in the latest third is at least RATE_CHANGE times its rate before;
#   cooling   its rate in the latest third is at most 1 / RATE_CHANGE times its rate before;
#   steady    otherwise.
TRENDS = ("steady", "growing", "cooling", "new", "fading", "returning")
RATE_CHANGE = 1.5
MIN_GAP = 3
# How level 3 describes the served interest, by its trend.
TREND_PHRASE = {"steady": "the steady interest", "growing": "the growing interest",
                "cooling": "a cooling interest", "new": "the new interest", "fading": "an older interest",
                "returning": "a returning interest"}

SAME_THEME = 0.6       # cosine (catalog-centred) above which two items are one theme, not two interests
NOISE_FLOOR = 0.15      # cosine to the own centroid (catalog-centred space) below which an item fits nothing
NOISE_Z = -2.5          # ... or this far below its cluster's typical cosine
MIN_NAME_SHARE = 0.35   # a category names an interest only if this share of its members has it
PAIR_SHARE = 0.5        # a second category joins the name only if this share of the members has both
ERA_SHARE = 0.6         # an era names an interest only if this share of its members is inside it ...
ERA_INFORMATION = 0.5   # ... and it tells at least this fraction of what the first category tells
MAX_EVIDENCE = 3
MAX_SET_ASIDE = 3
LITTLE_HISTORY = 3      # fewer history items than this: the levels say plainly how little there is
# The reader's budget: the latest items it reads. Clustering is quadratic in it; 400 items take about
# 20 ms on one core (docs/RESULTS.md, issue 27), and 95 % of ML-100K users have fewer.
READ_ITEMS = 400



@dataclass(frozen=True)
class ItemFacts:
    item_id: str
    title: str
    year: int | None
    categories: tuple[str, ...]   # genres for movies, category path for products
    row: int                      # row of this item in the embeddings matrix


@dataclass
class Interest:
    name: str                       # "Sci-Fi, Action, 1970s-1980s"
    categories: tuple[str, ...]     # the 1-2 categories that set it apart
    era: str                        # "1950s", "1970s-1980s", or "" when the era says nothing here
    members: list[int]              # positions (time order) of the history items that carry the whole name
    evidence: list[str]             # up to 3 titles of the members closest to the centroid
    trend: str                      # one of TRENDS
    latest: int                     # members in the latest third
    latest_size: int                # size of the latest third
    direction: str                  # "moving from 1970s toward 1990s releases" or ""
    weight: float                   # share of the read history
    decades: tuple[int, ...] = ()   # distinct decades of the members, for matching requests
    evidence_ids: list[str] = field(default_factory=list)   # the evidence as item ids (same order)
    centroid: np.ndarray = field(default=None, repr=False, compare=False)  # unit vector, centred space


@dataclass
class Reading:
    interests: list[Interest]
    set_aside: list[str]            # item ids that fit no interest, most recent first
    derivation: str
    evolution: str
    size: int                       # history items read


def decade_of(year: int | None) -> int | None:
    return None if year is None else (year // 10) * 10


@lru_cache(maxsize=4096)
def era_range(era: str) -> tuple[int, int] | None:
    """"1970s-1980s" -> (1970, 1989); "" -> None."""
    found = re.findall(r"(\d{3,4})s", era)
    if not found:
        return None
    return int(found[0]), int(found[-1]) + 9


def _era(decades: list[int]) -> str:
    """One decade when most members share it, else the range without the outer 10% on each side."""
    if not decades:
        return ""
    top, count = Counter(decades).most_common(1)[0]
    if count >= ERA_SHARE * len(decades):
        return f"{top}s"
    ordered = sorted(decades)
    trim = int(round(0.1 * (len(ordered) - 1)))
    low, high = ordered[trim], ordered[-1 - trim]
    return f"{low}s" if low == high else f"{low}s-{high}s"


def normalize_title(title: str) -> str:
    text = re.sub(r"[^0-9a-z]+", " ", title.lower()).strip()
    return re.sub(r"^(the|a|an) ", "", text)


def by_recency(interests: Sequence[Interest], size: int) -> list[int]:
    """Interest indices, most recently active first (members weighted by their position)."""
    score = [float(sum(p + 1 for p in it.members)) / max(size, 1) for it in interests]
    return sorted(range(len(interests)), key=lambda i: (-round(score[i], 6), i))


def request_terms(constraints) -> tuple[set[str], set[str], set[int], bool]:
    """An engine ``Constraints``'s (wanted categories, avoided ones, asked decades, structured?):
    what :func:`serving_lead` matches interests against. A "more like" title adds its categories
    through the caller; a year range spanning more than three decades asks no decade."""
    if constraints is None:
        return set(), set(), set(), False
    wanted = {c for group in constraints.want for c in group}
    low, high = constraints.year_min, constraints.year_max
    decades: set[int] = set()
    if low is not None or high is not None:
        low, high = (low if low is not None else high), (high if high is not None else low)
        if high - low <= 30:
            decades = set(range(low // 10 * 10, high // 10 * 10 + 1, 10))
    structured = bool(wanted or low is not None or high is not None or constraints.like_title)
    return wanted, set(constraints.avoid), decades, structured


def carries(facts: ItemFacts, categories: Sequence[str], era: str) -> bool:
    """Whether an item carries an interest's whole name."""
    if not set(categories) <= set(facts.categories):
        return False
    span = era_range(era)
    return span is None or (facts.year is not None and span[0] <= facts.year <= span[1])


def thirds(n: int) -> tuple[int, int]:
    """Where the middle and the latest third of n time-ordered items start."""
    return n // 3, n - math.ceil(n / 3)


def trend_of(positions: Sequence[int], n: int) -> tuple[str, int, int]:
    """(trend, members in the latest third, size of the latest third) by the definitions above."""
    middle, latest = thirds(n)
    m = len(positions)
    recent = sum(p >= latest for p in positions)
    size = n - latest
    if recent == 0:
        return "fading", 0, size
    if recent == m and latest > 0:
        return "new", recent, size
    early = sum(p < middle for p in positions)
    if m >= 3 and early and recent + early == m and latest - middle >= MIN_GAP:
        return "returning", recent, size
    rate_recent, rate_before = recent / size, (m - recent) / max(latest, 1)
    if rate_recent >= RATE_CHANGE * rate_before:
        return "growing", recent, size
    if rate_recent * RATE_CHANGE <= rate_before:
        return "cooling", recent, size
    return "steady", recent, size


def _direction(years: list[int]) -> str:
    """Release decade of the early vs the late half of the members (in time order), when it moves."""
    if len(years) < 4:
        return ""
    half = len(years) // 2
    early = decade_of(int(statistics.median(years[:half])))
    late = decade_of(int(statistics.median(years[len(years) - half:])))
    return "" if early == late else f"moving from {early}s toward {late}s releases"


def evolution_sentence(number: int, it: Interest) -> str:
    text = f"({number}) {it.trend}, {it.latest} of its {len(it.members)} items in the latest {it.latest_size}"
    return text + (f", {it.direction}." if it.direction else ".")


class Transitions:
    """Item-to-item relations counted over the catalog's known sequences: which item came right
    after which, for every user (no learning). ``scores`` are the votes a history's latest ``order``
    items cast for what comes next (the latest counts most: weight 1/lag). The ``markov`` baseline
    ranks by them (training/transitions.py); level 3 reads where they lead (next_categories)."""

    def __init__(self, order: int = 3):
        self.order = order
        self.following: dict[str, Counter] = {}
        self.popularity: Counter = Counter()
        self.total = 1                      # items counted in popularity (1 while empty: never divide by 0)

    def fit(self, sequences: Iterable[Sequence[str]]) -> Transitions:
        following: dict[str, Counter] = defaultdict(Counter)
        popularity: Counter = Counter()
        for sequence in sequences:
            popularity.update(sequence)
            for before, after in zip(sequence, sequence[1:]):
                following[before][after] += 1
        self.following, self.popularity = dict(following), popularity
        self.total = sum(popularity.values()) or 1
        return self

    def scores(self, history: Sequence[str]) -> Counter:
        votes: Counter = Counter()
        for lag, item in enumerate(reversed(history[-self.order:]), start=1):
            for after, count in self.following.get(item, {}).items():
                votes[after] += count / lag
        return votes

    def log_prior(self, history: Sequence[str], catalog_size: int) -> TransitionPrior:
        """log p(next item) by the counts: the history's votes, with each item's popularity share as
        a small floor (never log 0), normalised over a catalog of ``catalog_size`` items. Computed
        per item when asked, so a large catalog costs only the candidates ranked."""
        votes = self.scores(history)
        return TransitionPrior(votes, self, sum(votes.values()) + 1 + 1e-6 * catalog_size)


@dataclass
class TransitionPrior:
    """One history's ``Transitions.log_prior``: ``get(item)`` is its log-probability."""
    votes: Counter
    counts: Transitions
    norm: float

    def get(self, item: str) -> float:
        share = self.counts.popularity.get(item, 0) / self.counts.total
        return math.log((self.votes.get(item, 0.0) + share + 1e-6) / self.norm)


# Level 3's window: the latest items whose categories it weighs (the issue's no-learning rule reads
# as many), beside where the transitions from them lead.
NEXT_WINDOW = 10


def next_categories(items: dict[str, ItemFacts], transitions: Transitions | None, history: Sequence[str],
                    window: int = NEXT_WINDOW) -> list[str]:
    """The categories the next item is likely to carry, best first: each category's share of the
    latest ``window`` items, plus its share of where those items led other users (the items the
    transition table votes for, the history's own left out; ``transitions`` None: the window
    alone). Ties go to the more recent. On ML-100K valid this names a category of the held-out
    item for 0.454 of users, against 0.427 for the window alone (docs/experiments/next_category.py;
    docs/RESULTS.md, issue 27)."""
    known = [i for i in history if i in items]
    latest = known[-window:][::-1] if window else known[::-1]
    score: Counter = Counter()
    order: dict[str, int] = {}
    for item in latest:
        for c in items[item].categories:
            score[c] += 1.0 / len(latest)
            order.setdefault(c, len(order))
    if transitions is not None:
        seen = set(known)
        votes = {i: v for i, v in transitions.scores(known).items() if i not in seen and i in items}
        total = sum(votes.values())
        for item, vote in votes.items():
            for c in items[item].categories:
                score[c] += vote / total
                order.setdefault(c, len(order))
    return sorted(score, key=lambda c: (-round(score[c], 9), order[c]))


class InterestReader:
    def __init__(self, items: dict[str, ItemFacts], embeddings: np.ndarray, cite: Callable[[str], str] | None = None,
                 read_items: int = READ_ITEMS, max_interests: int = 4, transitions: Transitions | None = None):
        self.items = items
        self.transitions = transitions      # item-to-item relations for level 3 (None: the window alone)
        # How levels 1-2 cite an item: its title by default; the model's corpora and the engine cite
        # item spans (people see each span rendered as its title).
        self.cite = cite or (lambda item_id: self.items[item_id].title)
        self.embeddings = embeddings
        self.read_items = read_items
        self.max_interests = max_interests
        # Sentence embeddings share a large common direction (any two movies have cosine ~0.45), which
        # hides the themes; clustering happens on embeddings with the catalog mean removed.
        self.mean = embeddings.astype(np.float64).mean(axis=0).astype(np.float32)
        counts = Counter(c for facts in items.values() for c in set(facts.categories))
        self.base_rate = {c: n / max(len(items), 1) for c, n in counts.items()}
        years = np.asarray(sorted(f.year for f in items.values() if f.year is not None), dtype=np.int64)
        self._years = years

    @classmethod
    def from_table(cls, item_ids: Sequence[str], titles: Sequence[str], years: Sequence[int | None],
                   categories: Sequence[Sequence[str]], embeddings: np.ndarray, **options) -> InterestReader:
        """A reader over a catalog's tables, all in catalog row order (the embeddings' rows)."""
        items = {str(i): ItemFacts(str(i), t, y, tuple(c), row)
                 for row, (i, t, y, c) in enumerate(zip(item_ids, titles, years, categories))}
        return cls(items, np.asarray(embeddings, dtype=np.float32), **options)

    def facts_titled(self, title: str) -> ItemFacts | None:
        """The first catalog item with this title (case and punctuation ignored), or None."""
        if not hasattr(self, "_by_title"):
            self._by_title = {}
            for facts in sorted(self.items.values(), key=lambda f: -f.row):
                self._by_title[normalize_title(facts.title)] = facts
        return self._by_title.get(normalize_title(title))

    def era_base(self, era: str) -> float:
        """Share of the catalog's dated items inside an era."""
        span = era_range(era)
        if span is None or not len(self._years):
            return 1.0
        inside = np.searchsorted(self._years, span[1], side="right") - np.searchsorted(self._years, span[0])
        return max(float(inside) / len(self._years), 1e-6)

    # -- clustering --------------------------------------------------------------------------
    def _centred(self, rows: list[int]) -> np.ndarray:
        vectors = self.embeddings[rows] - self.mean
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-8)

    def _clusters(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Spherical k-means with density-weighted farthest-point init: (labels, centroids)."""
        n = len(vectors)
        k = min(1 if n < 5 else 2 if n < 12 else 3 if n < 40 else self.max_interests, n)
        sims = vectors @ vectors.T
        top = min(3, n - 1)
        # Density: mean cosine to the 3 nearest others; it keeps a lone outlier from seeding a
        # cluster while a dense distant group still gets one.
        if top:
            largest = np.partition(sims, n - 1 - top, axis=1)[:, n - 1 - top:]     # itself and its top nearest
            density = (largest.sum(axis=1) - largest.max(axis=1)) / top
        else:
            density = np.zeros(n)
        chosen = [int(np.argmax(density))]
        while len(chosen) < k:
            nearest = sims[:, chosen].max(axis=1)
            score = (1.0 - nearest) * (1.0 + density) / 2.0
            score[chosen] = -1.0
            best = int(np.argmax(score))
            if nearest[best] > SAME_THEME:
                break     # every item is close to a seed already: more seeds would split one theme
            chosen.append(best)
        centroids = vectors[chosen]
        labels = None
        for _ in range(10):
            assigned = np.argmax(vectors @ centroids.T, axis=1)
            if labels is not None and np.array_equal(assigned, labels):
                break
            kept = np.unique(assigned)          # a centroid that lost all its members is dropped
            sums = np.stack([vectors[assigned == c].sum(axis=0) for c in kept])
            centroids = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-8)
            labels = np.searchsorted(kept, assigned)
        return labels, centroids

    # -- naming ------------------------------------------------------------------------------
    def name(self, facts: list[ItemFacts]) -> tuple[tuple[str, ...], str]:
        """The categories and the era that set a group apart in this catalog, by information
        (share * log(share / base rate)): a second category only when most members carry both, an
        era only when it tells at least ERA_INFORMATION of what the first category tells."""
        counts = Counter(c for f in facts for c in set(f.categories))
        scored = []
        for category, count in counts.items():
            share = count / len(facts)
            base = self.base_rate.get(category, share)
            if share > base and share >= MIN_NAME_SHARE:
                scored.append((share * math.log(share / base), share, category))
        scored.sort(key=lambda s: (-s[0], s[2]))
        if not scored:
            return (), ""
        categories = [scored[0][2]]
        for info, share, category in scored[1:2]:
            both = sum(categories[0] in f.categories and category in f.categories for f in facts) / len(facts)
            if both >= PAIR_SHARE and info >= 0.5 * scored[0][0]:
                categories.append(category)
        era = _era([decade_of(f.year) for f in facts if f.year is not None])
        span = era_range(era)
        if span is not None:
            share = sum(f.year is not None and span[0] <= f.year <= span[1] for f in facts) / len(facts)
            base = self.era_base(era)
            if share < ERA_SHARE or share <= base or share * math.log(share / base) < ERA_INFORMATION * scored[0][0]:
                era = ""
        return tuple(categories), era

    # -- reading -----------------------------------------------------------------------------
    def read(self, history: Sequence[str], timestamps: Sequence[float] | None = None) -> Reading:
        """Levels 1-2 over the latest ``read_items`` history items (time order: ``timestamps`` when
        given, ties kept in the history's order; else the history's own order)."""
        known = [i for i in history if i in self.items]
        if timestamps is not None:
            if len(timestamps) != len(history):
                raise ValueError(f"{len(history)} history items but {len(timestamps)} timestamps")
            order = sorted(range(len(history)), key=lambda p: (timestamps[p], p))
            known = [history[p] for p in order if history[p] in self.items]
        known = known[-self.read_items:] if self.read_items else known
        if not known:
            return Reading([], [], NO_HISTORY_DERIVATION, NO_HISTORY_EVOLUTION, 0)
        if len(known) < LITTLE_HISTORY:
            return self._little(known)
        interests, set_aside = self._interests(known)
        return Reading(interests, set_aside, self.derivation_text(interests, set_aside, len(known)),
                       evolution_text(interests), len(known))

    def _little(self, known: list[str]) -> Reading:
        """One or two items: what they show, in whole sentences, and no trend."""
        facts = [self.items[i] for i in known]
        shared = set.intersection(*(set(f.categories) for f in facts))
        categories = tuple(c for c in facts[0].categories if c in shared)[:2]
        cited = ", ".join(self.cite(i) for i in known)
        count = f"Only {len(known)} item{'s' * (len(known) > 1)} so far"
        interests = []
        if categories:
            name = ", ".join(categories)
            decades = tuple(sorted({d for d in (decade_of(f.year) for f in facts) if d is not None}))
            interests.append(Interest(name, categories, "", list(range(len(known))), [f.title for f in facts],
                                      "new", len(known), len(known), "", 1.0, decades, list(known),
                                      self._centred([facts[0].row])[0]))
            derivation = f"{count}. (1) {name}: {cited}."
        else:
            derivation = f"{count}, with no {'genre' if facts[0].categories else 'category'} in common: {cited}."
        evolution = f"Too few items to follow a trend: {len(known)} so far."
        return Reading(interests, [], derivation, evolution, len(known))

    def _interests(self, known: list[str]) -> tuple[list[Interest], list[str]]:
        facts = [self.items[i] for i in known]
        n = len(facts)
        vectors = self._centred([f.row for f in facts])
        labels, centroids = self._clusters(vectors)
        noise: set[int] = set()
        groups: list[list[int]] = []
        for c in range(len(centroids)):
            ranks = np.flatnonzero(labels == c)
            sims = vectors[ranks] @ centroids[c]
            outlier = sims < NOISE_FLOOR
            if len(ranks) >= 4:
                outlier |= (sims - sims.mean()) / max(float(sims.std()), 1e-6) < NOISE_Z
            kept = [int(r) for r, out in zip(ranks, outlier) if not out]
            noise.update(int(r) for r, out in zip(ranks, outlier) if out)
            if len(kept) < 2:
                noise.update(kept)       # a singleton is not an interest
            else:
                groups.append(kept)

        # Name every cluster; clusters with the same name are one interest. A cluster no attribute
        # sets apart names nothing the reader could check: its items are set aside.
        by_name: dict[tuple, list[int]] = {}
        for ranks in groups:
            categories, era = self.name([facts[r] for r in ranks])
            if not categories:
                noise.update(ranks)
                continue
            by_name.setdefault((categories, era), []).extend(ranks)
        # "Drama" already holds every "Drama, 1990s" item: one interest, named without the era.
        for categories, era in [key for key in by_name if key[1]]:
            if (categories, "") in by_name:
                by_name[(categories, "")].extend(by_name.pop((categories, era)))

        interests = []
        for (categories, era), ranks in by_name.items():
            ranks = sorted(ranks)
            # The interest's items: every read item that carries the whole name (recountable from
            # the text); the evidence comes from the cluster's own items among them.
            members = [p for p in range(n) if carries(facts[p], categories, era)]
            fitting = [r for r in ranks if carries(facts[r], categories, era)]
            if len(fitting) < 2:
                noise.update(r for r in ranks if r not in fitting)
                continue
            summed = vectors[fitting].sum(axis=0)
            centroid = summed / max(float(np.linalg.norm(summed)), 1e-8)
            sims = vectors[fitting] @ centroid
            evidence: list[str] = []
            evidence_ids: list[str] = []
            for i in sorted(range(len(fitting)), key=lambda i: (-round(float(sims[i]), 5), -fitting[i])):
                f = facts[fitting[i]]
                if f.title not in evidence and len(evidence) < MAX_EVIDENCE:
                    evidence.append(f.title)
                    evidence_ids.append(f.item_id)
            noise.difference_update(members)
            trend, latest, size = trend_of(members, n)
            name = ", ".join(categories + ((era,) if era else ()))
            interests.append(Interest(
                name=name, categories=categories, era=era, members=members, evidence=evidence, trend=trend,
                latest=latest, latest_size=size,
                direction=_direction([facts[p].year for p in members if facts[p].year is not None]),
                weight=len(members) / n,
                decades=tuple(sorted({decade_of(facts[p].year) for p in members if facts[p].year is not None})),
                evidence_ids=evidence_ids, centroid=centroid))
        interests.sort(key=lambda i: (-i.weight, -max(i.members)))
        interests = interests[:self.max_interests]
        claimed = {p for it in interests for p in it.members}
        set_aside = [known[r] for r in sorted(noise - claimed, reverse=True)]
        return interests, set_aside

    def derivation_text(self, interests: list[Interest], set_aside: list[str], size: int,
                        max_cites: int = MAX_EVIDENCE) -> str:
        cite = self.cite
        parts = [f"({i + 1}) {it.name}: {', '.join(cite(e) for e in it.evidence_ids[:max_cites])}."
                 for i, it in enumerate(interests)]
        text = f"From {size} items: " + (" ".join(parts) if parts else "no clear interest, the history is scattered.")
        if set_aside:
            more = f" and {len(set_aside) - MAX_SET_ASIDE} more" if len(set_aside) > MAX_SET_ASIDE else ""
            text += f" Set aside: {', '.join(cite(i) for i in set_aside[:MAX_SET_ASIDE])}{more}."
        return text

    def shorter(self, reading: Reading, first: int | None = None) -> Iterator[Reading]:
        """Shorter forms of a reading, longest first, for a reasoning budget that cannot hold the
        whole: without the set-aside items, then fewer citations per interest, then fewer interests
        (the strongest kept, and interest ``first`` before them: the one a request is served
        through). Every form is as true as the whole; it says less."""
        if reading.size < LITTLE_HISTORY or not reading.interests:
            return
        count = len(reading.interests)
        order = list(reading.interests)
        if first is not None:
            order.insert(0, order.pop(first))
        for keep, cites in [(count, 2), (count, 1)] + [(n, 1) for n in range(count - 1, 0, -1)]:
            kept = order[:keep] if keep < count else reading.interests
            yield Reading(kept, [], self.derivation_text(kept, [], reading.size, cites), evolution_text(kept),
                          reading.size)


def evolution_text(interests: list[Interest]) -> str:
    """Level 2: one trend sentence per interest, in the order level 1 lists them."""
    if not interests:
        return NO_HISTORY_EVOLUTION
    return " ".join(evolution_sentence(i + 1, it) for i, it in enumerate(interests))


# -- level 3 under a request ---------------------------------------------------------------------
def serving_lead(asked: str, interests: Sequence[Interest], ranked: Sequence[int], wanted: set[str],
                 avoid: set[str], decades: set[int], structured: bool) -> tuple[int | None, str]:
    """Which interest level 3 serves while a request is active, and the sentence that says so
    (``asked``: "You asked for Comedy from the 1990s"). The served interest must carry a wanted
    category (when categories are asked) and none to avoid; the asked decade breaks ties. When none
    fits a structured request, level 3 says so and reasons from the request alone. The teacher writes
    this for training and the engine writes it at serving time, so level 3 never contradicts the
    request. ``ranked``: interest indices, best first without the request."""
    allowed = [i for i in ranked if not avoid & set(interests[i].categories)]

    def fit(i: int) -> int:
        overlap = len(wanted & set(interests[i].categories))
        if wanted and not overlap:
            return 0
        return 2 * overlap + int(bool(decades & set(interests[i].decades)))

    matched = sorted((i for i in allowed if fit(i) > 0), key=lambda i: -fit(i))    # ties keep `ranked` order
    if matched:
        return matched[0], f"{asked}: serve it through ({matched[0] + 1}) {interests[matched[0]].name}."
    if structured:
        return None, f"{asked}: none of the interests fits, so serve the request alone."
    # Only avoidances, or words with no structured ask: keep to the best interest still allowed.
    if allowed:
        return allowed[0], f"{asked}: serve ({allowed[0] + 1}) {interests[allowed[0]].name}."
    return None, f"{asked}: none of the interests fits, so serve the request alone."


def contradicts(served: Interest | None, wanted: set[str], avoid: set[str]) -> bool:
    """Whether serving this interest goes against the request: it carries an avoided category, or
    categories were asked and it carries none of them."""
    if served is None:
        return False
    categories = set(served.categories)
    return bool(categories & avoid) or bool(wanted and not categories & wanted)


# -- checking a trace against its history ---------------------------------------------------------
INTEREST_NAME = re.compile(r"\((\d+)\)\s*([^:()]+?):")    # "(2) Comedy, 1950s:" in level 1
_TREND = re.compile(r"\((\d+)\)\s*(" + "|".join(TRENDS) + r"), (\d+) of its (\d+) items in the latest (\d+)")
_SPAN = re.compile(r"<\|item_begin\|>.*?<\|item_end\|>")


def check_trends(derivation: str, evolution: str, history: Sequence[str], items: dict) -> tuple[int, int]:
    """(trend statements, true ones). Each "(k) <trend>, a of its m items in the latest r" is
    recounted from the history read in time order (``items`` maps id -> anything with
    ``categories`` and ``year``): interest k's items are those carrying the name level 1 gave it;
    the statement is true when the trend, a, m and r all match the definitions. A trend word with
    no counts, or for an interest level 1 did not name, is checked and false."""
    names = {int(k): name.strip() for k, name in INTEREST_NAME.findall(_SPAN.sub(" ", derivation))}
    read = [i for i in history if i in items]
    n = len(read)
    stated = re.findall(r"\((\d+)\)\s*(" + "|".join(TRENDS) + r")\b", evolution)
    full = {int(m.group(1)): m for m in _TREND.finditer(evolution)}
    true = 0
    for k, word in stated:
        k = int(k)
        name, found = names.get(k), full.get(k)
        if name is None or found is None or found.group(2) != word:
            continue
        words = [w.strip() for w in name.split(",")]
        era = next((w for w in words if era_range(w) is not None and re.fullmatch(r"\d{3,4}s(-\d{3,4}s)?", w)), "")
        categories = [w for w in words if w != era]
        positions = [p for p, i in enumerate(read) if carries(items[i], categories, era)]
        trend, latest, size = trend_of(positions, n) if positions else ("", 0, 0)
        true += (trend, latest, len(positions), size) == (word, int(found.group(3)), int(found.group(4)),
                                                        int(found.group(5)))
    return len(stated), true
