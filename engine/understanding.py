"""Meaning of the words the request parser's table does not know, read with the bundled sentence
encoder against the catalog's own vocabulary and item texts.

Two readings, both sized by the catalog and nothing else:

- **Categories.** Every category gets a profile: the embedding of its name, written the way item
  texts write it ("Genres: Horror"), mixed with the mean embedding of the items that carry it.
  A phrase ("aliens or spaceships", "a song-and-dance picture") is embedded and compared with
  every profile. How far the best profile stands out from the rest (a z-score over this
  catalog's categories) and its lead over the runner-up give a confidence:
  ``hard`` (a constraint, stated in the trace as read), ``soft`` (a preference that re-ranks) or
  ``unused`` (listed as not used). A product catalog's category path parts work the same way.
- **Content.** A phrase is searched in the FAISS index of item texts ("something about time
  travel", "a tent for rainy weather"). How far the best matches stand above the catalog's
  typical similarity decides whether they are worth a boost, or (for a plain content request,
  "movies about …") a hard "among these".

The thresholds are module constants measured with ``thinkrec eval --understanding`` (see
docs/RESULTS.md); they are z-scores, so they carry across catalogs of different sizes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from engine.request_words import ordinal_number

# Category confidence: z of the best profile among all categories, and its lead over the second.
HARD_Z, HARD_LEAD = 3.0, 0.08
SOFT_Z, SOFT_LEAD = 2.3, 0.03
NAME_WEIGHT = 0.5            # profile = NAME_WEIGHT * name + (1 - NAME_WEIGHT) * item centroid
# Content: a match counts when its similarity is this many standard deviations above the catalog's
# mean similarity to the phrase (measured on a sample of items); hard "among these" needs more.
CONTENT_SOFT_Z, CONTENT_HARD_Z = 3.0, 4.0
CONTENT_MAX_SHARE = 0.02     # a content set holds at most this share of the catalog (and ≥ 10 items)
IGNORED = {"unknown", "other", "misc", "none", ""}


@dataclass
class CategoryReading:
    phrase: str
    categories: list[str]
    score: float
    z: float
    lead: float
    level: str                         # "hard" | "soft" | "unused"

    def describe(self) -> str:
        target = " or ".join(self.categories) if self.categories else "nothing"
        how = {"hard": "read as", "soft": "leaning to", "unused": "not placed; closest"}[self.level]
        return f"'{self.phrase}' {how} {target} (confidence z={self.z:.1f})"


@dataclass
class ContentReading:
    phrase: str
    items: list[tuple[str, str, float]] = field(default_factory=list)    # (item id, title, similarity)
    z: float = 0.0
    level: str = "unused"              # "hard" | "soft" | "unused"

    def describe(self) -> str:
        shown = ", ".join(t for _, t, _ in self.items[:3])
        more = f" and {len(self.items) - 3} more" if len(self.items) > 3 else ""
        how = {"hard": "only items matching", "soft": "a boost for items matching", "unused": "no strong match for"}[self.level]
        return f"{how} '{self.phrase}'" + (f": {shown}{more}" if self.items and self.level != "unused" else "")


class SemanticReader:
    """Reads free phrases against one catalog (its categories and its item-text index)."""

    def __init__(self, vocabulary: Sequence[str], members: dict[str, np.ndarray], item_vectors: np.ndarray,
                 encode: Callable[[list[str]], np.ndarray], item_ids: Sequence[str], titles: Sequence[str],
                 category_label: str = "Categories", search: Callable | None = None, seed: int = 0,
                 rich_text: bool = True):
        self.encode = encode
        # A hard "among these" needs item texts that say what an item is about (descriptions);
        # over titles alone a match is a shared word ("The Rock" for "a rock band"), so it only leans.
        self.rich_text = rich_text
        self.item_ids, self.titles = list(item_ids), list(titles)
        self.vectors = np.asarray(item_vectors, dtype=np.float32)
        self.search = search
        self.vocabulary = [c for c in vocabulary if c.strip().lower() not in IGNORED and len(members.get(c, ())) > 0]
        self._lock = threading.Lock()
        self._cache: dict[str, np.ndarray] = {}
        if self.vocabulary:
            names = encode([f"{category_label}: {c}" for c in self.vocabulary])
            centroids = np.stack([self.vectors[members[c]].mean(0) for c in self.vocabulary])
            centroids /= np.linalg.norm(centroids, axis=1, keepdims=True) + 1e-12
            profiles = NAME_WEIGHT * names + (1 - NAME_WEIGHT) * centroids
            self.profiles = profiles / (np.linalg.norm(profiles, axis=1, keepdims=True) + 1e-12)
        else:
            self.profiles = np.zeros((0, self.vectors.shape[1] if self.vectors.ndim == 2 else 1), dtype=np.float32)
        # A fixed sample of items: the catalog's typical similarity to a phrase, for content z-scores.
        rng = np.random.default_rng(seed)
        size = min(len(self.vectors), 2000)
        self._sample = self.vectors[rng.choice(len(self.vectors), size=size, replace=False)] if size else self.vectors
        self.max_content = max(10, int(CONTENT_MAX_SHARE * len(self.item_ids)))

    @classmethod
    def from_catalog(cls, catalog, facets) -> SemanticReader:
        from data.embed import encode

        encoder = catalog.manifest.config.encoder
        vectors = catalog.item_vectors()
        item_ids, titles = catalog.id_title_table()
        label = "Genres" if catalog.manifest.dataset.startswith("ml-") else "Categories"
        # Members as catalog rows (the embeddings' order), whatever order the facets keep.
        row_of = {item: row for row, item in enumerate(item_ids)}
        members = {c: np.array([row_of[facets.item_ids[r]] for r in rows if facets.item_ids[r] in row_of], dtype=np.int64)
                   for c, rows in facets.members.items()}
        return cls(facets.vocabulary, members, vectors, lambda texts: encode(texts, encoder),
                   item_ids, titles, label, search=lambda q, k: catalog.search_vectors(q, k),
                   rich_text=catalog.description_share() >= 0.5)

    def embed(self, phrase: str) -> np.ndarray:
        with self._lock:
            hit = self._cache.get(phrase)
        if hit is None:
            hit = self.encode([phrase])[0]
            with self._lock:
                if len(self._cache) > 4096:
                    self._cache.clear()
                self._cache[phrase] = hit
        return hit

    def categories(self, phrase: str) -> CategoryReading:
        if not self.vocabulary or not phrase.strip():
            return CategoryReading(phrase, [], 0.0, 0.0, 0.0, "unused")
        scores = self.profiles @ self.embed(phrase)
        order = np.argsort(-scores)
        best = float(scores[order[0]])
        second = float(scores[order[1]]) if len(order) > 1 else -1.0
        spread = float(scores.std()) or 1e-6
        z, lead = (best - float(scores.mean())) / spread, best - second
        if z >= HARD_Z and lead >= HARD_LEAD:
            level = "hard"
        elif z >= SOFT_Z and lead >= SOFT_LEAD:
            level = "soft"
        else:
            level = "unused"
        return CategoryReading(phrase, [self.vocabulary[order[0]]], best, round(z, 2), round(lead, 3), level)

    def content(self, phrase: str, plain: bool = False) -> ContentReading:
        """Items whose text matches ``phrase``. ``plain``: the message is plainly a content request
        ("movies about …"), so strong matches may become a hard "among these"."""
        if not phrase.strip() or self.search is None or not len(self._sample):
            return ContentReading(phrase)
        query = self.embed(phrase)
        typical = self._sample @ query
        mean, spread = float(typical.mean()), float(typical.std()) or 1e-6
        scores, rows = self.search(query[None, :], self.max_content)
        matches = [(self.item_ids[r], self.titles[r], float(s)) for r, s in zip(rows, scores)
                   if r >= 0 and (s - mean) / spread >= CONTENT_SOFT_Z]
        if not matches:
            return ContentReading(phrase, z=round((float(scores[0]) - mean) / spread, 2) if len(scores) else 0.0)
        z = (matches[0][2] - mean) / spread
        level = "hard" if plain and self.rich_text and z >= CONTENT_HARD_Z else "soft"
        if level == "hard":
            matches = [m for m in matches if (m[2] - mean) / spread >= CONTENT_HARD_Z - 0.5] or matches[:1]
        return ContentReading(phrase, matches, round(z, 2), level)


def catalog_parser(catalog, facets, meaning: bool = True):
    """The request parser of one catalog: its vocabulary, its title search, its known facets and
    (``meaning``) the sentence-encoder reader of free phrases."""
    from engine.request import RequestParser

    reader = SemanticReader.from_catalog(catalog, facets) if meaning else None
    words = None
    if meaning:
        from data.embed import known_words

        words = known_words(catalog.manifest.config.encoder)
    return RequestParser(facets, find_title=lambda query: catalog.search_titles(query, k=3), reader=reader,
                         known_words=words,
                         same_title=catalog.same_title, known_facets=catalog.attribute_keys(),
                         exact_title=catalog.exact_title, item_of=catalog.item)


# Soft leanings re-rank the admissible candidates by this many nats per matched leaning: about
# the score gap between neighbouring ranks of a top-20 list, so a leaning reorders, it never rules.
SOFT_WEIGHT = 1.0
YES = {"yes", "yeah", "yep", "sure", "ok", "okay", "fine", "show", "those", "them", "these", "go", "ahead", "please"}
# Places only an answer names: "one" of two options ("that one" is the first) and "the other".
ANSWER_PLACES = {"one": 1, "other": 2}


def soft_rerank(items: list, constraints, facets, weight: float | None = None) -> list:
    """Candidates (each with ``item_id`` and ``score``) re-ranked by the soft leanings:
    + weight for a preferred category or a content match, − weight for a category leaned away from."""
    weight = SOFT_WEIGHT if weight is None else weight
    if not constraints.is_soft() or not items:
        return items
    prefer, away, boost = set(constraints.prefer), set(constraints.prefer_not), set(constraints.boost)

    def bonus(item_id: str) -> float:
        have = set(facets.categories_of(str(item_id)))
        return weight * ((bool(have & prefer)) + (str(item_id) in boost) - (bool(have & away)))
    scored = [(r.score + bonus(r.item_id), n, r) for n, r in enumerate(items)]
    scored.sort(key=lambda t: (-t[0], t[1]))
    return [type(r)(r.item_id, s, r.token_ids) if hasattr(r, "token_ids") else r for s, _, r in scored]


def resolve_answer(pending: dict, text: str) -> dict | None:
    """The option of ``pending`` (a question the last turn asked) that ``text`` answers, or None
    when the message is not an answer (then it is read as a new request)."""
    from engine.request import normalize

    options = pending.get("options") or []
    words = normalize(text).split()
    # An answer is short; a longer message is a new request (it may change the subject).
    if not options or not words or len(words) > 8:
        return None
    for n, option in enumerate(options):
        keys = {normalize(w) for w in option.get("answer", [])}
        if keys & set(words) or (len(keys) == 1 and " ".join(words) in keys):
            return option
    for word in words:
        place = ANSWER_PLACES.get(word) or ordinal_number(word)
        if place is not None:      # a place past the options is no answer: read the text as a request
            return options[place - 1 if place > 0 else -1] if 0 < abs(place) <= len(options) else None
    if len(words) <= 4 and set(words) & YES:
        return options[0]
    return None


def apply_answer(constraints, option: dict):
    """The constraints after an answer: a title picked (liked or turned down), a category kept
    or dropped, a range widened, or (an empty patch) the pending request shown as it was."""
    current = constraints.model_copy(deep=True)
    current.pending = None
    if option.get("item_id"):
        if option.get("disliked"):
            current.turned_down = list(dict.fromkeys(current.turned_down + [option["item_id"]]))
        else:
            current.like_item, current.like_title = option["item_id"], option.get("title")
            current.like_categories = [c for c in option.get("categories", []) if c.lower() != "unknown"]
    patch = option.get("patch") or {}
    if "want_add" in patch:
        current.avoid = [c for c in current.avoid if c != patch["want_add"]]
        current.want = current.want + [[patch["want_add"]]] if [patch["want_add"]] not in current.want else current.want
    if "avoid_add" in patch:
        current.want = [g for g in ([c for c in group if c != patch["avoid_add"]] for group in current.want) if g]
        current.avoid = list(dict.fromkeys(current.avoid + [patch["avoid_add"]]))
    for key in ("year_min", "year_max", "want"):
        if key in patch:
            setattr(current, key, patch[key])
    return current


def ask_first(request, constraints, available: int | None, k: int, count: Callable) -> dict | None:
    """A question to ask instead of answering, with its options, or None. The parser's own (a
    title two items share, a request that contradicts itself); or, when this message narrowed the
    catalog below ``k`` items, whether to show those few or widen (a decade more on each bounded
    side, or the last wanted category dropped). ``count(constraints)`` counts admissible items."""
    if request.question:
        return {"question": request.question, "options": request.options}
    if request.answered or available is None or not available < k or not constraints.is_hard():
        return None
    if not (request.years_set or request.want or request.content_hard):
        return None
    show = {"label": f"show the {available}", "answer": ["show", "those", "them", "these", "fine"], "patch": {}}
    wider = constraints.model_copy(deep=True)
    if request.years_set and (constraints.year_min is not None or constraints.year_max is not None):
        wider.year_min = constraints.year_min - 10 if constraints.year_min is not None else None
        wider.year_max = constraints.year_max + 10 if constraints.year_max is not None else None
        patch = {"year_min": wider.year_min, "year_max": wider.year_max}
    elif len(constraints.want) > 1:
        wider.want = constraints.want[:-1]
        patch = {"want": wider.want}
    else:
        return None
    more = count(wider)
    if not more or more <= available:
        return None
    label = wider.describe()
    widen = {"label": f"widen to {label}", "answer": ["widen", "wider", "widening", "expand", "broaden", "more", "bigger",
                                                      "relax"], "patch": patch}
    if available == 0:
        # Nothing to show as asked: the only useful offer is the wider range ("yes" takes it).
        return {"question": f"No item you have not seen satisfies {constraints.describe()}: widen to {label} "
                            f"({more} item{'s' * (more != 1)})?", "options": [widen]}
    them = "those" if available != 1 else "it"
    return {"question": f"Only {available} item{'s' * (available != 1)} you have not seen satisfy "
                        f"{constraints.describe()}: show {them}, or widen to {label}?", "options": [show, widen]}
