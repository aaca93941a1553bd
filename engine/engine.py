"""The conversation engine: sessions, turns and feedback over one checkpoint and its catalog.

A turn renders the conversation, streams the three reasoning levels token by token (thinking on),
beam-searches the SID steps under the trie for K distinct, unseen items, maps them to catalog
items, writes a short reply and a trace — all as typed events (engine/events.py). It knows nothing
about Gradio. Each message is parsed into a typed request (engine/request.py) and merged into the
session's active constraints, which restrict the trie: every item satisfies them. Items come
from the same ``Recommender.recommend`` that eval and RL call. Think-Ahead: reasoning is cached
by the whole conversation state (prompt, exclusions, constraints), so repeating a turn decodes
only the items (the trace says when the cache was used). Tokens come
from a backend (engine/backends.py): the checkpoint's model in this process, or a vLLM server
started by ``thinkrec serve-model`` (``backend="vllm", model_url=...``).

    engine = Engine("artifacts/ml-100k", "checkpoints/ml-100k-tiny/sft")
    session = engine.start_session(user_id="1")
    for event in engine.turn(session.id, "a 90s comedy please"):
        print(event)
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path

from data.catalog import Catalog
from data.catalog_db import sqlite_url
from data.clean import read_split
from engine.backends import BackendUnavailable, BatchedBackend
from engine.constraints import Constraints, Facets
from engine.events import ErrorEvent, Event, ItemCard, RequestInfo, TraceEvent, collect, said
from engine.reasoning import FULL_REASONING_TOKENS, SHORTEST_REASONING_TOKENS
from engine.recommender import open_recommender
from engine.sessions import ChatSession, ConstraintConflict, SessionStore, Turn
from engine.turns import TurnSteps, clean_message
from engine.understanding import catalog_parser

log = logging.getLogger(__name__)
# For robustness benchmarks (``thinkrec bench-load``): a turn whose message equals this variable's
# value fails inside the model's thread, as a bug or an out-of-memory error would. Unset: never.
FAIL_ENV = "THINKREC_FAIL_ON"
# A turn that produces no event for this long is given up on (its worker is left to finish alone).
TURN_TIMEOUT_S = 300.0
_DONE = object()


class _SessionLock:
    """A session's turn lock, weakly kept: it lives while a turn holds or waits on it."""

    __slots__ = ("__weakref__", "lock")

    def __init__(self):
        self.lock = threading.Lock()

# Reasoning budgets a turn can ask for: "off" answers without reasoning; the others cap every
# reasoning token, the engine-written levels 1-2 and the closing one included (engine/reasoning.py:
# levels 1-2 take a shorter form until level 3 has its room). "short" is each turn's shortest complete
# reasoning (SHORTEST_REASONING_TOKENS: usually one interest with one citation, its trend, and level
# 3), sized by that turn's history and request; "full" holds the whole reading of any ML-100K history
# (longest 233 tokens) and level 3's 40, so it cuts nothing the model was trained and evaluated with.
# A token count smaller than a turn's shortest three levels (ReasoningPlan.min_tokens) is raised to
# it, with a notice.
BUDGETS = {"off": 0, "short": SHORTEST_REASONING_TOKENS, "full": FULL_REASONING_TOKENS, "auto": FULL_REASONING_TOKENS}
# "auto" reasons only under an active request, where level 3 serves it, and answers directly otherwise
# (Recommender.worth_reasoning: a long history alone, measured, does not pay for the reasoning).


def budget_tokens(budget: str | int) -> int:
    """Reasoning tokens for a budget name ("off", "short", "full") or a token count."""
    if isinstance(budget, int) and not isinstance(budget, bool):
        if budget < 0:
            raise ValueError(f"a reasoning budget is a token count >= 0, not {budget}")
        return budget
    if not isinstance(budget, str) or budget not in BUDGETS:
        raise ValueError(f"unknown reasoning budget '{budget}': use one of {', '.join(BUDGETS)} or a token count")
    return BUDGETS[budget]


