"""The teacher that writes training rationales for the three CoT levels (DESIGN.md, "Three-level CoT").

    teacher = DeterministicTeacher(items, embeddings)          # items: item_id -> ItemFacts
    r = teacher.rationale(history, timestamps, target="74", request=None)
    r.derivation, r.evolution, r.recommendation                # the three level texts
    LangChainTeacher(chat_model, teacher).rationale(...)       # same facts, rewritten by any chat model

Levels 1-2 (derivation, evolution) are computed from the last `window` history items only and never
see the target, so the model cannot learn to read the answer off its own reasoning. Level 3
(recommendation) may use the target as the training label, as reasoning scaffolding does: it picks
the interest the target belongs to and states the target's attributes as what the next item should be.
The deterministic teacher is plain numpy + string templates (about 1 ms a call), so it can label a
whole corpus on a laptop; the same input always gives the same text.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from engine.constraints import Constraints
from engine.prompt import NO_HISTORY_DERIVATION, NO_HISTORY_EVOLUTION, request_statement


TRENDS = ("long-term", "recent burst", "fading", "periodic")
# How level 3 describes the served interest, by its trend.
TREND_PHRASE = {"long-term": "the lasting interest", "recent burst": "the recent interest",
                "fading": "an older interest", "periodic": "a returning interest"}
SAME_THEME = 0.6       # cosine (catalog-centred) above which two items are one theme, not two interests
NOISE_FLOOR = 0.15      # cosine to the own centroid (catalog-centred space) below which an item fits nothing
NOISE_Z = -2.5          # ... or this far below its cluster's typical cosine
MIN_NAME_SHARE = 0.35   # a category names an interest only if this share of its members has it
MAX_EVIDENCE = 3
MAX_SET_ASIDE = 3
MAX_NEXT_CATEGORIES = 3
LITTLE_HISTORY = 3      # fewer history items than this: level 1 says plainly that there is little to go on


@dataclass(frozen=True)
class ItemFacts:
    item_id: str
    title: str
    year: int | None
    categories: tuple[str, ...]   # genres for movies, category path for products
    row: int                      # row of this item in the embeddings matrix


@dataclass
class Request:
    """What the user asked for in the dialogue."""
    text: str                             # the user's words, e.g. "a 90s comedy please"
    categories: tuple[str, ...] = ()      # wanted categories, e.g. ("Comedy",)
    decade: int | None = None             # wanted decade, e.g. 1990
    avoid: tuple[str, ...] = ()           # categories to avoid, e.g. ("Horror",)
    like_title: str | None = None         # "more like <title>"

    def constraints(self) -> Constraints:
        """The same request as the engine's active constraints."""
        return Constraints(want=[[c] for c in self.categories], avoid=list(self.avoid),
                           year_min=self.decade, year_max=self.decade + 9 if self.decade else None,
                           like_title=self.like_title)


@dataclass
class Interest:
    name: str                       # "Sci-Fi, Action, 1970s-1980s"
    categories: tuple[str, ...]     # the 1-2 categories most over-represented among the members
    era: str                        # "1990s", "1970s-1990s" or "" without years
    members: list[int]              # positions in the history list
    evidence: list[str]             # up to 3 titles of the members closest to the centroid
    trend: str                      # one of TRENDS
    direction: str                  # "steady around the 1990s" / "moving from 1970s toward 1990s releases" / ""
    weight: float                   # share of the window
    decades: tuple[int, ...] = ()   # distinct decades of the members, for matching requests
    evidence_ids: list[str] = field(default_factory=list)   # the evidence as item ids (same order)
    centroid: np.ndarray = field(default=None, repr=False, compare=False)  # unit vector, centred space


@dataclass
class Rationale:
    derivation: str
    evolution: str
    recommendation: str
    interests: list[Interest]
    served: int | None              # index into interests, None when a request is served instead
    set_aside: list[str] = field(default_factory=list)     # noise titles, most recent first
    next_item: tuple[str, ...] = ()                        # the attributes level 3 asks for


