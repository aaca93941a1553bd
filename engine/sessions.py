"""Conversation sessions that survive an app restart: the user's item history, the dialogue, and
feedback (a like adds the item to the history; a dislike excludes it for the rest of the session).

Sessions also keep the active request constraints (engine/constraints.py), so "no horror" survives
a restart. Updates are serialised (a process lock, ``SELECT ... FOR UPDATE`` where the database
has it, ``BEGIN IMMEDIATE`` on SQLite), so two clicks at once both land. A turn reads the
constraints when it starts and writes them when it ends, so that write is a compare-and-swap on
``constraints_version``: a writer that read an older version gets :class:`ConstraintConflict` and
merges again (``Engine._save``), so two processes on one database cannot lose an update.

Stored with SQLAlchemy in any database URL, in its own tables (rebuilding the catalog drops only
the catalog's tables). Each session is isolated by its id. Note for the app: the manifest hashes
``catalog.db`` as a file, so writing sessions into that same SQLite file makes the next
``thinkrec data build`` see a changed file and rebuild; either hash the catalog tables' content or
keep sessions in a sibling database file.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from sqlalchemy import delete as sa_delete
from sqlalchemy import JSON, DateTime, ForeignKey, Integer, String, Text, event, func, inspect, select, text, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, defer, mapped_column

from data.catalog_db import make_engine
from engine.constraints import Constraints


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
    constraints: Mapped[dict] = mapped_column(JSON, default=dict)             # active request constraints
    # Bumped by every constraint write: a write names the version it read, and loses if another
    # process wrote in between (compare-and-swap; see SessionStore.add_exchange).
    constraints_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
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
    request: Mapped[dict] = mapped_column(JSON, default=dict)        # user turns: the parsed request
    # The turn's trace (engine.events.Trace as JSON, plus the item cards shown): on the assistant
    # turn of an answered exchange, on the user turn of a refused one (nothing satisfied it).
    trace: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class FeedbackRow(SessionBase):
    __tablename__ = "chat_feedback"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("chat_sessions.id"), index=True)
    item_id: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))          # like | dislike
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class ConstraintConflict(RuntimeError):
    """A constraint write named a version that is no longer current (another writer came first)."""


@dataclass
class Turn:
    role: str
    text: str
    items: list[str] = field(default_factory=list)
    reasoning: dict = field(default_factory=dict)
    request: dict = field(default_factory=dict)
    trace: dict = field(default_factory=dict)      # see TurnRow.trace; {} for turns stored without one
    created_at: datetime | None = None             # set by the store


@dataclass
class SessionSummary:
    """One line of ``SessionStore.recent()``."""
    id: str
    user_id: str | None
    turns: int
    created_at: datetime | None
    updated_at: datetime | None


@dataclass
class ChatSession:
    id: str
    user_id: str | None
    history: list[str]
    excluded: list[str]
    turns: list[Turn]
    constraints: Constraints = field(default_factory=Constraints)
    created_at: datetime | None = None
    updated_at: datetime | None = None
    constraints_version: int = 0             # what a constraint write must name (add_exchange)

    def shown(self) -> list[str]:
        """Every item this session's answers have shown, oldest first."""
        return [i for t in self.turns if t.role == "assistant" for i in t.items]


def _serialized_sqlite(engine) -> None:
    """SQLite: every transaction takes the write lock when it begins (BEGIN IMMEDIATE), so two
    read-modify-write updates (two feedback clicks at once, from threads or processes) run one
    after the other instead of the second overwriting the first; WAL keeps readers unblocked."""
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None          # pysqlite: let SQLAlchemy's BEGIN through
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout = 30000")
        if engine.url.database not in (None, "", ":memory:"):
            cursor.execute("PRAGMA journal_mode = WAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")


# Retention: a session untouched for TTL_DAYS is removed, and beyond MAX_SESSIONS the least
# recently updated go first. Checked every PRUNE_EVERY new sessions (API calls without a session_id
# create one each), so the store is bounded under any traffic.
TTL_DAYS = 30
MAX_SESSIONS = 10_000
PRUNE_EVERY = 100


