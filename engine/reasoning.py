"""The three-level reasoning: what the engine writes into it (``ReasoningPlanner``: the levels read
from the long history, the request's statement, the rooms each level needs under a budget) and how
it is generated (``ReasoningWriter``). The stages are written once, as one user's script
(``ReasoningWriter._script``) that asks for model tokens when it needs them; streaming one user and
batching many are two drivers of that same script, so both give the same tokens by construction.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field

from engine.constraints import Constraints
from engine.interests import TREND_PHRASE, InterestReader, by_recency, next_categories, request_terms, serving_lead
from engine.prompt import (NEXT_ITEM, NO_HISTORY_DERIVATION, NO_HISTORY_EVOLUTION, fresh_user_recommendation,
                           parse_reasoning, request_statement)
from engine.sid import ITEM_BEGIN, ITEM_END
from engine.tokenizer import DERIVATION, EVOLUTION, RECOMMENDATION, ThinkrecTokenizer

# The full reasoning budget, in tokens, every reasoning token counted (written ones and the closing one
# too): it holds the whole reading of levels 1-2 of any ML-100K history (233 tokens at most) and level
# 3's own tokens.
FULL_REASONING_TOKENS = 320
# The "short" budget: one token, below every turn's shortest complete reasoning, so levels 1-2 take
# their shortest form (ReasoningPlanner.plan) and the cap is raised to exactly that turn's
# ``min_tokens``. Sized by the history and request at hand, not by a constant that fits one dataset.
SHORTEST_REASONING_TOKENS = 1

_SPAN_TEXT = re.compile(re.escape(ITEM_BEGIN) + r"(?:<[a-z]_\d+>)+" + re.escape(ITEM_END))


@dataclass
class ReasoningPlan:
    """What the engine writes into the reasoning itself, so it is true by construction: a user
    with no history gets levels 1-2 that say so (``prefix``, before the model says anything), and
    an active request is stated at the start of level 3 (``statement``, after the model opens it)."""
    prefix: list[int] = field(default_factory=list)
    statement: list[int] = field(default_factory=list)
    complete: bool = False      # the prefix is the whole reasoning (a fresh user): nothing to generate
    cite: set[str] | None = None  # the only items reasoning may cite: the history the prompt shows
    # The active request's attributes, as "Next item:" pieces the engine writes first (token paths of
    # the slot grammar), so level 3 never states a next item the request rules out.
    required: list[int] = field(default_factory=list)
    required_ends: bool = False   # the required pieces end the list (a decade, or no room for more)
    # Levels 1-2 read from the long history by the engine (engine/interests.py) are the prefix: the
    # model writes level 3 only.
    levels_written: bool = False
    # The fewest tokens these three levels take (the prefix and level 3's room): a smaller budget is
    # raised to this, so every level is there and the cap still holds.
    min_tokens: int = 0
    room: int = 0               # level 3's room (ReasoningPlanner.level3_room)
    statement_room: int = 0     # the statement's room (ReasoningPlanner.statement_room)


class ReasoningPlanner:
    """Plans one user's reasoning. ``known`` holds the catalog's items (the rest of a history is
    ignored), ``shown_history`` the items the prompt shows; ``reader`` (levels 1-2 read from the long
    history) is used when ``read_levels``; ``slots`` (the slot grammar, or None) gives "Next item:"
    its pieces."""

    def __init__(self, tokenizer: ThinkrecTokenizer, known, shown_history, slots=None,
                 reader: InterestReader | None = None, category_word: str = "category"):
        self.tokenizer, self.known, self.shown_history = tokenizer, known, shown_history
        self.slots, self.category_word = slots, category_word
        # Levels 1-2 read from the user's long history (engine/interests.py): with a reader the
        # engine writes them (true by construction, beyond the prompt's window) and the model writes
        # level 3; ``read_levels = False`` lets the model write all three (the older path, measured).
        self.reader = reader
        self.read_levels = reader is not None
        # Level 3 leads with the category the evidence points to (engine.interests.next_categories: the
        # window and where its items led other users) and serves the interest that carries it;
        # False leaves both to the model (the older path, measured in docs/RESULTS.md, issue 27).
        self.lead_next = True

    def plan(self, history: Sequence[str], constraints: Constraints | None,
             user_text: str | None = None, budget: int | None = None) -> ReasoningPlan:
        """Users with a history: the model reasons, and level 3 opens with the active request.
        Users without one: all three levels are written from the request (nothing to derive, so
        nothing the model could say there would be true). ``budget`` (reasoning tokens): levels 1-2
        read from the history take a shorter form (``InterestReader.shorter``) until they leave
        level 3 its room."""
        history = [i for i in history if i in self.known]
        if not history:
            text = fresh_user_recommendation(constraints, user_text, self.category_word)
            prefix = (self.tokenizer.encode(NO_HISTORY_DERIVATION, trusted=False) + [self.tokenizer.ids[EVOLUTION]]
                      + self.tokenizer.encode(NO_HISTORY_EVOLUTION, trusted=False)
                      + [self.tokenizer.ids[RECOMMENDATION]] + self.tokenizer.encode(text, trusted=False)
                      + [self.tokenizer.think_end_id])
            return ReasoningPlan(prefix=prefix, complete=True, min_tokens=len(prefix))
        described = constraints.describe() if constraints is not None else ""
        prefix, written = [], False
        statement = self.tokenizer.encode(request_statement(described), trusted=False) if described else []
        if self.reader is None or not self.read_levels:
            required, ends = self.required_pieces(constraints)
        else:
            written = True
            whole = self.reader.read(history)
            predicted = next_categories(self.reader.items, self.reader.transitions, history) if self.lead_next else []
            served, lead = self.lead(whole, constraints, described, predicted)
            category = self.lead_category(predicted, constraints, whole.interests[served] if served is not None else None)
            required, ends = self.required_pieces(constraints, category)
            # A shorter form keeps the interest that serves (when one does) first.
            for reading in [whole, *self.reader.shorter(whole, served)] if budget is not None else [whole]:
                if reading is not whole:
                    lead = self.lead(reading, constraints, described, predicted)[1]
                statement = self.tokenizer.encode(lead, trusted=False) if lead else []
                prefix = (self.encode_written(reading.derivation) + [self.tokenizer.ids[EVOLUTION]]
                          + self.encode_written(reading.evolution))
                if budget is None or len(prefix) + self.level3_room(statement, required, ends) <= budget:
                    break
        room = self.level3_room(statement, required, ends)
        return ReasoningPlan(prefix=prefix, statement=statement, cite=self.shown_history(history), required=required,
                             required_ends=ends, levels_written=written, min_tokens=len(prefix) + room, room=room,
                             statement_room=self.statement_room(required, ends))

    # The fewest tokens level 3 gets of its own before the statement (see level3_room).
    MIN_LEVEL3_TOKENS = 8

    def level3_room(self, statement: Sequence[int], required: Sequence[int], ends: bool = False) -> int:
        """Tokens level 3 needs at least: its opener, the engine's lead, a few of the model's own,
        then the statement's room (``statement_room``)."""
        return 1 + len(statement) + self.MIN_LEVEL3_TOKENS + self.statement_room(required, ends)

    def statement_room(self, required: Sequence[int], ends: bool) -> int:
        """Tokens the statement needs at least: the "Next item:" opener with the request's pieces,
        room for the model to name one more attribute unless the pieces end the list (the catalog's
        longest attribute piece, so the statement can always say something), and the closing
        ``</think>``."""
        return len(self.next_opener) + len(required) + (0 if ends else self._longest_piece) + 1

    @functools.cached_property
    def next_opener(self) -> list[int]:
        """The tokens of " Next item:", as the engine writes the opener."""
        return self.tokenizer.encode(" " + NEXT_ITEM, trusted=False)

    @functools.cached_property
    def _longest_piece(self) -> int:
        """Tokens of the catalog's longest "Next item:" piece (a category or decade with its separator)."""
        if self.slots is None:
            return 0
        return max((len(self.slots.pieces.path(key)) for key in self.slots.pieces.items), default=0)

    @staticmethod
    def worth_reasoning(constraints: Constraints | None) -> bool:
        """The adaptive budget's rule: reason under an active request (level 3 serves it through the
        interest that fits, or says none does), answer directly otherwise. A long history was the
        other reason to reason (levels 1-2 read all of it, the direct prompt a window), but measured
        it does not pay: on all 943 ML-100K valid users thinking lost to the direct answer in each
        quarter of users by history length, the longest (146-735 items) included (docs/RESULTS.md,
        #s38)."""
        return bool(constraints is not None and (constraints.is_hard() or constraints.is_soft()))

    def lead(self, reading, constraints: Constraints | None, described: str,
             predicted: Sequence[str]) -> tuple[int | None, str]:
        """Level 3's first sentence, written by the engine, and the interest it serves (None: none).
        An active request: the interest that fits it (``request_lead``). Otherwise, with a predicted
        next category: the most recently active interest that carries it, or that none does. With
        neither, the model writes the sentence (an empty lead)."""
        if described:
            return self.request_lead(reading, constraints, described)
        if not predicted:
            return None, ""
        for i in by_recency(reading.interests, reading.size):
            if predicted[0] in reading.interests[i].categories:
                it = reading.interests[i]
                return i, f"Serve ({i + 1}) {it.name}, {TREND_PHRASE[it.trend]}."
        return None, f"The latest items lead to {predicted[0]}, which no interest names: follow them."

    @staticmethod
    def lead_category(predicted: Sequence[str], constraints: Constraints | None, served) -> str | None:
        """The category "Next item:" states first when the request names none: the best predicted one
        the request does not avoid, from the served interest's own categories when an interest is
        served under a request (so level 3 never states one thing and serves another)."""
        wanted, avoid, _, _ = request_terms(constraints)
        if wanted:
            return None
        allowed = [c for c in predicted if c not in avoid]
        if served is not None and constraints is not None:
            own = [c for c in served.categories if c not in avoid]
            allowed = [c for c in allowed if c in own] or own
        return allowed[0] if allowed else None

    def request_lead(self, reading, constraints: Constraints, described: str) -> tuple[int | None, str]:
        """Level 3's first sentence under an active request: the interest that fits it, or that none
        does (engine.interests.serving_lead, the rule the teacher trains with), and that interest's
        index (None: none fits)."""
        wanted, avoid, decades, structured = request_terms(constraints)
        liked = self.reader.facts_titled(constraints.like_title) if constraints.like_title else None
        if liked is not None:
            wanted |= set(liked.categories)
        return serving_lead(request_statement(described), reading.interests,
                            by_recency(reading.interests, reading.size), wanted, avoid, decades, structured)

    def encode_written(self, text: str) -> list[int]:
        """Text the engine writes into the reasoning: words with special-token parsing off, item
        spans (which only the reader puts there, from catalog SIDs) as their tokens."""
        out, at = [], 0
        for span in _SPAN_TEXT.finditer(text):
            out += self.tokenizer.encode(text[at:span.start()], trusted=False) if span.start() > at else []
            out += self.tokenizer.encode(span.group(0), trusted=True)
            at = span.end()
        return out + (self.tokenizer.encode(text[at:], trusted=False) if at < len(text) else [])

    def required_pieces(self, constraints: Constraints | None, lead: str | None = None) -> tuple[list[int], bool]:
        """What "Next item:" must state first under ``constraints``: every wanted category (up to the
        list's three), else the ``lead`` category, and the decade when the request spans one, as the
        slot grammar's own pieces. Returns their tokens and whether they end the list."""
        if (constraints is None and lead is None) or self.slots is None:
            return [], False
        from engine.slots import MAX_NEXT_CATEGORIES

        pieces = self.slots.pieces
        wanted = [c for group in constraints.want for c in group] if constraints is not None else []
        wanted = wanted or ([lead] if lead else [])
        categories = [c for c in dict.fromkeys(wanted) if (c, "category", ",") in pieces.items][:MAX_NEXT_CATEGORIES]
        decade = None
        if constraints is not None and constraints.year_min is not None and constraints.year_max is not None \
                and constraints.year_min // 10 == constraints.year_max // 10:
            word = f"{constraints.year_min // 10 * 10}s"
            decade = word if (word, "decade", ".") in pieces.items else None
        ends = decade is not None or len(categories) == MAX_NEXT_CATEGORIES
        keys = [(c, "category", ",") for c in categories] + ([(decade, "decade", ".")] if decade else [])
        if ends and not decade and keys:
            keys[-1] = (keys[-1][0], "category", ".")
        return [t for key in keys for t in pieces.path(key)], ends


