"""One turn's steps, computed and saving nothing (``engine.engine.Engine`` runs them, saves the
exchange and owns sessions, locks and threads):

1. ``read``: the message as a request merged into the session's constraints, what it leaves out,
   how many items remain, and whether to ask a question first;
2. ``reason`` (thinking): the three levels streamed, or replayed from the Think-Ahead cache;
3. ``rank``: the items, through the same ``Recommender.recommend`` as eval and RL;
4. ``answer`` / ``ask`` / ``refuse``: the events people see, and the exchange to store.
"""

from __future__ import annotations

import contextlib
import functools
import re
import threading
import time
import unicodedata
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from engine.constraints import Constraints, Facets
from engine.events import (BeamCandidate, ErrorEvent, Event, ItemCard, ItemsEvent, NoticeEvent, ReasoningDelta,
                           ReplyDelta, RequestInfo, Trace)
from engine.prompt import DEFAULT_ASK, LEVELS, earlier_assistant_turn, render_spans
from engine.reasoning import SHORTEST_REASONING_TOKENS
from engine.request import Request
from engine.request import apply as apply_request
from engine.sessions import ChatSession, Turn
from engine.tokenizer import EVOLUTION, RECOMMENDATION, Message
from engine.understanding import apply_answer, ask_first, resolve_answer, soft_rerank

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _hidden(text: str, n: int) -> bool:
    """Whether ``text[n]`` is an invisible format character to drop: any but a joiner inside an
    emoji sequence (after a symbol, not a letter, digit or space)."""
    if unicodedata.category(text[n]) != "Cf":
        return False
    before = text[n - 1] if n else " "
    return not (text[n] == "\u200d" and not before.isalnum() and not before.isspace())


def clean_message(text: str | None, max_chars: int) -> tuple[str, list[str]]:
    """What the model will read of a typed message, and notices for the user about changes.
    Compatibility forms read as their plain letters and digits (NFKC: "ｃｏｍｅｄｙ" is "comedy",
    "１９９５" is "1995"), and invisible format characters (zero-width spaces and joiners, soft
    hyphens, direction overrides) are dropped, so they cannot hide a word from the request reader."""
    notices = []
    text = text or ""
    stripped = _CONTROL.sub("", text)
    if stripped != text:
        notices.append("Removed control characters from your message.")
    stripped = unicodedata.normalize("NFKC", stripped)
    plain = "".join(c for n, c in enumerate(stripped) if not _hidden(stripped, n))
    if len(plain) < len(stripped):
        notices.append("Removed invisible formatting characters from your message.")
    stripped = plain
    stripped = stripped.strip()
    if len(stripped) > max_chars:
        notices.append(f"Your message was {len(stripped):,} characters; only the first {max_chars:,} were read.")
        stripped = stripped[:max_chars]
    return stripped, notices


@dataclass
class TurnState:
    """What one turn has found out so far, handed from step to step."""

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

    def trace(self, backend: str, **fields) -> Trace:
        """The turn's trace; ``fields`` add what the answer found (a question or refusal has none)."""
        fields.setdefault("latency_ms", {"total_ms": round((time.perf_counter() - self.started) * 1000, 1)})
        fields.setdefault("prompt", "")
        fields.setdefault("prompt_tokens", 0)
        return Trace(turn_id=str(uuid.uuid4()), thinking=self.thinking, backend=backend, k=self.k,
                     num_beams=self.num_beams, request=self.info, **fields)


# What a step hands the engine to store: the exchange's turns and the trace shown last.
Outcome = tuple[list[Turn], Trace]


