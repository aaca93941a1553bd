"""In-memory records every loader produces: items, interactions, users and a load report.

Loaders (``data/loaders/*``) turn one raw source into a :class:`RawDataset`; everything after
that (cleaning, splits, embeddings, SIDs, catalog) is source-agnostic. Run a whole build with
``thinkrec data build --dataset ml-100k``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


class DataFormatError(ValueError):
    """Raw input that cannot be read at all (missing file or column). The message names both."""


@dataclass(slots=True)
class RawItem:
    item_id: str
    title: str
    year: int | None = None
    description: str = ""
    # Genres for movies, category path for products: ordered, most general first.
    categories: list[str] = field(default_factory=list)
    brand: str = ""
    # Anything else worth showing on an item card (price, store, url); string values only.
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class RawInteraction:
    user_id: str
    item_id: str
    timestamp: float
    rating: float | None = None


@dataclass
class LoadReport:
    """Counts of rows read, kept and rejected, per file and reason, with a few examples each.

    Nothing is dropped silently: every rejected row increments a counter that ends up in the
    manifest and in the build summary.
    """

    rows_read: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    max_examples: int = 3

    def read(self, file: str, n: int = 1) -> None:
        self.rows_read[file] += n

    def reject(self, file: str, reason: str, where: str) -> None:
        key = f"{file}: {reason}"
        self.rejected[key] += 1
        examples = self.examples.setdefault(key, [])
        if len(examples) < self.max_examples:
            examples.append(where)

    def note(self, text: str) -> None:
        self.notes.append(text)

    @property
    def total_rejected(self) -> int:
        return sum(self.rejected.values())

    def as_dict(self) -> dict:
        return {
            "rows_read": dict(self.rows_read),
            "rejected": dict(self.rejected),
            "examples": self.examples,
            "notes": self.notes,
        }


@dataclass
class RawDataset:
    name: str
    items: dict[str, RawItem]
    interactions: list[RawInteraction]
    # Optional per-user attributes (age, gender, occupation) used for persona text later.
    users: dict[str, dict[str, str]] = field(default_factory=dict)
    report: LoadReport = field(default_factory=LoadReport)
    # Where it came from (file paths, wheel name), recorded in the manifest.
    source: dict[str, str] = field(default_factory=dict)
    # What the item categories are called in text: "Genres" for movies.
    category_label: str = "Categories"