@dataclass
class _Ask:
    """The script's request for model tokens: up to ``budget`` after ``context``, stopping at
    ``stops`` (None: the backend's closing tokens). ``final``: the last stage (its spans and closing
    token are kept); ``hold``: after a "Next item:" opener nothing more is shown (the engine writes
    the request's pieces instead)."""
    context: list[int]
    budget: int
    stops: list[int] | None
    cite: set | None
    final: bool = False
    hold: bool = False


class ReasoningWriter:
    """Generates the reasoning a plan leaves to the model, through ``backend``: one user streamed
    (``stream``) or many at once (``batch``), both driving ``_script``."""

    # Every level gets written: levels 1-2 may use the budget less what level 3 needs; if level 1
    # runs out, level 2 gets its own few tokens; then the engine opens level 3 (stating the active
    # request first, when there is one) and the model writes it. A span cut off by a budget is
    # dropped, never shown half-written.
    LEVEL2_TOKENS = 40
    LEVEL3_TOKENS = 40
    # Level 3 always ends with a "Next item:" statement the items can follow: when the model's level 3
    # has none (it stopped early, or ran out mid-list), the engine writes the opener (or keeps the open
    # list going) and the model fills in the catalog words within these few tokens.
    STATEMENT_TOKENS = 24

    def __init__(self, tokenizer: ThinkrecTokenizer, backend, slots, next_opener: Sequence[int]):
        self.tokenizer, self.backend, self.slots, self.next_opener = tokenizer, backend, slots, list(next_opener)
        self.opened, self.evolution = tokenizer.ids[RECOMMENDATION], tokenizer.ids[EVOLUTION]
        self.closing = (tokenizer.think_end_id, tokenizer.end_id)
        # Level 3's stops under engine-written levels: the period's token (when it is one) besides the
        # closing tokens.
        period = tokenizer.encode(".", trusted=False)
        self.sentence_end = period + list(self.closing) if len(period) == 1 else None

    # -- the one script ------------------------------------------------------------------------------
    def _script(self, prompt: Sequence[int], plan: ReasoningPlan, cap: int) -> Generator:
        """One user's reasoning under ``cap`` tokens, stage by stage. Yields the tokens the engine
        writes (a list, shown as they are) or an ``_Ask`` for model tokens (answered with the raw
        tokens generated); returns the whole reasoning, which is exactly what was shown. Each stage
        gets what is left after the room the later ones need (``plan.room``)."""
        prompt = list(prompt)
        out = list(plan.prefix)
        yield list(plan.prefix)
        if plan.complete:
            return out
        levels = [self.opened, *self.closing]
        if not plan.levels_written:
            for wanted in (max(cap - self.LEVEL3_TOKENS, 16), self.LEVEL2_TOKENS):
                budget = min(wanted, cap - len(out) - plan.room)
                raw = (yield _Ask(prompt + out, budget, levels, plan.cite)) if budget > 0 else []
                self._tidy(raw)
                out += raw
                if self.evolution in out:
                    break
                yield [self.evolution]
                out.append(self.evolution)
        written = [self.opened] + plan.statement
        yield written
        out += written
        # Level 3 cites nothing in the teacher's format; the gate still limits spans to the history.
        # Under engine-written levels 1-2 the model writes one sentence of its own, then the
        # statement: level 3 ends at its first period (a small model otherwise loops on "(k) name.").
        # With a request, the engine's lead is that sentence: the statement follows at once, and the
        # model's own "Next item:" list is held back (the engine writes the request's pieces first).
        stops = self.sentence_end if plan.levels_written else None
        budget = min(self.LEVEL3_TOKENS, cap - len(out) - plan.statement_room)
        level3, body, closing = [], [], []
        if plan.levels_written and plan.statement:
            closing = [self.tokenizer.think_end_id]         # the engine wrote level 3 whole
        elif budget > 0:
            level3 = yield _Ask(prompt + out, budget, stops, plan.cite, final=True, hold=bool(plan.required))
            body, closing = self._split_end(level3, stops)
        fix = self._statement_needed(prompt + out + level3, level3, plan)
        if fix is None:
            out += body                                     # its closing token comes last, below
        else:
            out += level3                                   # cut back: no closing token
            written, more_needed = fix
            closing = [self.tokenizer.think_end_id]
            if len(out) + len(written) + 1 <= cap:
                yield written
                out += written
                budget = min(self.STATEMENT_TOKENS, cap - len(out) - 1)
                if more_needed and budget > 0:
                    more = yield _Ask(prompt + out, budget, stops, plan.cite, final=True)
                    more, closing = self._split_end(more, stops)
                    out += more
        yield closing
        return out + closing

    def _split_end(self, raw: Sequence[int], stops: Sequence[int] | None) -> tuple[list[int], list[int]]:
        """A last stage's tokens without their own closing token, and how it closes the reasoning:
        with that token, with ``</think>`` when it stopped at the period that ends level 3 under
        written levels, and not at all when the cap cut it (the trace and the RL format reward tell
        the two apart)."""
        if raw and raw[-1] in self.closing:
            return list(raw[:-1]), [raw[-1]]
        return list(raw), [self.tokenizer.think_end_id] if raw and stops and raw[-1] in stops else []

    # -- its two drivers -----------------------------------------------------------------------------
    def stream(self, prompt: Sequence[int], plan: ReasoningPlan, max_new_tokens: int = FULL_REASONING_TOKENS,
               temperature: float = 0.0) -> Iterator[int]:
        """One user's reasoning tokens as they come, the plan's written tokens included in place
        (the prompt opened the first level). Ends with ``</think>`` (or ``<|end|>``) when closed.
        ``max_new_tokens`` caps everything, written tokens and the closing one included. A cap below
        the plan's ``min_tokens`` is raised to it."""
        script = self._script(prompt, plan, max(max_new_tokens, plan.min_tokens))
        reply = None
        while True:
            try:
                step = script.send(reply)
            except StopIteration:
                return
            if isinstance(step, _Ask):
                reply = yield from self._stream_stage(step, temperature)
            else:
                yield from step
                reply = None

    def batch(self, prompts: list[list[int]], plans: list[ReasoningPlan], max_new_tokens: int, sample: bool,
              temperature: float, batch_size: int) -> list[list[int]]:
        """What ``stream`` yields, for many users at once: every user's script runs to its next ask,
        and the asks with the same budget and stops share one batched generation."""
        scripts = [self._script(p, plan, max(max_new_tokens, plan.min_tokens)) for p, plan in zip(prompts, plans)]
        done: list[list[int]] = [[] for _ in plans]
        waiting: dict[int, _Ask] = {}

        def advance(i: int, reply) -> None:
            try:
                step = scripts[i].send(reply)
                while not isinstance(step, _Ask):
                    step = scripts[i].send(None)
                waiting[i] = step
            except StopIteration as stop:
                done[i] = stop.value

        for i in range(len(scripts)):
            advance(i, None)
        while waiting:
            asks, groups = dict(waiting), {}
            waiting.clear()
            for i, ask in asks.items():
                groups.setdefault((ask.budget, tuple(ask.stops) if ask.stops is not None else None), []).append(i)
            for (budget, stops), members in groups.items():
                out = self.backend.generate_reasoning([asks[i].context for i in members], [set() for _ in members],
                                                      budget, sample=sample, temperature=temperature,
                                                      batch_size=batch_size, stop_ids=list(stops) if stops else None,
                                                      cites=[asks[i].cite for i in members])
                for i, tokens in zip(members, out):
                    advance(i, list(tokens))
        return done

    def _stream_stage(self, ask: _Ask, temperature: float):
        """Stream one stage's tokens as people should see them, and return the raw tokens (what the
        batched backend would give). A span is held back until it closes (before level 3 one the
        budget cuts off is never shown); ``</think>`` and ``<|end|>`` are never shown (the script
        closes the reasoning), nor a non-final stage's level-3 opener; with ``hold`` nothing after a
        "Next item:" opener is."""
        begin, finish = self.tokenizer.item_begin_id, self.tokenizer.item_end_id
        raw, held, holding = [], [], False
        for token in self.backend.stream_reasoning(ask.context, set(), ask.budget, temperature, stop_ids=ask.stops,
                                                   cite=ask.cite):
            raw.append(token)
            if holding:
                continue
            if held or token == begin:
                held.append(token)
                if token == finish:
                    yield from held
                    held = []
                continue
            if token not in self.closing and (ask.final or token != self.opened):
                yield token
            holding = ask.hold and self._opener_end(raw[-8:]) is not None
        if held and ask.final:
            yield from held
        return raw

    # -- the script's edits ----------------------------------------------------------------------------
    def _tidy(self, tokens: list[int]) -> None:
        """Before the engine writes the next level: drop a trailing level-3 opener, ``</think>`` or
        ``<|end|>`` (closing before level 3 is premature: the engine writes its own) and a span the
        budget cut off."""
        while tokens and tokens[-1] in (self.opened, *self.closing):
            tokens.pop()
        begin, finish = self.tokenizer.item_begin_id, self.tokenizer.item_end_id
        last_begin = max((n for n, t in enumerate(tokens) if t == begin), default=-1)
        if last_begin > max((n for n, t in enumerate(tokens) if t == finish), default=-1):
            del tokens[last_begin:]

    def _opener_end(self, tokens: Sequence[int]) -> int | None:
        """Index just past the first "Next item:" opener in ``tokens`` (None: not written)."""
        if self.slots is None:
            return None
        for end in range(1, len(tokens) + 1):
            if any(tuple(tokens[max(0, end - len(p)):end]) == p for p in self.slots.next_opener):
                return end
        return None

    def _statement_needed(self, context: Sequence[int], level3: list[int], plan: ReasoningPlan) -> tuple[list[int], bool] | None:
        """Level 3 (the end of ``context``, also given as ``level3``, changed in place) must state
        what the next item should be. None when it does. Otherwise ``level3`` is cut back (its
        closing token; with a request, its own list after the opener) and this returns the tokens
        the engine writes next, and whether the model must then go on with the list.

        - an active request: its pieces come first (the opener is written if missing), the model adds to them;
        - no request: the opener when missing, or nothing when a list is still open."""
        if self.slots is None:
            return None
        if plan.required:
            end = self._opener_end(level3)
            if end is not None:
                del level3[end:]
            else:
                while level3 and level3[-1] in self.closing:
                    level3.pop()
            return ([] if end is not None else self.next_opener) + plan.required, not plan.required_ends
        state = self.slots.state(plan.cite).resume(context)
        if state.states_attributes():
            return None
        while level3 and level3[-1] in self.closing:
            level3.pop()
        return ([] if state.in_statement() else self.next_opener), True

    def describe(self, reasoning: Sequence[int]) -> tuple[str, dict[str, str]]:
        """The reasoning's text (the prompt opened the first level) and its three levels."""
        body = [t for t in reasoning if t not in self.closing]
        text = DERIVATION + self.tokenizer.decode(body)
        return text, parse_reasoning(text)
