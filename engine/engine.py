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

import contextlib
import functools
import logging
import os
import queue
import re
import threading
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from data.catalog import Catalog
from data.catalog_db import sqlite_url
from data.clean import read_split
from engine.backends import BackendUnavailable, BatchedBackend
from engine.constraints import Constraints, Facets
from engine.events import (
    BeamCandidate,
    ErrorEvent,
    Event,
    ItemCard,
    ItemsEvent,
    NoticeEvent,
    ReasoningDelta,
    ReplyDelta,
    RequestInfo,
    Trace,
    TraceEvent,
)
from engine.prompt import DEFAULT_ASK, LEVELS, earlier_assistant_turn, render_spans
from engine.reasoning import FULL_REASONING_TOKENS
from engine.recommender import open_recommender
from engine.request import Request
from engine.request import apply as apply_request
from engine.sessions import ChatSession, ConstraintConflict, SessionStore, Turn
from engine.tokenizer import EVOLUTION, RECOMMENDATION, Message
from engine.understanding import (
    apply_answer,
    ask_first,
    catalog_parser,
    resolve_answer,
    soft_rerank,
)

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
# reasoning token, the engine-written levels 1-2 and the closing one included (engine/recommender.py:
# levels 1-2 take a shorter form until level 3 has its room). "short" gives one or two interests with
# one citation each; "full" holds the whole reading of any ML-100K history (longest 233 tokens) and
# level 3's 40, so it cuts nothing the model was trained and evaluated with. A budget smaller than a
# turn's shortest three levels (ReasoningPlan.min_tokens) is raised to it, with a notice.
BUDGETS = {"off": 0, "short": 64, "full": FULL_REASONING_TOKENS, "auto": FULL_REASONING_TOKENS}
# "auto" reasons only where reasoning carries what the direct answer lacks (Recommender.worth_reasoning:
# a history longer than the prompt's window, or an active request) and answers directly otherwise.


def budget_tokens(budget: str | int) -> int:
    """Reasoning tokens for a budget name ("off", "short", "full") or a token count."""
    if isinstance(budget, int) and not isinstance(budget, bool):
        if budget < 0:
            raise ValueError(f"a reasoning budget is a token count >= 0, not {budget}")
        return budget
    if budget not in BUDGETS:
        raise ValueError(f"unknown reasoning budget '{budget}': use one of {', '.join(BUDGETS)} or a token count")
    return BUDGETS[budget]


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def clean_message(text: str | None, max_chars: int) -> tuple[str, list[str]]:
    """What the model will read of a typed message, and notices for the user about changes."""
    notices = []
    text = text or ""
    stripped = _CONTROL.sub("", text)
    if stripped != text:
        notices.append("Removed control characters from your message.")
    stripped = stripped.strip()
    if len(stripped) > max_chars:
        notices.append(f"Your message was {len(stripped):,} characters; only the first {max_chars:,} were read.")
        stripped = stripped[:max_chars]
    return stripped, notices


@dataclass
class _TurnState:
    """What one turn has found out so far, handed from step to step (see ``Engine._turn``)."""

    session: ChatSession
    text: str
    request: Request
    constraints: Constraints
    info: RequestInfo
    exclude: set[str]
    thinking: bool
    k: int
    num_beams: int
    budget: int                       # reasoning tokens at most, every one counted (thinking)
    earlier: list[Message]
    prompt: list[int]
    started: float
    timings: dict[str, float] = field(default_factory=dict)
    reasoning_ids: list[int] = field(default_factory=list)
    levels: dict[str, str] = field(default_factory=lambda: dict.fromkeys(LEVELS, ""))
    cache_hit: bool = False

    def user_turn(self) -> Turn:
        return Turn("user", self.text, request=self.request.model_dump())


