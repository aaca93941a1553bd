"""A conversation's active hard constraints, and the catalog facets they are checked against.

``Constraints`` is what the session keeps between turns (wanted and avoided categories, a year
range, a "more like" anchor, items turned down). ``Facets`` holds every catalog item's year and
categories as arrays, so a constraint becomes an item mask with a few numpy operations — the same
function on the app's side (transformers backend) and inside a vLLM server, which receives the
constraint itself (a few hundred bytes), not the list of allowed items (a genre can hold 30 % of a
10^6-item catalog). The mask then restricts the SID trie (``SIDTrie.restrict``), so every returned
item satisfies the constraint by construction.

No torch and no catalog access here: the vLLM server's environment imports this module.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

NO_YEAR = -(10 ** 6)     # stands for a missing year in the year array (fails every year bound)


def decade_label(low: int | None, high: int | None) -> str | None:
    """'the 1990s' when the range is exactly one decade, else None."""
    if low is not None and high is not None and low % 10 == 0 and high == low + 9:
        return f"the {low}s"
    return None


def year_phrase(low: int | None, high: int | None) -> str:
    """How a year range reads in the reasoning and the trace."""
    decade = decade_label(low, high)
    if decade:
        return f"from {decade}"
    if low is not None and high is not None:
        return f"from {low}" if low == high else f"from {low} to {high}"
    if low is not None:
        return f"from {low} on"
    if high is not None:
        return f"before {high + 1}"
    return ""


class Constraints(BaseModel):
    """Hard parts of what the user asked for, kept until they change them."""

    # Wanted categories as groups: an item carries at least one category of every group.
    # "a 90s comedy" -> [["Comedy"]]; "comedy or drama" -> [["Comedy", "Drama"]];
    # "a funny one for the kids" -> [["Comedy"], ["Children's", "Animation"]].
    want: list[list[str]] = Field(default_factory=list)
    avoid: list[str] = Field(default_factory=list)       # categories an item must not carry
    year_min: int | None = None
    year_max: int | None = None
    like_item: str | None = None                         # "more like <title>": the anchor item id
    like_title: str | None = None
    like_categories: list[str] = Field(default_factory=list)   # an item must share one of these with the anchor
    turned_down: list[str] = Field(default_factory=list)        # items the user said "not that" to
    # A plain content request ("movies about dinosaurs"): only these items (the index's matches).
    among: list[str] = Field(default_factory=list)
    among_label: str | None = None
    # Soft parts: they re-rank the admissible items and never exclude one (engine.understanding).
    prefer: list[str] = Field(default_factory=list)          # categories leaned toward
    prefer_not: list[str] = Field(default_factory=list)      # categories leaned away from
    boost: list[str] = Field(default_factory=list)           # items matching a content wish
    boost_label: str | None = None
    # A question the last turn asked instead of answering, with what each answer would do.
    pending: dict | None = None

    def is_hard(self) -> bool:
        """True when the constraint narrows the catalog (turned-down items are plain exclusions)."""
        return bool(self.want or self.avoid or self.year_min is not None or self.year_max is not None
                    or self.like_categories or self.among)

    def is_soft(self) -> bool:
        return bool(self.prefer or self.prefer_not or self.boost)

    def allows(self, categories: Sequence[str], year: int | None) -> bool:
        """Whether one item satisfies the constraint (what compliance is measured with)."""
        have = set(categories)
        if any(not have & set(group) for group in self.want):
            return False
        if have & set(self.avoid):
            return False
        if self.like_categories and not have & set(self.like_categories):
            return False
        if self.year_min is not None and (year is None or year < self.year_min):
            return False
        if self.year_max is not None and (year is None or year > self.year_max):
            return False
        return True

    def allows_item(self, item_id: str, categories: Sequence[str], year: int | None) -> bool:
        """``allows`` plus the item-level part (a content request's "among these")."""
        return (not self.among or str(item_id) in self.among) and self.allows(categories, year)

    def describe(self) -> str:
        """One line, the way the recommendation level and the trace state it:
        'Comedy from the 1990s, no Drama'. Empty when nothing is asked."""
        parts = []
        years = year_phrase(self.year_min, self.year_max)
        if self.want or years:
            what = " and ".join(" or ".join(group) for group in self.want) or "something"
            parts.append(what + (f" {years}" if years else ""))
        if self.among:
            parts.append(f"about {self.among_label}" if self.among_label else f"among {len(self.among)} matching items")
        if self.like_title:
            parts.append(f"more like {self.like_title}")
        if self.avoid:
            parts.append("no " + " or ".join(self.avoid))
        return ", ".join(parts)

    def describe_soft(self) -> str:
        """The soft parts, for the trace: 'leaning to Horror; boost: items about time travel'."""
        parts = []
        if self.prefer:
            parts.append("leaning to " + " or ".join(self.prefer))
        if self.prefer_not:
            parts.append("leaning away from " + " or ".join(self.prefer_not))
        if self.boost:
            parts.append(f"a boost for {len(self.boost)} items matching '{self.boost_label}'" if self.boost_label
                         else f"a boost for {len(self.boost)} items")
        return "; ".join(parts)

    def key(self) -> str:
        """A stable key for caches (filters, reasoning): the hard parts only."""
        return self.model_dump_json(exclude={"prefer", "prefer_not", "boost", "boost_label", "pending"})


class Facets:
    """Every catalog item's year and categories, in a fixed item order, for masking."""

    def __init__(self, item_ids: Sequence[str], years: Sequence[int | None], categories: Sequence[Sequence[str]]):
        if not (len(item_ids) == len(years) == len(categories)):
            raise ValueError("item_ids, years and categories must have one entry per item")
        self.item_ids = [str(i) for i in item_ids]
        self.row_of = {item: row for row, item in enumerate(self.item_ids)}
        self.years = np.array([NO_YEAR if y is None else int(y) for y in years], dtype=np.int64)
        members: dict[str, list[int]] = {}
        for row, cats in enumerate(categories):
            for category in dict.fromkeys(cats):
                members.setdefault(category, []).append(row)
        # Inverted index: category -> sorted rows. A mask for one category is one fancy assignment.
        self.members = {c: np.array(rows, dtype=np.int64) for c, rows in members.items()}
        self._categories = [list(dict.fromkeys(c)) for c in categories]

    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def vocabulary(self) -> list[str]:
        """Categories by how many items carry them, most first."""
        return sorted(self.members, key=lambda c: (-len(self.members[c]), c))

    def categories_of(self, item_id: str) -> list[str]:
        return list(self._categories[self.row_of[item_id]]) if item_id in self.row_of else []

    def year_of(self, item_id: str) -> int | None:
        year = int(self.years[self.row_of[item_id]]) if item_id in self.row_of else NO_YEAR
        return None if year == NO_YEAR else year

    def year_range(self) -> tuple[int, int] | None:
        known = self.years[self.years != NO_YEAR]
        return (int(known.min()), int(known.max())) if len(known) else None

    def year_quantile(self, q: float) -> int | None:
        known = self.years[self.years != NO_YEAR]
        return int(np.quantile(known, q, method="nearest")) if len(known) else None

    def _has(self, category: str) -> np.ndarray:
        mask = np.zeros(len(self.item_ids), dtype=bool)
        rows = self.members.get(category)
        if rows is not None:
            mask[rows] = True
        return mask

    def mask(self, constraints: Constraints) -> np.ndarray:
        """Boolean mask over items (this object's order) of those the constraint allows."""
        allowed = np.ones(len(self.item_ids), dtype=bool)
        for group in constraints.want:
            allowed &= np.logical_or.reduce([self._has(c) for c in group])
        for category in constraints.avoid:
            allowed &= ~self._has(category)
        if constraints.like_categories:
            allowed &= np.logical_or.reduce([self._has(c) for c in constraints.like_categories])
        if constraints.year_min is not None:
            allowed &= self.years >= constraints.year_min
        if constraints.year_max is not None:
            allowed &= (self.years <= constraints.year_max) & (self.years != NO_YEAR)
        if constraints.among:
            rows = [self.row_of[i] for i in constraints.among if i in self.row_of]
            among = np.zeros(len(self.item_ids), dtype=bool)
            among[rows] = True
            allowed &= among
        return allowed

    def allowed_items(self, constraints: Constraints) -> list[str]:
        return [self.item_ids[r] for r in np.flatnonzero(self.mask(constraints))]

    # -- a file the vLLM server reads ---------------------------------------------------------
    def to_json(self) -> dict:
        return {"item_ids": self.item_ids, "years": [self.year_of(i) for i in self.item_ids],
                "categories": self._categories}

    @classmethod
    def from_json(cls, spec: dict) -> Facets:
        return cls(spec["item_ids"], spec["years"], spec["categories"])

    @classmethod
    def load(cls, path: str | Path) -> Facets:
        return cls.from_json(json.loads(Path(path).read_text()))


class ConstraintFilters:
    """Trie filters for constraints over one catalog, built from its facets and cached (a genre is
    asked for often, and every beam step of a vLLM request is a request). The app's recommender
    and the vLLM server's processor each keep one, so both restrict the trie the same way."""

    def __init__(self, trie, facets: Facets | None, cache_size: int = 64, missing: str = "no catalog facets"):
        self.trie, self.facets = trie, facets
        # Node indices on every item's path in facet order: a mask becomes a filter with one bincount.
        self.node_paths = trie.node_paths(facets.item_ids) if facets is not None else None
        self._cache: OrderedDict[str, object] = OrderedDict()
        self._cache_size = cache_size
        self._missing = missing
        self._lock = threading.Lock()

    def __call__(self, constraints: Constraints | None):
        """The ``TrieFilter`` of the hard constraints, or None when there are none."""
        if constraints is None or not constraints.is_hard():
            return None
        if self.facets is None:
            raise ValueError(f"{self._missing}: request constraints cannot be applied")
        key = constraints.key()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        built = self.trie.restrict(self.node_paths, self.facets.mask(constraints))
        with self._lock:
            self._cache[key] = built
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return built
