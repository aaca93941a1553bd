"""The one text rendering of an item, shared by the embeddings and (later) the language model."""

from __future__ import annotations

from data.records import RawItem


def item_text(item: RawItem, category_label: str = "Categories", max_description: int = 400) -> str:
    """'Star Wars (1977). Genres: Action, Adventure, Sci-Fi.' — what the encoder reads."""
    head = f"{item.title} ({item.year})" if item.year else item.title
    parts = [head]
    if item.categories:
        parts.append(f"{category_label}: " + ", ".join(item.categories))
    if item.brand:
        parts.append(f"Brand: {item.brand}")
    if item.description:
        parts.append(item.description[:max_description])
    return ". ".join(p.rstrip(". ") for p in parts) + "."