def decade_of(year: int | None) -> int | None:
    return None if year is None else (year // 10) * 10


def _era(decades: list[int]) -> str:
    """One decade when most members share it, else the range without the outer 10% on each side."""
    if not decades:
        return ""
    top, count = Counter(decades).most_common(1)[0]
    if count >= 0.6 * len(decades):
        return f"{top}s"
    ordered = sorted(decades)
    trim = int(round(0.1 * (len(ordered) - 1)))
    low, high = ordered[trim], ordered[-1 - trim]
    return f"{low}s" if low == high else f"{low}s-{high}s"


def _normalize_title(title: str) -> str:
    text = re.sub(r"[^0-9a-z]+", " ", title.lower()).strip()
    return re.sub(r"^(the|a|an) ", "", text)


def mentions(text: str, title: str) -> bool:
    """Whether text names the title (case, punctuation and a leading article ignored)."""
    needle = _normalize_title(title)
    return bool(needle) and f" {needle} " in f" {_normalize_title(text)} "


class DeterministicTeacher:
    def __init__(self, items: dict[str, ItemFacts], embeddings: np.ndarray, category_word: str = "genre",
                 window: int = 20, max_interests: int = 3, cite: Callable[[str], str] | None = None):
        self.items = items
        # How levels 1-2 cite an item: its title by default; SFT cites item spans, which the engine
        # constrains to the history the prompt shows (so the window matches the prompt's 20 items).
        self.cite = cite or (lambda item_id: self.items[item_id].title)
        self.embeddings = embeddings
        self.category_word = category_word
        self.window = window
        self.max_interests = max_interests
        # Sentence embeddings share a large common direction (any two movies have cosine ~0.45), which
        # hides the themes; clustering happens on embeddings with the catalog mean removed.
        self.mean = embeddings.astype(np.float64).mean(axis=0).astype(np.float32)
        counts = Counter(c for facts in items.values() for c in set(facts.categories))
        self.base_rate = {c: n / max(len(items), 1) for c, n in counts.items()}
        # "more like <title>": the first catalog row wins when titles repeat.
        self.by_title = {_normalize_title(f.title): f for f in sorted(items.values(), key=lambda f: -f.row)}

    # -- levels 1-2 --------------------------------------------------------------------------
    def _centred(self, rows: list[int]) -> np.ndarray:
        vectors = self.embeddings[rows] - self.mean
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-8)

    def _clusters(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Spherical k-means with density-weighted farthest-point init: (labels, centroids)."""
        n = len(vectors)
        k = 1 if n < 5 else 2 if n < 12 else self.max_interests
        k = min(k, n)
        sims = vectors @ vectors.T
        top = min(3, n - 1)
        # Density: mean cosine to the 3 nearest others; it keeps a lone outlier from seeding a
        # cluster while a dense distant group still gets one.
        density = np.sort(sims, axis=1)[:, -1 - top:-1].mean(axis=1) if top else np.zeros(n)
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

    def _name(self, facts: list[ItemFacts]) -> tuple[tuple[str, ...], str, tuple[int, ...]]:
        """Categories most over-represented against the catalog (f * log(f / base)), plus the era."""
        counts = Counter(c for f in facts for c in set(f.categories))
        scored = []
        for category, count in counts.items():
            share = count / len(facts)
            base = self.base_rate.get(category, share)
            if share > base and share >= MIN_NAME_SHARE:
                scored.append((share * math.log(share / base), share, category))
        scored.sort(key=lambda s: (-s[0], s[2]))
        categories = [scored[0][2]] if scored else []
        if len(scored) > 1 and scored[1][1] >= 0.5 and scored[1][0] >= 0.5 * scored[0][0]:
            categories.append(scored[1][2])
        decades = [decade_of(f.year) for f in facts if f.year is not None]
        return tuple(categories), _era(decades), tuple(sorted(set(decades)))

    @staticmethod
    def _trend(ranks: list[int], n: int) -> str:
        """Where the members sit in the window's time order (ranks 0..n-1, oldest first)."""
        late = sum(r >= 2 * n / 3 for r in ranks)
        if late == 0 and n >= 3:
            return "fading"
        if late >= 0.6 * len(ranks) and min(ranks) >= n / 3:
            return "recent burst"
        gap = max(3, n // 6)   # a run ends after this many other items in a row
        runs = 1 + sum(b - a > gap for a, b in zip(ranks, ranks[1:]))
        return "periodic" if runs >= 3 else "long-term"

    @staticmethod
    def _direction(years: list[int]) -> str:
        """Release decade of the early vs the late half of the members (in time order)."""
        if len(years) < 2:
            return f"steady around the {decade_of(years[0])}s" if years else ""
        half = len(years) // 2
        early = decade_of(int(statistics.median(years[:half])))
        late = decade_of(int(statistics.median(years[len(years) - half:])))
        if early == late:
            return f"steady around the {early}s"
        return f"moving from {early}s toward {late}s releases"

    def analyse(self, history: list[str], timestamps: list[float]) -> tuple[list[Interest], list[str]]:
        """Levels 1-2: interests of the last `window` items and the item ids set aside as noise."""
        if len(timestamps) != len(history):
            raise ValueError(f"{len(history)} history items but {len(timestamps)} timestamps")
        start = max(0, len(history) - self.window)
        # Time order inside the window (stable, so equal timestamps keep the history's order).
        order = [start + i for i in np.argsort(np.asarray(timestamps[start:], dtype=np.float64), kind="stable")]
        if not order:
            return [], []
        facts = [self.items[history[p]] for p in order]
        vectors = self._centred([f.row for f in facts])
        labels, centroids = self._clusters(vectors)
        n = len(order)

        noise: set[int] = set()          # ranks in the window
        groups: dict[int, list[int]] = {}
        for c in range(len(centroids)):
            ranks = np.flatnonzero(labels == c)
            sims = vectors[ranks] @ centroids[c]
            outlier = sims < NOISE_FLOOR
            if len(ranks) >= 4:
                outlier |= (sims - sims.mean()) / max(float(sims.std()), 1e-6) < NOISE_Z
            kept = [int(r) for r, out in zip(ranks, outlier) if not out]
            noise.update(int(r) for r, out in zip(ranks, outlier) if out)
            if len(kept) < 2 and n > 1:
                noise.update(kept)       # a singleton is not an interest
            elif kept:
                groups[c] = kept

        # Name every cluster; clusters that end up with the same name are one interest (renamed once).
        by_name: dict[str, list[list[int]]] = {}
        for ranks in groups.values():
            categories, era, _ = self._name([facts[r] for r in ranks])
            by_name.setdefault(", ".join(categories + ((era,) if era else ())) or "mixed", []).append(ranks)

        interests = []
        for clusters in by_name.values():
            ranks = sorted(r for cluster in clusters for r in cluster)
            members = [facts[r] for r in ranks]
            categories, era, decades = self._name(members)
            name = ", ".join(categories + ((era,) if era else ())) or "mixed"
            summed = vectors[ranks].sum(axis=0)
            centroid = summed / max(float(np.linalg.norm(summed)), 1e-8)
            sims = vectors[ranks] @ centroid
            evidence: list[str] = []
            evidence_ids: list[str] = []
            for i in sorted(range(len(ranks)), key=lambda i: (-round(float(sims[i]), 5), -ranks[i])):
                if members[i].title not in evidence and len(evidence) < MAX_EVIDENCE:
                    evidence.append(members[i].title)
                    evidence_ids.append(members[i].item_id)
            interests.append(Interest(
                name=name, categories=categories,
                era=era, members=[order[r] for r in ranks], evidence=evidence, trend=self._trend(ranks, n),
                direction=self._direction([m.year for m in members if m.year is not None]),
                weight=len(ranks) / n, decades=decades, centroid=centroid, evidence_ids=evidence_ids))
        interests.sort(key=lambda i: (-i.weight, -max(i.members)))
        set_aside = [facts[r].item_id for r in sorted(noise, reverse=True)]
        return interests, set_aside

    def derivation_text(self, interests: list[Interest], set_aside: list[str], history_size: int | None = None) -> str:
        if not interests and not set_aside:
            return NO_HISTORY_DERIVATION
        cite = self.cite
        parts = [f"({i + 1}) {it.name}: {', '.join(cite(e) for e in it.evidence_ids)}." for i, it in enumerate(interests)]
        text = "Interests: " + " ".join(parts) if parts else "No clear interest: the history is scattered."
        if set_aside:
            more = f" and {len(set_aside) - MAX_SET_ASIDE} more" if len(set_aside) > MAX_SET_ASIDE else ""
            text += f" Set aside: {', '.join(cite(i) for i in set_aside[:MAX_SET_ASIDE])}{more}."
        if history_size is not None and history_size < LITTLE_HISTORY:
            text = f"Little history ({history_size} item{'s' * (history_size != 1)}). " + text
        return text

    @staticmethod
    def evolution_text(interests: list[Interest]) -> str:
        if not interests:
            return NO_HISTORY_EVOLUTION
        return " ".join(f"({i + 1}) {it.trend}" + (f", {it.direction}." if it.direction else ".")
                        for i, it in enumerate(interests))

    # -- level 3 -----------------------------------------------------------------------------
    def _ranked(self, interests: list[Interest], history: list[str], target: str | None) -> list[int]:
        """Interest indices, best first: most similar to the target, or most recently active."""
        if target is not None:
            vector = self._centred([self.items[target].row])[0]
            score = [float(it.centroid @ vector) for it in interests]
        else:   # recency weight: linear in the position inside the window
            offset = max(0, len(history) - self.window)
            score = [float(sum(p - offset + 1 for p in it.members)) for it in interests]
        return sorted(range(len(interests)), key=lambda i: (-round(score[i], 6), i))

    def _asked(self, request: Request) -> str:
        # The engine's own wording of the active constraints, which it writes into level 3 at
        # serving time: the model is trained on exactly the text it will be handed.
        described = request.constraints().describe()
        if not described:
            words = request.text.split()
            return '"' + " ".join(words[:12]) + ("..." if len(words) > 12 else "") + '"'
        return described

    def _serve(self, interests: list[Interest], ranked: list[int], request: Request | None,
               liked: ItemFacts | None) -> tuple[int | None, str]:
        """Which interest level 3 serves, and the sentence that says so. A request comes first."""
        served = ranked[0] if ranked else None
        if request is None:
            if served is None:
                return None, "No clear interest to serve yet."
            it = interests[served]
            return served, f"Serve ({served + 1}) {it.name}, {TREND_PHRASE[it.trend]}."
        asked = request_statement(self._asked(request))
        avoid = set(request.avoid)
        wanted = set(request.categories) | (set(liked.categories) if liked else set())
        allowed = [i for i in ranked if not avoid & set(interests[i].categories)]
        default = allowed[0] if allowed else served

        def fit(i: int) -> int:
            # Asked-for categories must be there; the decade alone only matches when no category was asked.
            overlap = len(wanted & set(interests[i].categories))
            if wanted and not overlap:
                return 0
            return 2 * overlap + int(bool(request.decade) and request.decade in interests[i].decades)

        matched = sorted((i for i in allowed if fit(i) > 0), key=lambda i: -fit(i))  # ties keep `ranked` order
        if matched:
            return matched[0], f"{asked}: serve it through ({matched[0] + 1}) {interests[matched[0]].name}."
        if request.categories or request.decade or request.like_title:
            # Nothing in the history fits what was asked: the request wins over the usual interest.
            over = f" over ({default + 1}) {interests[default].name}" if default is not None else ""
            return None, f"{asked}: serve that{over}."
        # Only avoidances, or words with no structured ask: keep to the best interest still allowed.
        return default, f"{asked}: serve " + (f"({default + 1}) {interests[default].name}." if default is not None
                                               else "that.")

    def rationale(self, history: list[str], timestamps: list[float], target: str | None = None,
                  request: Request | None = None) -> Rationale:
        """All three levels; only level 3 looks at target (the training label) and request."""
        interests, set_aside = self.analyse(history, timestamps)
        ranked = self._ranked(interests, history, target) if interests else []
        liked = self.by_title.get(_normalize_title(request.like_title)) if request and request.like_title else None
        served, lead = self._serve(interests, ranked, request, liked)
        categories, decade = self._next_item(interests, served, self.items[target] if target is not None else None,
                                             request, liked)
        shown = ", ".join(categories or (f"any {self.category_word}",)) + (f", {decade}s" if decade else "")
        return Rationale(self.derivation_text(interests, set_aside, len(history)), self.evolution_text(interests),
                         f"{lead} Next item: {shown}.", interests, served, [self.items[i].title for i in set_aside],
                         categories + ((f"{decade}s",) if decade else ()))

    def _informative(self, categories: tuple[str, ...]) -> list[str]:
        """The (at most 3) rarest categories in the catalog, kept in the item's own order."""
        rarest = sorted(categories, key=lambda c: (self.base_rate.get(c, 1.0), c))[:MAX_NEXT_CATEGORIES]
        return [c for c in categories if c in rarest]

    def _next_item(self, interests: list[Interest], served: int | None, target: ItemFacts | None,
                   request: Request | None, liked: ItemFacts | None) -> tuple[tuple[str, ...], int | None]:
        """Attributes the next item should have: the request's first, then the target's (or the interest's)."""
        avoid = set(request.avoid) if request else set()
        categories = [c for c in request.categories if c not in avoid] if request else []
        if target is not None:
            source = self._informative(target.categories)
            decade = decade_of(target.year)
        elif liked is not None:
            source, decade = self._informative(liked.categories), decade_of(liked.year)
        elif served is not None:
            it = interests[served]
            # An interest drifting toward newer releases is served at its newest decade.
            source, decade = list(it.categories), (max(it.decades) if it.decades else None)
        else:
            source, decade = [], None
        for category in source:
            if category not in categories and category not in avoid and len(categories) < MAX_NEXT_CATEGORIES:
                categories.append(category)
        if request is not None and request.decade:
            decade = request.decade
        return tuple(categories), decade
