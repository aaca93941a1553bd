"""SQL schema of the catalog (SQLAlchemy 2) and the writer used by the dataset build.

Tables: ``items`` (one row per item; ``row`` is its position in embeddings and the FAISS index),
``item_sids`` (the item's Semantic ID as text and as codes), ``item_attributes`` (key/value pairs
such as genre=Comedy, for filters and instruction-following checks) and ``catalog_info``.
SQLite by default (``catalog.db``); any SQLAlchemy URL works.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text, create_engine, insert
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from data.records import RawItem


class Base(DeclarativeBase):
    pass


class ItemRow(Base):
    __tablename__ = "items"
    row: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    item_id: Mapped[str] = mapped_column(String(128), unique=True, index=True)
    title: Mapped[str] = mapped_column(String(512), index=True)
    year: Mapped[int | None] = mapped_column(Integer, nullable=True)
    brand: Mapped[str] = mapped_column(String(256), default="")
    description: Mapped[str] = mapped_column(Text, default="")
    categories: Mapped[list] = mapped_column(JSON, default=list)
    extra: Mapped[dict] = mapped_column(JSON, default=dict)
    popularity: Mapped[int] = mapped_column(Integer, default=0)  # training interactions
    text: Mapped[str] = mapped_column(Text, default="")           # what the encoder embedded
    sid: Mapped[SIDRow] = relationship(back_populates="item", uselist=False, lazy="joined")


class SIDRow(Base):
    __tablename__ = "item_sids"
    row: Mapped[int] = mapped_column(ForeignKey("items.row"), primary_key=True)
    sid: Mapped[str] = mapped_column(String(128), unique=True, index=True)
    codes: Mapped[list] = mapped_column(JSON)
    item: Mapped[ItemRow] = relationship(back_populates="sid")


class AttributeRow(Base):
    __tablename__ = "item_attributes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    row: Mapped[int] = mapped_column(ForeignKey("items.row"), index=True)
    key: Mapped[str] = mapped_column(String(64))
    value: Mapped[str] = mapped_column(String(256))
    __table_args__ = (Index("ix_attr_key_value", "key", "value"),)


class InfoRow(Base):
    __tablename__ = "catalog_info"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def make_engine(url: str) -> Engine:
    # SQLite from several threads (the app serves several users): allow cross-thread use.
    kwargs = {"connect_args": {"check_same_thread": False}} if url.startswith("sqlite") else {}
    return create_engine(url, **kwargs)


def write_catalog(url: str, items: Sequence[RawItem], texts: Sequence[str], sids: Sequence[str],
                  codes: Sequence[Sequence[int]], popularity: Sequence[int], category_key: str,
                  info: dict[str, str]) -> None:
    """(Re)create the catalog tables at ``url`` and fill them; rows follow ``items`` order."""
    engine = make_engine(url)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    item_rows = [dict(row=row, item_id=item.item_id, title=item.title, year=item.year, brand=item.brand,
                      description=item.description, categories=list(item.categories),
                      extra=dict(item.extra), popularity=int(popularity[row]), text=texts[row])
                 for row, item in enumerate(items)]
    sid_rows = [dict(row=row, sid=sids[row], codes=[int(c) for c in codes[row]]) for row in range(len(items))]
    attribute_rows = []
    for row, item in enumerate(items):
        pairs = [(category_key, value) for value in dict.fromkeys(item.categories)]
        if item.year:
            pairs += [("year", str(item.year)), ("decade", f"{item.year // 10 * 10}s")]
        if item.brand:
            pairs.append(("brand", item.brand))
        attribute_rows += [dict(row=row, key=key, value=value[:256]) for key, value in pairs]
    info_rows = [dict(key=k, value=v if isinstance(v, str) else json.dumps(v)) for k, v in info.items()]
    with Session(engine) as session, session.begin():
        # Bulk inserts (executemany): a million-item catalog writes in seconds, not minutes.
        for table, rows in ((ItemRow, item_rows), (SIDRow, sid_rows), (AttributeRow, attribute_rows),
                            (InfoRow, info_rows)):
            if rows:
                session.execute(insert(table), rows)
    engine.dispose()