class Engine:
    """The conversation service: sessions, their locks, a turn's own thread and its timeout, and
    what is saved; the turn's steps themselves are ``steps`` (engine/turns.py)."""

    def __init__(self, data: str | Path, checkpoint: str | Path, sessions_url: str | None = None,
                 device: str | None = None, history_items: int | None = None, max_message_chars: int = 2000,
                 think_cache_size: int = 1024, backend: str = "transformers", model_url: str | None = None,
                 batching: bool = True):
        self.data, self.checkpoint = Path(data), Path(checkpoint)
        self.catalog = Catalog(self.data)
        self.facets = Facets(*self.catalog.attribute_table())
        self.recommender, self.meta = open_recommender(self.checkpoint, self.data, self.catalog.sid_codes(), backend,
                                                       model_url, device, history_items, facets=self.facets)
        self.model, self.tokenizer = self.recommender.model, self.recommender.tokenizer
        if self.model is not None and batching:
            # Concurrent sessions share each forward pass (engine/scheduler.py).
            r = self.recommender
            r.use_backend(BatchedBackend(self.model, self.tokenizer, r.trie, r.filter_for, r.slots))
        self.backend = self.recommender.backend
        # Without batching, one in-process model serves one turn at a time. The batch scheduler and
        # a vLLM server each batch concurrent turns themselves, so those go to them unserialised.
        serial = self.model is not None and not batching
        self.steps = TurnSteps(self.recommender, self.catalog, self.facets, catalog_parser(self.catalog, self.facets),
                               max_message_chars, think_cache_size, threading.Lock() if serial else None)
        # Sessions live beside the catalog, not inside catalog.db: the manifest hashes that file.
        self.sessions = SessionStore(sessions_url or sqlite_url(self.data / "sessions.db"))
        # Dataset users' full histories ("start as user"), read once rather than on every session.
        self.user_histories = {row["user_id"]: row["history"] + [row["target"]]
                               for row in read_split(self.data / "splits" / "test.jsonl")}
        self._fail_on = os.environ.get(FAIL_ENV) or None
        self._session_locks: weakref.WeakValueDictionary[str, _SessionLock] = weakref.WeakValueDictionary()
        self._locks_guard = threading.Lock()

    # -- sessions ----------------------------------------------------------------------------
    def dataset_history(self, user_id: str) -> list[str]:
        if str(user_id) not in self.user_histories:
            raise KeyError(f"no user '{user_id}' in {self.data}")
        return list(self.user_histories[str(user_id)])

    def start_session(self, user_id: str | None = None) -> ChatSession:
        history = self.dataset_history(user_id) if user_id else []
        return self.sessions.create(user_id=user_id, history=history)

    def replay(self, session_id: str, user_text: str, items: list[str] = (), reply: str = "") -> ChatSession:
        """Add an exchange that happened elsewhere (a client holding the whole message list):
        its request updates the constraints and its items count as shown, as if this engine had
        answered it."""
        session = self.sessions.get(session_id, traces=False)
        text, _ = clean_message(user_text, self.steps.max_message_chars)
        request, constraints = self.steps.understand(session, text)
        known = [str(i) for i in items if str(i) in self.recommender.sid_codes]
        if not known:
            # An exchange that ended in a question (no items): its answer comes next.
            seen = set(session.history) | set(session.shown())
            asked = self.steps.question(request, constraints, self.recommender.available(constraints, seen), 10, seen)
            if asked is not None:
                constraints = constraints.model_copy(update={"pending": asked})
        turns = [Turn("user", text, request=request.model_dump())]
        if known or reply:
            turns.append(Turn("assistant", reply, known))
        self._save(session, text, turns, constraints)
        return self.sessions.get(session_id, traces=False)

    def feedback(self, session_id: str, item_id: str, kind: str) -> ChatSession:
        self.catalog.item(item_id)                # unknown items are refused (KeyError)
        return self.sessions.feedback(session_id, item_id, kind)

    BUSY = "This session is answering another message; send yours once it has finished."

    def busy(self, session_id: str) -> bool:
        """Whether a turn is running in this session now (a cheap check before any work; the turn
        itself still refuses a second one atomically)."""
        with self._locks_guard:
            held = self._session_locks.get(session_id)
        return held is not None and held.lock.locked()

    def _session_lock(self, session_id: str) -> _SessionLock:
        """Turns of one session run one at a time: the second sees what the first showed."""
        with self._locks_guard:
            held = self._session_locks.get(session_id)
            if held is None:
                held = self._session_locks[session_id] = _SessionLock()
            return held

    # -- a turn --------------------------------------------------------------------------------
    def turn(self, session_id: str, message: str | None, thinking: bool = True, k: int = 10,
             num_beams: int = 20, budget: str | int = "full") -> Iterator[Event]:
        """One turn's events. ``budget``: how long the reasoning may be ("off", "short", "full" or
        a token count; see ``BUDGETS``); "off" or 0 is the same as ``thinking=False``."""
        try:
            if message is not None and not isinstance(message, str):
                raise ValueError(f"a message is text, not {type(message).__name__}")
            self.sessions.get(session_id, traces=False)
            tokens = budget_tokens(budget)
        except (KeyError, ValueError) as error:
            yield ErrorEvent(message=said(error))
            return
        thinking = bool(thinking) and tokens > 0
        held = self._session_lock(session_id)
        if not held.lock.acquire(blocking=False):
            # Queueing behind a turn in progress would hold a serving thread for nothing.
            yield ErrorEvent(message=self.BUSY, code="busy")
            return
        # The turn runs to completion on its own thread and hands its events over a queue: the lock
        # is never held while a client reads (a slow reader cannot stall its session or a server
        # worker), and a turn's events are bounded by its budget, so the queue is too.
        events: queue.SimpleQueue = queue.SimpleQueue()

        def work() -> None:
            try:
                for event in self._turn(session_id, message, thinking, k, num_beams, tokens, budget == "auto"):
                    events.put(event)
            except BackendUnavailable as error:
                # Nothing of this turn was saved (the exchange is written at its end, in one
                # transaction), so the session is as it was before the message.
                events.put(ErrorEvent(message=f"The model server is not answering, so this turn was not answered: "
                                              f"{error}. Your session is kept; send the message again once the server "
                                              "is back.", code="outage"))
            except Exception as error:
                log.exception("turn failed in session %s", session_id)
                events.put(ErrorEvent(message=f"This turn failed ({type(error).__name__}); your session is kept as it "
                                              "was. Please send the message again.", code="failed"))
            finally:
                held.lock.release()
                events.put(_DONE)
        threading.Thread(target=work, name=f"turn-{session_id[:8]}", daemon=True).start()
        while True:
            try:
                event = events.get(timeout=TURN_TIMEOUT_S)
            except queue.Empty:
                yield ErrorEvent(message=f"This turn took longer than {TURN_TIMEOUT_S:.0f} s and was given up.",
                                 code="timeout")
                return
            if event is _DONE:
                return
            yield event

    def _turn(self, session_id: str, message: str | None, thinking: bool, k: int, num_beams: int,
              budget: int, adaptive: bool = False, save: bool = True) -> Iterator[Event]:
        """The steps in order (engine/turns.py); with ``save`` the exchange is stored before its
        trace is shown, in one transaction."""
        steps, outcome = self.steps, []
        turn = yield from steps.read(self.sessions.get(session_id, traces=False), message, thinking, k, num_beams,
                                     budget, adaptive)
        if self._fail_on and turn.text == self._fail_on:
            self._injected_failure()
        if turn.info.question:
            yield from steps.ask(turn, outcome.append)
        elif turn.info.available == 0:
            yield from steps.refuse(turn, outcome.append)
        else:
            if turn.thinking:
                yield from steps.reason(turn)
            yield from steps.answer(turn, steps.rank(turn), outcome.append)
        for turns, trace in outcome:
            if save:
                self._save(turn.session, turn.text, turns, turn.constraints)
            yield TraceEvent(trace=trace)

    def preview(self, session_id: str, message: str | None, thinking: bool = True, k: int = 10,
                num_beams: int = 20, budget: str | int = "full") -> tuple[list[ItemCard], RequestInfo | None, dict[str, str]]:
        """What a turn would show now (items, the request as understood, the levels), saving
        nothing: the side-by-side view asks the same turn in several modes. The same steps as a
        turn, folded as every client folds them."""
        tokens = budget_tokens(budget)
        result = collect(self._turn(session_id, message, bool(thinking) and tokens > 0, k, num_beams, tokens,
                                    budget == "auto", save=False))
        info = result.trace.request if result.trace is not None else None
        return list(result.items), info, result.levels

    def _injected_failure(self) -> None:
        def fail():
            raise RuntimeError(f"a failure injected by {FAIL_ENV}")

        if isinstance(self.backend, BatchedBackend):
            self.backend.scheduler.call(fail)          # a job that fails in the scheduler's thread
        fail()

    def _save(self, session: ChatSession, text: str, turns: list[Turn], constraints: Constraints,
              attempts: int = 5) -> None:
        """Save an exchange with the constraints it leaves, as a compare-and-swap on the version
        ``session`` was read at: if another process changed the constraints meanwhile, ``text`` is
        merged into theirs (understood again against the fresh session) and the swap tried again,
        so neither update is lost."""
        for _ in range(attempts):
            try:
                self.sessions.add_exchange(session.id, turns, constraints, read_version=session.constraints_version)
                return
            except ConstraintConflict:
                session = self.sessions.get(session.id, traces=False)
                pending = constraints.pending           # a question this turn asked stays asked
                _, constraints = self.steps.understand(session, text)
                if pending:
                    constraints = constraints.model_copy(update={"pending": pending})
        raise ConstraintConflict(f"session '{session.id}': the constraints kept changing under {attempts} tries")

    def close(self) -> None:
        """Stop the batch scheduler's thread (if any); the engine serves no turn after this."""
        if isinstance(self.backend, BatchedBackend):
            self.backend.close()
