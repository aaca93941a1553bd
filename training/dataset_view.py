"""Everything a training stage reads from a dataset artifact folder, loaded once: items with their
attributes and SID codes, the text embeddings, the splits and (when the source has them) users."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from data.catalog import Catalog, CatalogItem
from data.clean import read_split
from data.manifest import EMBEDDINGS, Manifest
from training.teacher import ItemFacts


@dataclass
class DatasetView:
    folder: Path
    manifest: Manifest
    items: dict[str, CatalogItem]          # by item id, catalog order
    embeddings: np.ndarray
    train: list[dict]
    valid: list[dict]
    test: list[dict]
    users: dict[str, dict]

    @classmethod
    def load(cls, folder: str | Path) -> DatasetView:
        folder = Path(folder)
        catalog = Catalog(folder)
        manifest = catalog.manifest
        ids = list(catalog.sid_codes())
        items = {item.item_id: item for item in catalog.items(ids)}
        users_file = folder / "users.jsonl"
        users = {}
        if users_file.exists():
            for line in users_file.read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                users[row.pop("user_id")] = row
        splits = {name: read_split(folder / "splits" / f"{name}.jsonl") for name in ("train", "valid", "test")}
        return cls(folder, manifest, items, np.load(folder / EMBEDDINGS), splits["train"], splits["valid"],
                   splits["test"], users)

    @cached_property
    def codes(self) -> dict[str, tuple[int, ...]]:
        return {item_id: tuple(item.codes) for item_id, item in self.items.items()}

    @cached_property
    def facts(self) -> dict[str, ItemFacts]:
        return {i.item_id: ItemFacts(i.item_id, i.title, i.year, tuple(i.categories), i.row)
                for i in self.items.values()}

    @cached_property
    def facets(self):
        """Years and categories of every item, for request filters (engine.constraints.Facets)."""
        from engine.constraints import Facets

        return Facets(list(self.items), [i.year for i in self.items.values()],
                      [list(i.categories) for i in self.items.values()])

    @cached_property
    def vocabulary(self) -> list[str]:
        """Categories by how many items carry them, most first."""
        from collections import Counter

        counts = Counter(c for item in self.items.values() for c in dict.fromkeys(item.categories))
        return [c for c, _ in counts.most_common()]

    @property
    def category_word(self) -> str:
        return self.manifest.category_key   # "genre" for movies, "category" for products

    def label(self, item_id: str) -> str:
        return self.items[item_id].label()