class Engine:
    def __init__(self, data: str | Path, checkpoint: str | Path, sessions_url: str | None = None,
                 device: str | None = None, history_items: int | None = None, max_message_chars: int = 2000,
                 think_cache_size: int = 1024, backend: str = "transformers", model_url: str | None = None,
                 batching: bool = True):
        self.data, self.checkpoint = Path(data), Path(checkpoint)
        self.catalog = Catalog(self.data)
        self.facets = Facets(*self.catalog.attribute_table())
        self.parser = catalog_parser(self.catalog, self.facets)
        self.recommender, self.meta = open_recommender(self.checkpoint, self.data, self.catalog.sid_codes(), backend,
                                                       model_url, device, history_items, facets=self.facets)
        self.model, self.tokenizer = self.recommender.model, self.recommender.tokenizer
        if self.model is not None and batching:
            # Concurrent sessions share each forward pass (engine/scheduler.py).
            r = self.recommender
            r.backend = BatchedBackend(self.model, self.tokenizer, r.trie, r.filter_for, r.slots)
        self.backend = self.recommender.backend
        # Sessions live beside the catalog, not inside catalog.db: the manifest hashes that file.
        self.sessions = SessionStore(sessions_url or sqlite_url(self.data / "sessions.db"))
        # Dataset users' full histories ("start as user"), read once rather than on every session.
        self.user_histories = {row["user_id"]: row["history"] + [row["target"]]
                               for row in read_split(self.data / "splits" / "test.jsonl")}
        self.max_message_chars = max_message_chars
        self._fail_on = os.environ.get(FAIL_ENV) or None
        # Without batching, one in-process model serves one turn at a time. The batch scheduler and
        # a vLLM server each batch concurrent turns themselves, so those go to them unserialised.
        serial = self.model is not None and not batching
        self._model_lock = threading.Lock() if serial else contextlib.nullcontext()
        self._think_cache: OrderedDict[tuple, list[int]] = OrderedDict()
        self._think_guard = threading.Lock()
        self._think_cache_size = think_cache_size
        self._session_locks: weakref.WeakValueDictionary[str, _SessionLock] = weakref.WeakValueDictionary()
        # Item labels for rendered reasoning, cached per engine (a cache on the class would keep
        # every engine ever built alive through its keys).
        self._label = functools.lru_cache(maxsize=4096)(self._label_of)
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
        text, _ = clean_message(user_text, self.max_message_chars)
        request, constraints = self.understand(session, text)
        known = [str(i) for i in items if str(i) in self.recommender.sid_codes]
        if not known:
            # An exchange that ended in a question (no items): its answer comes next.
            seen = set(session.history) | set(session.shown())
            asked = self._question(request, constraints, self.recommender.available(constraints, seen), 10, seen)
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

    # -- a turn --------------------------------------------------------------------------------
    def _earlier_turns(self, session: ChatSession, max_exchanges: int = 2) -> list[Message]:
        messages = []
        for turn in session.turns[-2 * max_exchanges:]:
            if turn.role == "user":
                messages.append(Message("user", turn.text or DEFAULT_ASK, trusted=False))
            elif turn.items:
                codes = [self.recommender.sid_codes[i] for i in turn.items[:3] if i in self.recommender.sid_codes]
                messages.append(earlier_assistant_turn(codes))
        return messages

    def render(self, text: str) -> str:
        """Reasoning text with its item spans shown as catalog titles."""
        return render_spans(text, self._label)

    def _label_of(self, sid: str) -> str:
        try:
            return self.catalog.by_sid(sid).label()
        except (KeyError, ValueError):
            return "(unknown item)"

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

    def understand(self, session: ChatSession, text: str) -> tuple[Request, Constraints]:
        """Parse the message and merge it into the session's active constraints. When the last
        turn asked a question and this message answers it, the answer is applied instead."""
        pending = session.constraints.pending
        if pending:
            option = resolve_answer(pending, text)
            if option is not None:
                request = Request(text=text, answered=True, notes=[f"Understood as your answer: {option['label']}."])
                return request, apply_answer(session.constraints, option)
        last_items = next((t.items for t in reversed(session.turns) if t.role == "assistant" and t.items), [])
        request = self.parser.parse(text, last_years=[y for y in map(self.facets.year_of, last_items) if y is not None],
                                    active=session.constraints)
        return request, apply_request(session.constraints, request, last_items)

    def _question(self, request: Request, constraints: Constraints, available: int | None, k: int,
                  exclude: set[str] = frozenset()) -> dict | None:
        return ask_first(request, constraints, available, k, lambda wider: self.recommender.available(wider, exclude))

    def _stream_levels(self, tokens: Iterator[int]) -> Iterator[tuple[str, str, int]]:
        """(level, text delta, token) while reasoning streams; the prompt opened the first level."""
        level, level_ids, shown = "derivation", [], ""
        markers = {self.tokenizer.ids[EVOLUTION]: "evolution", self.tokenizer.ids[RECOMMENDATION]: "recommendation"}
        for token in tokens:
            if token in markers:
                level, level_ids, shown = markers[token], [], ""
                yield level, "", token
                continue
            if token in (self.tokenizer.think_end_id, self.tokenizer.end_id):
                yield level, "", token
                return
            level_ids.append(token)
            # A level shows no leading space (the engine may write level 3's opener after one), as a
            # replay from the Think-Ahead cache shows it.
            text = self.render(self.tokenizer.decode(level_ids)).lstrip()
            if text.endswith("\ufffd") or not text.startswith(shown):   # half a character, or a span in progress
                yield level, "", token
                continue
            delta, shown = text[len(shown):], text
            yield level, delta, token

    def _reason(self, turn: _TurnState) -> Iterator[Event]:
        """Step 2 (thinking): stream the three levels, or replay them from the Think-Ahead cache."""
        # The key is the whole conversation state: the prompt holds the recent history, earlier turns
        # and this message; the whole history in order (levels 1-2 read all of it), exclusions and
        # constraints complete it. No two conversations share one.
        key = (tuple(turn.prompt), tuple(turn.session.history), tuple(sorted(turn.exclude)), turn.constraints.key(),
               turn.budget)
        started = time.perf_counter()
        with self._think_guard:
            cached = self._think_cache.get(key)
            if cached is not None:
                self._think_cache.move_to_end(key)
        if cached is not None:
            turn.cache_hit = True
            turn.reasoning_ids = list(cached)
            for level, body in self.recommender.writer.describe(cached)[1].items():
                body = self.render(body)
                turn.levels[level] = body
                if body:
                    yield ReasoningDelta(level=level, text=body)
        else:
            plan = self.recommender.planner.plan(turn.session.history, turn.constraints, turn.text or None, budget=turn.budget)
            if plan.min_tokens > turn.budget:
                yield NoticeEvent(text=f"The reasoning needs at least {plan.min_tokens} tokens for this history and "
                                       f"request, more than the budget of {turn.budget}; it used {plan.min_tokens}.")
                turn.budget = plan.min_tokens
            tokens = self.recommender.writer.stream(turn.prompt, plan, max_new_tokens=turn.budget)
            for level, delta, token in self._stream_levels(self._timed(tokens, turn.timings, started)):
                turn.reasoning_ids.append(token)
                if delta:
                    turn.levels[level] += delta
                    yield ReasoningDelta(level=level, text=delta)
            self._remember(key, turn.reasoning_ids)
        turn.timings["reasoning_ms"] = (time.perf_counter() - started) * 1000

    @staticmethod
    def _timed(tokens: Iterator[int], timings: dict, started: float) -> Iterator[int]:
        for token in tokens:
            timings.setdefault("first_token_ms", (time.perf_counter() - started) * 1000)
            yield token

    def _cards(self, ranked) -> tuple[list[ItemCard], list[BeamCandidate]]:
        found = {i.item_id: i for i in self.catalog.items([str(r.item_id) for r in ranked])}
        cards = [ItemCard(rank=n + 1, item_id=str(r.item_id), title=found[str(r.item_id)].title,
                          year=found[str(r.item_id)].year, categories=found[str(r.item_id)].categories,
                          sid=found[str(r.item_id)].sid, score=round(r.score, 4)) for n, r in enumerate(ranked)]
        beams = [BeamCandidate(item_id=c.item_id, title=c.title, sid=c.sid, score=c.score) for c in cards]
        return cards, beams

    def turn(self, session_id: str, message: str | None, thinking: bool = True, k: int = 10,
             num_beams: int = 20, budget: str | int = "full") -> Iterator[Event]:
        """One turn's events. ``budget``: how long the reasoning may be ("off", "short", "full" or
        a token count; see ``BUDGETS``); "off" or 0 is the same as ``thinking=False``."""
        try:
            self.sessions.get(session_id, traces=False)
            tokens = budget_tokens(budget)
        except (KeyError, ValueError) as error:
            yield ErrorEvent(message=str(error).strip("'\""))
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
              budget: int, adaptive: bool = False) -> Iterator[Event]:
        turn = yield from self._read(self.sessions.get(session_id, traces=False), message, thinking, k, num_beams, budget,
                                     adaptive)
        if self._fail_on and turn.text == self._fail_on:
            self._injected_failure()
        if turn.info.question:
            yield from self._ask(turn)
            return
        if turn.info.available == 0:
            yield from self._refuse(turn)
            return
        if turn.thinking:
            with self._model_lock:
                yield from self._reason(turn)
        with self._model_lock:
            result = self._rank(turn)
        yield from self._answer(turn, result)

    def _read(self, session: ChatSession, message: str | None, thinking: bool, k: int,
              num_beams: int, budget: int = BUDGETS["full"], adaptive: bool = False) -> Iterator[Event]:
        """Step 1: the message as a request merged into the session's constraints, what it leaves
        out, and how many items remain; notices about the message as events. Returns the turn."""
        text, notices = clean_message(message, self.max_message_chars)
        if message and not text:
            notices.append("Your message had no text; recommending from your history.")
        request, constraints = self.understand(session, text)
        if request.unparsed:
            notices.append("Not used as a filter (left to the model): " + ", ".join(request.unparsed[:12]) + ".")
        notices += request.notes
        for notice in notices:
            yield NoticeEvent(text=notice)
        k = max(1, min(int(k), 50))
        # Seen, disliked, already shown, turned down, and the title a "more like" names.
        exclude = (set(session.history) | set(session.excluded) | set(session.shown()) | set(constraints.turned_down)
                   | ({constraints.like_item} if constraints.like_item else set()))
        for reading in request.readings:
            yield NoticeEvent(text="Read by meaning: " + reading + ".")
        info = RequestInfo(understood=request.understood(), active=constraints.describe(),
                           constraints=constraints.model_dump(), unparsed=request.unparsed, notes=request.notes,
                           available=self.recommender.available(constraints, exclude),
                           readings=request.readings, soft=constraints.describe_soft(), unknown=request.unknown)
        asked = self._question(request, constraints, info.available, k, exclude)
        if asked is not None:
            info.question = asked["question"]
            constraints = constraints.model_copy(update={"pending": asked})
        elif info.available is not None and 0 < info.available < k:
            yield NoticeEvent(text=f"Only {info.available} item{'s' * (info.available != 1)} satisfy "
                                   f"{info.active}: showing all of them.")
        earlier = self._earlier_turns(session)
        thinking = thinking and (not adaptive or self.recommender.worth_reasoning(session.history, constraints))
        return _TurnState(session=session, text=text, request=request, constraints=constraints, info=info,
                          exclude=exclude, thinking=thinking, k=k, num_beams=max(k, int(num_beams or k)),
                          budget=budget, earlier=earlier, started=time.perf_counter(),
                          prompt=self.recommender.prompt_ids(session.history, text or None, earlier, thinking))

    def _ask(self, turn: _TurnState) -> Iterator[Event]:
        """One short question instead of a guess; the next message's answer is read against it
        (``understand``). The question is the reply, so every client shows it as the answer."""
        trace = Trace(turn_id=str(uuid.uuid4()), prompt="", prompt_tokens=0, thinking=turn.thinking,
                      backend=self.backend.name, k=turn.k, num_beams=turn.num_beams, request=turn.info,
                      latency_ms={"total_ms": round((time.perf_counter() - turn.started) * 1000, 1)})
        yield ReplyDelta(text=turn.info.question)
        self._save(turn.session, turn.text, [turn.user_turn(), Turn("assistant", turn.info.question, [],
                                                                    trace=trace.model_dump(mode="json"))],
                   turn.constraints)
        yield TraceEvent(trace=trace)

    def _refuse(self, turn: _TurnState) -> Iterator[Event]:
        """Nothing satisfies the constraints: the request is kept, the error says how to get out.
        The trace is stored on the user turn (there is no assistant turn to pair it with)."""
        trace = Trace(turn_id=str(uuid.uuid4()), prompt="", prompt_tokens=0, thinking=turn.thinking,
                      backend=self.backend.name, k=turn.k, num_beams=turn.num_beams, request=turn.info,
                      latency_ms={"total_ms": round((time.perf_counter() - turn.started) * 1000, 1)})
        user = turn.user_turn()
        user.trace = trace.model_dump(mode="json")
        self._save(turn.session, turn.text, [user], turn.constraints)
        yield ErrorEvent(message=f"No item you have not seen satisfies: {turn.info.active}. Change or lift a "
                                 "constraint (\"any decade\", \"horror is fine\", \"start over\").")
        yield TraceEvent(trace=trace)

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
                _, constraints = self.understand(session, text)
                if pending:
                    constraints = constraints.model_copy(update={"pending": pending})
        raise ConstraintConflict(f"session '{session.id}': the constraints kept changing under {attempts} tries")

    def _rank(self, turn: _TurnState):
        """Step 3: the items, through the same ``recommend`` as eval and RL, after the reasoning."""
        started = time.perf_counter()
        (result,) = self.recommender.recommend(
            [turn.session.history], k=turn.num_beams, num_beams=turn.num_beams, shown=turn.k, thinking=turn.thinking,
            user_texts=[turn.text or None], earlier_turns=[turn.earlier], exclude=[turn.exclude],
            constraints=[turn.constraints], reasoning=[turn.reasoning_ids] if turn.thinking else None)
        if turn.constraints.is_soft():
            result.items = soft_rerank(result.items, turn.constraints, self.facets)
        turn.timings["items_ms"] = (time.perf_counter() - started) * 1000
        return result

    def _answer(self, turn: _TurnState, result) -> Iterator[Event]:
        """Step 4: cards, the reply, the exchange saved with the session (the trace, and the cards
        shown, stored on the assistant turn, in the same transaction), and the trace."""
        cards, beams = self._cards(result.items)
        cards = cards[:turn.k]
        if not cards:
            yield ErrorEvent(message="No catalog item is left to recommend in this session.")
            return
        yield ItemsEvent(items=cards)
        reply = self._reply(cards, turn.text, turn.info)
        yield ReplyDelta(text=reply)
        turn.timings["total_ms"] = (time.perf_counter() - turn.started) * 1000
        item_prompt = self.recommender.item_prompt(turn.prompt, turn.reasoning_ids) if turn.thinking else turn.prompt
        trace = Trace(turn_id=str(uuid.uuid4()), prompt=self.tokenizer.decode(item_prompt),
                      prompt_tokens=len(turn.prompt), thinking=turn.thinking,
                      reasoning_tokens=len(turn.reasoning_ids), cache_hit=turn.cache_hit,
                      backend=self.backend.name, levels=turn.levels, beams=beams,
                      latency_ms={name: round(v, 1) for name, v in turn.timings.items()}, k=turn.k,
                      num_beams=turn.num_beams, request=turn.info,
                      max_reasoning_tokens=turn.budget if turn.thinking else 0, ranking=result.ranking)
        stored = trace.model_dump(mode="json") | {"items": [c.model_dump(mode="json") for c in cards]}
        self._save(turn.session, turn.text, [turn.user_turn(), Turn("assistant", reply, [c.item_id for c in cards],
                                                                    turn.levels, trace=stored)], turn.constraints)
        yield TraceEvent(trace=trace)

    def preview(self, session_id: str, message: str | None, thinking: bool = True, k: int = 10,
                num_beams: int = 20, budget: str | int = "full") -> tuple[list[ItemCard], RequestInfo, dict[str, str]]:
        """What a turn would show now (items, the request as understood, the levels), saving
        nothing: the side-by-side view asks the same turn in several modes."""
        tokens = budget_tokens(budget)
        thinking = bool(thinking) and tokens > 0
        steps = self._read(self.sessions.get(session_id, traces=False), message, thinking, k, num_beams, tokens,
                           budget == "auto")
        try:
            while True:
                next(steps)                                   # notices: not needed here
        except StopIteration as done:
            turn = done.value
        if turn.info.available == 0 or turn.info.question:
            return [], turn.info, {}
        if turn.thinking:
            with self._model_lock:
                for _ in self._reason(turn):
                    pass
        with self._model_lock:
            result = self._rank(turn)
        return self._cards(result.items)[0][:turn.k], turn.info, dict(turn.levels)

    def _remember(self, key: tuple, reasoning_ids: list[int]) -> None:
        with self._think_guard:
            self._think_cache[key] = list(reasoning_ids)
            self._think_cache.move_to_end(key)
            while len(self._think_cache) > self._think_cache_size:
                self._think_cache.popitem(last=False)

    def close(self) -> None:
        """Stop the batch scheduler's thread (if any); the engine serves no turn after this."""
        if isinstance(self.backend, BatchedBackend):
            self.backend.close()

    @staticmethod
    def _reply(cards: list[ItemCard], request: str, info: RequestInfo) -> str:
        top = cards[0]
        label = f"{top.title} ({top.year})" if top.year else top.title
        if info.active:
            lead = f"{len(cards)} picks for {info.active}."
        elif request:
            lead = f"For your request, here are {len(cards)} picks."
        else:
            lead = f"Here are {len(cards)} picks."
        return f"{lead} Top pick: {label}."
