"""Conversation sessions that survive an app restart: the user's item history, the dialogue, and
feedback (a like adds the item to the history; a dislike excludes it for the rest of the session).

Stored with SQLAlchemy in any database URL, in its own tables (rebuilding the catalog drops only
the catalog's tables). Each session is isolated by its id. Note for the app: the manifest hashes
``catalog.db`` as a file, so writing sessions into that same SQLite file makes the next
``thinkrec data build`` see a changed file and rebuild; either hash the catalog tables' content or
keep sessions in a sibling database file.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

from sqlalchemy import JSON, DateTime, ForeignKey, Integer, String, Text, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from data.catalog_db import make_engine


class SessionBase(DeclarativeBase):
    pass


def _now() -> datetime:
    return datetime.now(timezone.utc)


class SessionRow(SessionBase):
    __tablename__ = "chat_sessions"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user_id: Mapped[str | None] = mapped_column(String(128), nullable=True)   # dataset user it started as
    history: Mapped[list] = mapped_column(JSON, default=list)                 # item ids, oldest first
    excluded: Mapped[list] = mapped_column(JSON, default=list)                # disliked item ids
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class TurnRow(SessionBase):
    __tablename__ = "chat_turns"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("chat_sessions.id"), index=True)
    role: Mapped[str] = mapped_column(String(16))          # user | assistant
    text: Mapped[str] = mapped_column(Text, default="")
    items: Mapped[list] = mapped_column(JSON, default=list)
    reasoning: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class FeedbackRow(SessionBase):
    __tablename__ = "chat_feedback"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("chat_sessions.id"), index=True)
    item_id: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))          # like | dislike
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


@dataclass
class Turn:
    role: str
    text: str
    items: list[str] = field(default_factory=list)
    reasoning: dict = field(default_factory=dict)


@dataclass
class ChatSession:
    id: str
    user_id: str | None
    history: list[str]
    excluded: list[str]
    turns: list[Turn]


class SessionStore:
    def __init__(self, url: str):
        self.engine = make_engine(url)
        SessionBase.metadata.create_all(self.engine)

    def create(self, user_id: str | None = None, history: list[str] | None = None) -> ChatSession:
        session_id = str(uuid.uuid4())
        with Session(self.engine) as db, db.begin():
            db.add(SessionRow(id=session_id, user_id=user_id, history=list(history or []), excluded=[]))
        return self.get(session_id)

    def get(self, session_id: str) -> ChatSession:
        with Session(self.engine) as db:
            row = db.get(SessionRow, session_id)
            if row is None:
                raise KeyError(f"no session '{session_id}'")
            turns = db.scalars(select(TurnRow).where(TurnRow.session_id == session_id).order_by(TurnRow.id))
            return ChatSession(row.id, row.user_id, list(row.history), list(row.excluded),
                               [Turn(t.role, t.text, list(t.items), dict(t.reasoning)) for t in turns])

    def add_turn(self, session_id: str, turn: Turn) -> None:
        with Session(self.engine) as db, db.begin():
            row = db.get(SessionRow, session_id)
            if row is None:
                raise KeyError(f"no session '{session_id}'")
            db.add(TurnRow(session_id=session_id, role=turn.role, text=turn.text, items=list(turn.items),
                           reasoning=dict(turn.reasoning)))
            row.updated_at = _now()

    def feedback(self, session_id: str, item_id: str, kind: str) -> ChatSession:
        """Record a like (item joins the history) or dislike (item is excluded from now on)."""
        if kind not in ("like", "dislike"):
            raise ValueError(f"feedback must be 'like' or 'dislike', not '{kind}'")
        with Session(self.engine) as db, db.begin():
            row = db.get(SessionRow, session_id)
            if row is None:
                raise KeyError(f"no session '{session_id}'")
            db.add(FeedbackRow(session_id=session_id, item_id=item_id, kind=kind))
            history, excluded = list(row.history), list(row.excluded)
            if kind == "like":
                history = [i for i in history if i != item_id] + [item_id]
                excluded = [i for i in excluded if i != item_id]
            elif item_id not in excluded:
                excluded.append(item_id)
            row.history, row.excluded, row.updated_at = history, excluded, _now()
        return self.get(session_id)