class SessionStore:
    def __init__(self, url: str, max_sessions: int = MAX_SESSIONS, ttl_days: float = TTL_DAYS):
        self.max_sessions, self.ttl_days = max_sessions, ttl_days
        self._created = 0
        self.engine = make_engine(url)
        if self.engine.dialect.name == "sqlite":
            _serialized_sqlite(self.engine)
        SessionBase.metadata.create_all(self.engine)
        self._add_missing_columns()
        self._lock = threading.Lock()      # one writer at a time from this process, on any database

    def _add_missing_columns(self) -> None:
        """Sessions saved by an older thinkrec lack the newer columns: add them, keep the rows."""
        inspector = inspect(self.engine)
        for table in (SessionRow.__table__, TurnRow.__table__):
            have = {c["name"] for c in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name not in have:
                    kind = column.type.compile(self.engine.dialect)
                    default = f" DEFAULT {column.server_default.arg}" if column.server_default is not None else ""
                    with self.engine.begin() as connection:
                        connection.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}{default}"))

    def create(self, user_id: str | None = None, history: list[str] | None = None) -> ChatSession:
        session_id = str(uuid.uuid4())
        with Session(self.engine) as db, db.begin():
            db.add(SessionRow(id=session_id, user_id=user_id, history=list(history or []), excluded=[]))
        with self._lock:
            self._created += 1
            due = self._created % PRUNE_EVERY == 0
        if due:
            self.prune()
        return self.get(session_id)

    def get(self, session_id: str, traces: bool = True) -> ChatSession:
        """The session with its turns; ``traces=False`` leaves each turn's trace out (a turn's
        path reads the dialogue, not the traces, which are most of the stored bytes)."""
        with Session(self.engine) as db:
            row = db.get(SessionRow, session_id)
            if row is None:
                raise KeyError(f"no session '{session_id}'")
            query = select(TurnRow).where(TurnRow.session_id == session_id).order_by(TurnRow.id)
            if not traces:
                query = query.options(defer(TurnRow.trace))
            turns = db.scalars(query)
            return ChatSession(row.id, row.user_id, list(row.history), list(row.excluded),
                               [Turn(t.role, t.text, list(t.items), dict(t.reasoning or {}), dict(t.request or {}),
                                     dict(t.trace or {}) if traces else {}, t.created_at)
                                for t in turns],
                               Constraints.model_validate(row.constraints or {}), row.created_at, row.updated_at,
                               row.constraints_version or 0)

    def delete(self, session_id: str) -> None:
        """Remove a session and everything stored with it (unknown ids are ignored)."""
        with self._lock, Session(self.engine) as db, db.begin():
            db.execute(sa_delete(TurnRow).where(TurnRow.session_id == session_id))
            db.execute(sa_delete(FeedbackRow).where(FeedbackRow.session_id == session_id))
            db.execute(sa_delete(SessionRow).where(SessionRow.id == session_id))

    def prune(self) -> int:
        """Apply the retention policy: sessions untouched for ``ttl_days`` go, then the least
        recently updated beyond ``max_sessions``. Returns how many were removed."""
        cutoff = _now() - timedelta(days=self.ttl_days)
        with Session(self.engine) as db:
            stale = list(db.scalars(select(SessionRow.id).where(SessionRow.updated_at < cutoff)))
            total = db.scalar(select(func.count()).select_from(SessionRow)) - len(stale)
            if total > self.max_sessions:
                stale += list(db.scalars(select(SessionRow.id).where(SessionRow.updated_at >= cutoff)
                                         .order_by(SessionRow.updated_at, SessionRow.id).limit(total - self.max_sessions)))
        for session_id in stale:
            self.delete(session_id)
        return len(stale)

    def recent(self, limit: int = 20) -> list[SessionSummary]:
        """The sessions updated last, newest first, with their number of stored turns."""
        with Session(self.engine) as db:
            counts = (select(TurnRow.session_id, func.count(TurnRow.id).label("turns"))
                      .group_by(TurnRow.session_id).subquery())
            rows = db.execute(select(SessionRow, func.coalesce(counts.c.turns, 0))
                              .outerjoin(counts, counts.c.session_id == SessionRow.id)
                              .order_by(SessionRow.updated_at.desc(), SessionRow.id).limit(max(1, limit)))
            return [SessionSummary(row.id, row.user_id, int(turns), row.created_at, row.updated_at)
                    for row, turns in rows]

    def _locked_row(self, db: Session, session_id: str) -> SessionRow:
        row = db.scalars(select(SessionRow).where(SessionRow.id == session_id).with_for_update()).first()
        if row is None:
            raise KeyError(f"no session '{session_id}'")
        return row

    def add_turn(self, session_id: str, turn: Turn) -> None:
        self.add_exchange(session_id, [turn])

    def add_exchange(self, session_id: str, turns: list[Turn], constraints: Constraints | None = None,
                     read_version: int | None = None) -> None:
        """Store a turn's messages and the constraints they leave active, all or nothing.

        ``read_version``: the ``constraints_version`` the constraints were derived from. The write
        is a compare-and-swap in the database (``UPDATE … WHERE constraints_version = read``): if
        another thread or process wrote the constraints since, nothing is stored and
        :class:`ConstraintConflict` is raised, so the caller can merge again instead of losing that
        update. None writes unconditionally."""
        with self._lock, Session(self.engine) as db, db.begin():
            row = self._locked_row(db, session_id)
            if constraints is not None:
                swap = (update(SessionRow).where(SessionRow.id == session_id)
                        .values(constraints=constraints.model_dump(),
                                constraints_version=func.coalesce(SessionRow.constraints_version, 0) + 1,
                                updated_at=_now()))
                if read_version is not None:
                    swap = swap.where(func.coalesce(SessionRow.constraints_version, 0) == read_version)
                if db.execute(swap.execution_options(synchronize_session=False)).rowcount != 1:
                    raise ConstraintConflict(f"session '{session_id}': its constraints changed since version "
                                             f"{read_version} was read")
            for turn in turns:
                db.add(TurnRow(session_id=session_id, role=turn.role, text=turn.text, items=list(turn.items),
                               reasoning=dict(turn.reasoning), request=dict(turn.request),
                               trace=dict(turn.trace) or None))
            if constraints is None:
                row.updated_at = _now()

    def set_constraints(self, session_id: str, constraints: Constraints) -> None:
        self.add_exchange(session_id, [], constraints)

    def feedback_of(self, session_id: str) -> list[tuple[str, str]]:
        """Every click recorded for a session, oldest first: (item_id, "like" | "dislike")."""
        with Session(self.engine) as db:
            rows = db.scalars(select(FeedbackRow).where(FeedbackRow.session_id == session_id).order_by(FeedbackRow.id))
            return [(row.item_id, row.kind) for row in rows]

    def feedback(self, session_id: str, item_id: str, kind: str) -> ChatSession:
        """Record a like (item joins the history) or dislike (item is excluded from now on)."""
        if kind not in ("like", "dislike"):
            raise ValueError(f"feedback must be 'like' or 'dislike', not '{kind}'")
        with self._lock, Session(self.engine) as db, db.begin():
            row = self._locked_row(db, session_id)
            db.add(FeedbackRow(session_id=session_id, item_id=item_id, kind=kind))
            history, excluded = list(row.history), list(row.excluded)
            if kind == "like":
                history = [i for i in history if i != item_id] + [item_id]
                excluded = [i for i in excluded if i != item_id]
            elif item_id not in excluded:
                excluded.append(item_id)
            row.history, row.excluded, row.updated_at = history, excluded, _now()
        return self.get(session_id)
