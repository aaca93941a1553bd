"""Read side of a dataset's catalog: items by id, SID or row, title and free-text search.

    thinkrec catalog search --data artifacts/ml-100k --query "space adventure" --k 10
    thinkrec catalog lookup --data artifacts/ml-100k --sid "<a_3><b_17><c_5>"

Search ranks exact title matches first, then close title matches (rapidfuzz), then items whose
text embedding is nearest to the query's (FAISS over the same sentence encoder the build used).
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path

import numpy as np
from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from data.catalog_db import AttributeRow, ItemRow, SIDRow, make_engine, sqlite_url
from data.manifest import CATALOG_DB, EMBEDDINGS, FAISS_INDEX, Manifest
from data.sid_text import parse_sid, sid_string


class CatalogItem(BaseModel):
    row: int
    item_id: str
    title: str
    year: int | None = None
    categories: list[str] = []
    brand: str = ""
    description: str = ""
    sid: str
    codes: list[int]
    popularity: int = 0
    extra: dict[str, str] = {}
    score: float | None = None
    match: str | None = None        # exact | title | semantic, for search results

    def label(self) -> str:
        return f"{self.title} ({self.year})" if self.year else self.title


def _item(row: ItemRow, **extra) -> CatalogItem:
    return CatalogItem(row=row.row, item_id=row.item_id, title=row.title, year=row.year,
                       categories=row.categories or [], brand=row.brand, description=row.description,
                       sid=row.sid.sid, codes=row.sid.codes, popularity=row.popularity,
                       extra=row.extra or {}, **extra)


def _normalize(title: str) -> str:
    """Lower case, punctuation to spaces, no leading article: 'The Usual Suspects' ~ 'usual suspects'."""
    title = re.sub(r",\s*(the|a|an)(\s*\(|$)", r"\2", title.strip(), flags=re.IGNORECASE)   # 'Usual Suspects, The'
    text = re.sub(r"[^0-9a-z]+", " ", title.lower().replace("'", "").replace("\u2019", "")).strip()
    return re.sub(r"^(the|a|an) ", "", text)


class Catalog:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.manifest = Manifest.load(self.folder)
        url = self.manifest.catalog_url or sqlite_url(self.folder / CATALOG_DB)
        self.engine = make_engine(url)

    def __len__(self) -> int:
        return self.manifest.num_items

    # -- lookups -----------------------------------------------------------------------------
    def _one(self, where, what: str) -> CatalogItem:
        with Session(self.engine) as session:
            row = session.scalars(select(ItemRow).join(SIDRow).where(where)).first()
            if row is None:
                raise KeyError(what)
            return _item(row)

    def item(self, item_id: str) -> CatalogItem:
        return self._one(ItemRow.item_id == str(item_id), f"no item with id '{item_id}' in the catalog")

    def by_sid(self, sid: str) -> CatalogItem:
        canonical = sid_string(parse_sid(sid))  # ValueError for malformed text
        return self._one(SIDRow.sid == canonical, f"no item has the SID {canonical}")

    def by_rows(self, rows: list[int]) -> list[CatalogItem]:
        with Session(self.engine) as session:
            found = {r.row: r for r in session.scalars(select(ItemRow).where(ItemRow.row.in_(rows)))}
            return [_item(found[r]) for r in rows if r in found]

    def items(self, item_ids: list[str]) -> list[CatalogItem]:
        with Session(self.engine) as session:
            found = {r.item_id: r for r in session.scalars(select(ItemRow).where(ItemRow.item_id.in_(item_ids)))}
            return [_item(found[i]) for i in item_ids if i in found]

    def sid_codes(self) -> dict[str, list[int]]:
        """item_id -> SID codes for the whole catalog (what the trie is built from)."""
        with Session(self.engine) as session:
            rows = session.execute(select(ItemRow.item_id, SIDRow.codes).join(SIDRow, SIDRow.row == ItemRow.row))
            return {item_id: list(codes) for item_id, codes in rows}

    def attribute_table(self) -> tuple[list[str], list[int | None], list[list[str]]]:
        """Every item's id, year and categories (catalog order): what request filters are built from."""
        with Session(self.engine) as session:
            rows = session.execute(select(ItemRow.item_id, ItemRow.year, ItemRow.categories).order_by(ItemRow.row)).all()
        return [r[0] for r in rows], [r[1] for r in rows], [list(r[2] or []) for r in rows]

    def duplicates(self) -> dict[str, str]:
        """Items the catalog lists more than once under one title and year (ML-100K has a few):
        each such item id -> the first id of its group. Other items are not in the map."""
        with Session(self.engine) as session:
            twice = (select(ItemRow.title, ItemRow.year).group_by(ItemRow.title, ItemRow.year)
                     .having(func.count() > 1).subquery())
            rows = session.execute(select(ItemRow.item_id, ItemRow.title, ItemRow.year)
                                   .join(twice, (ItemRow.title == twice.c.title) & (ItemRow.year.is_(twice.c.year)))
                                   .order_by(ItemRow.row)).all()
        first: dict[tuple, str] = {}
        return {item_id: first.setdefault((title, year), item_id) for item_id, title, year in rows}

    def description_share(self) -> float:
        """Share of items whose text has a description beyond the title and categories."""
        with Session(self.engine) as session:
            described = session.scalar(select(func.count()).select_from(ItemRow).where(func.length(ItemRow.description) > 20))
            total = session.scalar(select(func.count()).select_from(ItemRow))
        return float(described or 0) / max(1, total or 0)

    def attribute_keys(self) -> set[str]:
        """Attribute names the catalog's items carry (genre, decade, price, language, ...)."""
        with Session(self.engine) as session:
            keys = set(session.scalars(select(AttributeRow.key).distinct()))
            for extra in session.scalars(select(ItemRow.extra).limit(50)):     # a sample of the free fields
                keys |= set((extra or {}).keys())
        return keys

    def with_attribute(self, key: str, value: str) -> list[str]:
        """Item ids having attribute key=value (e.g. genre=Comedy, decade=1990s)."""
        with Session(self.engine) as session:
            query = (select(ItemRow.item_id).join(AttributeRow, AttributeRow.row == ItemRow.row)
                     .where(AttributeRow.key == key, AttributeRow.value == value).order_by(ItemRow.row))
            return list(session.scalars(query))

    # -- search ------------------------------------------------------------------------------
    @cached_property
    def _titles(self) -> list[tuple[int, str]]:
        with Session(self.engine) as session:
            return [(r, t) for r, t in session.execute(select(ItemRow.row, ItemRow.title).order_by(ItemRow.row))]

    @cached_property
    def index(self):
        from data.index import load_index

        return load_index(self.folder / FAISS_INDEX)

    @cached_property
    def _normalized_titles(self) -> dict[int, str]:
        return {row: _normalize(title) for row, title in self._titles}

    @cached_property
    def _rows_by_title(self) -> dict[str, list[int]]:
        rows: dict[str, list[int]] = {}
        for row, norm in self._normalized_titles.items():
            rows.setdefault(norm, []).append(row)
        return rows

    def exact_title(self, query: str) -> list[CatalogItem]:
        """Items whose normalized title is exactly ``query``'s (a dictionary lookup: cheap enough to
        try every phrase of a message)."""
        rows = self._rows_by_title.get(_normalize(query), [])
        return [i.model_copy(update={"score": 1.0, "match": "exact"}) for i in self.by_rows(rows)] if rows else []

    def search_titles(self, query: str, k: int = 10, cutoff: float = 85.0) -> list[CatalogItem]:
        """Exact (normalized) title matches, then titles containing the query, then fuzzy ones."""
        from rapidfuzz import fuzz, process

        wanted = _normalize(query)
        if not wanted:
            return []
        scored: dict[int, tuple[float, str]] = {}
        for row, norm in self._normalized_titles.items():
            if norm == wanted:
                scored[row] = (100.0, "exact")
            elif re.search(rf"\b{re.escape(wanted)}\b", norm):
                scored[row] = (95.0 - 0.01 * len(norm), "title")
        if len(wanted) >= 4:
            for _, score, row in process.extract(wanted, self._normalized_titles, scorer=fuzz.ratio, limit=k, score_cutoff=cutoff):
                scored.setdefault(row, (float(score) * 0.9, "title"))
        best = sorted(scored.items(), key=lambda kv: (-kv[1][0], kv[0]))[:k]
        items = {i.row: i for i in self.by_rows([row for row, _ in best])}
        return [items[row].model_copy(update={"score": round(s / 100.0, 4), "match": m})
                for row, (s, m) in best if row in items]

    def item_vectors(self) -> np.ndarray:
        """Every item's text embedding, in catalog row order (memory-mapped)."""
        return np.load(self.folder / EMBEDDINGS, mmap_mode="r")

    def id_title_table(self) -> tuple[list[str], list[str]]:
        """Every item's id and title, in catalog row order."""
        with Session(self.engine) as session:
            rows = session.execute(select(ItemRow.item_id, ItemRow.title).order_by(ItemRow.row)).all()
        return [r[0] for r in rows], [r[1] for r in rows]

    def search_vectors(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, rows) of the ``k`` items nearest to one query vector."""
        from data.index import search

        scores, rows = search(self.index, query, k)
        return scores[0], rows[0]

    def same_title(self, title: str) -> list[CatalogItem]:
        """Items whose normalized title equals ``title``'s, one per (title, year) (catalog
        duplicates of one film count once): more than one means the title is ambiguous."""
        wanted = _normalize(title)
        rows = [row for row, norm in self._normalized_titles.items() if norm == wanted]
        seen, out = set(), []
        for item in self.by_rows(rows):
            if (item.title, item.year) not in seen:
                seen.add((item.title, item.year))
                out.append(item)
        return out

    def embed_query(self, text: str) -> np.ndarray:
        from data.embed import encode

        return encode([text], self.manifest.config.encoder)

    def search_text(self, query: str, k: int = 10) -> list[CatalogItem]:
        """Items whose text embedding is nearest to the query's (cosine similarity)."""
        from data.index import search

        scores, rows = search(self.index, self.embed_query(query), k)
        pairs = [(int(r), float(s)) for r, s in zip(rows[0], scores[0]) if r >= 0]
        items = {i.row: i for i in self.by_rows([r for r, _ in pairs])}
        return [items[r].model_copy(update={"score": round(s, 4), "match": "semantic"}) for r, s in pairs]

    def search(self, query: str, k: int = 10) -> list[CatalogItem]:
        query = query.strip()
        if not query:
            raise ValueError("empty search query")
        results = self.search_titles(query, k)
        if len(results) < k:
            shown = {i.row for i in results}
            results += [i for i in self.search_text(query, k + len(shown)) if i.row not in shown][: k - len(results)]
        return results

    def similar(self, item_id: str, k: int = 10) -> list[CatalogItem]:
        """Nearest items to ``item_id`` by text embedding (itself left out)."""
        from data.index import search

        anchor = self.item(item_id)
        # From the saved embeddings: HNSW/IVF indexes cannot always give a vector back.
        vector = np.load(self.folder / EMBEDDINGS, mmap_mode="r")[anchor.row]
        scores, rows = search(self.index, np.asarray(vector)[None, :], k + 1)
        pairs = [(int(r), float(s)) for r, s in zip(rows[0], scores[0]) if r >= 0 and r != anchor.row][:k]
        items = {i.row: i for i in self.by_rows([r for r, _ in pairs])}
        return [items[r].model_copy(update={"score": round(s, 4), "match": "semantic"}) for r, s in pairs]