class TurnSteps:
    """The steps of a turn over one recommender and its catalog. ``model_lock`` serialises model
    work when one in-process model serves one turn at a time (a no-op when batched)."""

    def __init__(self, recommender, catalog, facets: Facets, parser, max_message_chars: int = 2000,
                 think_cache_size: int = 1024, model_lock=None):
        self.recommender, self.catalog, self.facets, self.parser = recommender, catalog, facets, parser
        self.tokenizer = recommender.tokenizer
        self.max_message_chars = max_message_chars
        self.model_lock = model_lock or contextlib.nullcontext()
        self._think_cache: OrderedDict[tuple, list[int]] = OrderedDict()
        self._think_guard = threading.Lock()
        self._think_cache_size = think_cache_size
        # Item labels for rendered reasoning, cached per instance (a cache on the class would keep
        # every engine ever built alive through its keys).
        self._label = functools.lru_cache(maxsize=4096)(self._label_of)

    @property
    def backend(self):
        return self.recommender.backend

    # -- 1. read -----------------------------------------------------------------------------
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
                                    active=session.constraints, shown=last_items)
        return request, apply_request(session.constraints, request, last_items)

    def question(self, request: Request, constraints: Constraints, available: int | None, k: int,
                 exclude: set[str]) -> dict | None:
        """The one question to ask before answering (``available``: items the constraints leave), or None."""
        return ask_first(request, constraints, available, k, lambda wider: self.recommender.available(wider, exclude))

    def read(self, session: ChatSession, message: str | None, thinking: bool, k: int, num_beams: int,
             budget: int, adaptive: bool = False) -> Iterator[Event]:
        """Step 1; notices about the message as events. Returns the turn."""
        text, notices = clean_message(message, self.max_message_chars)
        if message and not text:
            notices.append("Your message had no text; recommending from your history.")
        request, constraints = self.understand(session, text)
        if request.unparsed:
            notices.append("Not used as a filter (left to the model): " + ", ".join(request.unparsed[:12]) + ".")
        notices += request.notes
        notices += ["Read by meaning: " + reading + "." for reading in request.readings]
        for notice in notices:
            yield NoticeEvent(text=notice)
        k = max(1, min(int(k), 50))
        # Seen, disliked, already shown, turned down, and the title a "more like" names.
        exclude = (set(session.history) | set(session.excluded) | set(session.shown()) | set(constraints.turned_down)
                   | ({constraints.like_item} if constraints.like_item else set()))
        info = RequestInfo(understood=request.understood(), active=constraints.describe(),
                           constraints=constraints.model_dump(), unparsed=request.unparsed, notes=request.notes,
                           available=self.recommender.available(constraints, exclude),
                           readings=request.readings, soft=constraints.describe_soft(), unknown=request.unknown)
        asked = self.question(request, constraints, info.available, k, exclude)
        if asked is not None:
            info.question = asked["question"]
            constraints = constraints.model_copy(update={"pending": asked})
        elif info.available is not None and 0 < info.available < k:
            yield NoticeEvent(text=f"Only {info.available} item{'s' * (info.available != 1)} satisfy "
                                   f"{info.active}: showing all of them.")
        earlier = self.earlier_turns(session)
        if thinking and adaptive and not self.recommender.worth_reasoning(constraints):
            thinking = False
            yield NoticeEvent(text="Reasoning budget auto: no request to serve, so this turn answers directly.")
        return TurnState(session=session, text=text, request=request, constraints=constraints, info=info,
                         exclude=exclude, thinking=thinking, k=k, num_beams=max(k, int(num_beams or k)),
                         budget=budget, earlier=earlier, started=time.perf_counter(),
                         prompt=self.recommender.prompt_ids(session.history, text or None, earlier, thinking))

    def earlier_turns(self, session: ChatSession, max_exchanges: int = 2) -> list[Message]:
        codes = self.recommender.sid_codes
        messages = []
        for turn in session.turns[-2 * max_exchanges:]:
            if turn.role == "user":
                messages.append(Message("user", turn.text or DEFAULT_ASK, trusted=False))
            elif turn.items:
                messages.append(earlier_assistant_turn([codes[i] for i in turn.items[:3] if i in codes]))
        return messages

    # -- 2. reason ---------------------------------------------------------------------------
    def reason(self, turn: TurnState) -> Iterator[Event]:
        """Stream the three levels, or replay them from the Think-Ahead cache."""
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
            turn.budget = max(turn.budget, len(cached))      # "short" was raised to what it wrote
            for level, body in self.recommender.writer.describe(cached)[1].items():
                turn.levels[level] = body = self.render(body)
                if body:
                    yield ReasoningDelta(level=level, text=body)
        else:
            plan = self.recommender.planner.plan(turn.session.history, turn.constraints, turn.text or None,
                                                 budget=turn.budget)
            if plan.min_tokens > turn.budget > SHORTEST_REASONING_TOKENS:      # "short" asks for exactly that
                yield NoticeEvent(text=f"The reasoning needs at least {plan.min_tokens} tokens for this history and "
                                       f"request, more than the budget of {turn.budget}; it used {plan.min_tokens}.")
            turn.budget = max(turn.budget, plan.min_tokens)
            with self.model_lock:
                tokens = self.recommender.writer.stream(turn.prompt, plan, max_new_tokens=turn.budget)
                for level, delta, token in self._levels(tokens, turn.timings, started):
                    turn.reasoning_ids.append(token)
                    if delta:
                        turn.levels[level] += delta
                        yield ReasoningDelta(level=level, text=delta)
            with self._think_guard:
                self._think_cache[key] = list(turn.reasoning_ids)
                while len(self._think_cache) > self._think_cache_size:
                    self._think_cache.popitem(last=False)
        turn.timings["reasoning_ms"] = (time.perf_counter() - started) * 1000

    def _levels(self, tokens: Iterator[int], timings: dict, started: float) -> Iterator[tuple[str, str, int]]:
        """(level, text delta, token) while reasoning streams; the prompt opened the first level."""
        level, level_ids, shown = "derivation", [], ""
        markers = {self.tokenizer.ids[EVOLUTION]: "evolution", self.tokenizer.ids[RECOMMENDATION]: "recommendation"}
        for token in tokens:
            timings.setdefault("first_token_ms", (time.perf_counter() - started) * 1000)
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

    def render(self, text: str) -> str:
        """Reasoning text with its item spans shown as catalog titles."""
        return render_spans(text, self._label)

    def _label_of(self, sid: str) -> str:
        try:
            return self.catalog.by_sid(sid).label()
        except (KeyError, ValueError):
            return "(unknown item)"

    # -- 3. rank -------------------------------------------------------------------------------
    def rank(self, turn: TurnState):
        """The items, after the reasoning (soft preferences re-rank them)."""
        started = time.perf_counter()
        with self.model_lock:
            (result,) = self.recommender.recommend(
                [turn.session.history], k=turn.num_beams, num_beams=turn.num_beams, shown=turn.k,
                thinking=turn.thinking, user_texts=[turn.text or None], earlier_turns=[turn.earlier],
                exclude=[turn.exclude], constraints=[turn.constraints],
                reasoning=[turn.reasoning_ids] if turn.thinking else None)
        if turn.constraints.is_soft():
            result.items = soft_rerank(result.items, turn.constraints, self.facets)
        turn.timings["items_ms"] = (time.perf_counter() - started) * 1000
        return result

    # -- 4. what people see, and what is stored ---------------------------------------------------
    def answer(self, turn: TurnState, result, found: Callable[[Outcome], None]) -> Iterator[Event]:
        """Cards and the reply; ``found`` gets the exchange (the trace, and the cards shown, on the
        assistant turn)."""
        cards, beams = self.cards(result.items)
        cards = cards[:turn.k]
        if not cards:
            yield ErrorEvent(message="No catalog item is left to recommend in this session.")
            return
        yield ItemsEvent(items=cards)
        reply = reply_for(cards, turn.text, turn.info)
        yield ReplyDelta(text=reply)
        turn.timings["total_ms"] = (time.perf_counter() - turn.started) * 1000
        item_prompt = self.recommender.item_prompt(turn.prompt, turn.reasoning_ids) if turn.thinking else turn.prompt
        trace = turn.trace(self.backend.name, prompt=self.tokenizer.decode(item_prompt), prompt_tokens=len(turn.prompt),
                           reasoning_tokens=len(turn.reasoning_ids), cache_hit=turn.cache_hit, levels=turn.levels,
                           beams=beams, latency_ms={name: round(v, 1) for name, v in turn.timings.items()},
                           max_reasoning_tokens=turn.budget if turn.thinking else 0, ranking=result.ranking)
        stored = trace.model_dump(mode="json") | {"items": [c.model_dump(mode="json") for c in cards]}
        found(([turn.user_turn(), Turn("assistant", reply, [c.item_id for c in cards], turn.levels, trace=stored)],
               trace))

    def ask(self, turn: TurnState, found: Callable[[Outcome], None]) -> Iterator[Event]:
        """One short question instead of a guess; the next message's answer is read against it
        (``understand``). The question is the reply, so every client shows it as the answer."""
        trace = turn.trace(self.backend.name)
        yield ReplyDelta(text=turn.info.question)
        found(([turn.user_turn(), Turn("assistant", turn.info.question, [], trace=trace.model_dump(mode="json"))],
               trace))

    def refuse(self, turn: TurnState, found: Callable[[Outcome], None]) -> Iterator[Event]:
        """Nothing satisfies the constraints: the request is kept, the error says how to get out.
        The trace is stored on the user turn (there is no assistant turn to pair it with)."""
        trace = turn.trace(self.backend.name)
        user = turn.user_turn()
        user.trace = trace.model_dump(mode="json")
        yield ErrorEvent(message=f"No item you have not seen satisfies: {turn.info.active}. Change or lift a "
                                 "constraint (\"any decade\", \"horror is fine\", \"start over\").")
        found(([user], trace))

    def cards(self, ranked) -> tuple[list[ItemCard], list[BeamCandidate]]:
        found = {i.item_id: i for i in self.catalog.items([str(r.item_id) for r in ranked])}
        cards = [ItemCard(rank=n + 1, item_id=str(r.item_id), title=found[str(r.item_id)].title,
                          year=found[str(r.item_id)].year, categories=found[str(r.item_id)].categories,
                          sid=found[str(r.item_id)].sid, score=round(r.score, 4)) for n, r in enumerate(ranked)]
        beams = [BeamCandidate(item_id=c.item_id, title=c.title, sid=c.sid, score=c.score) for c in cards]
        return cards, beams


def reply_for(cards: list[ItemCard], request: str, info: RequestInfo) -> str:
    """The short reply under the cards."""
    top = cards[0]
    label = f"{top.title} ({top.year})" if top.year else top.title
    if info.active:
        lead = f"{len(cards)} picks for {info.active}."
    elif request:
        lead = f"For your request, here are {len(cards)} picks."
    else:
        lead = f"Here are {len(cards)} picks."
    return f"{lead} Top pick: {label}."
