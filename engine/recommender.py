"""One model + tokenizer + catalog trie, answering "what next?" for one or many users at once:
optional three-level reasoning (generated under the gated constraint), then beam search over the
SID steps for the top-K distinct, unseen catalog items. Evaluation, RL rollouts and the app call
this same code path.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from engine.backends import Backend, TransformersBackend, VLLMBackend
from engine.checkpoint import CheckpointMeta, load_checked, load_checkpoint
from engine.constraints import ConstraintFilters, Constraints, Facets
from engine.decoding import RankedItem, admissible_tree, build_token_trie
from engine.sid import ITEM_BEGIN, ITEM_END
from engine.interests import InterestReader, by_recency, request_terms, serving_lead
from engine.slots import SlotGrammar
from engine.prompt import (NEXT_ITEM, NO_HISTORY_DERIVATION, NO_HISTORY_EVOLUTION, NO_THINK_PREFIX, THINK_PREFIX,
                           fresh_user_recommendation, parse_reasoning, recommendation_messages, request_statement,
                           item_span, stated_attributes)
from engine.tokenizer import DERIVATION, EVOLUTION, RECOMMENDATION, Message, ThinkrecTokenizer


@dataclass
class Recommendation:
    items: list[RankedItem]
    reasoning: str = ""                          # the reasoning between <think> and </think>
    levels: dict[str, str] = field(default_factory=dict)
    reasoning_tokens: int = 0
    prompt_tokens: int = 0
    prompt_ids: list[int] = field(default_factory=list)
    reasoning_ids: list[int] = field(default_factory=list)   # as generated, </think> included when closed
    seconds: dict[str, float] = field(default_factory=dict)
    available: int | None = None                 # items the constraints leave (None: no constraint)
    # Thinking mode: every candidate in the model's order before level 3's prior re-ranks them
    # (``items`` is the top ``k`` after it); evaluation re-ranks these for other prior weights.
    candidates: list[RankedItem] = field(default_factory=list)
    # How the items were ranked (Recommender.rank_items): "exact" (every admissible item scored) or
    # "beam", the admissible count, the forward steps exact ranking needed, the budget, the head weight.
    ranking: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ThinkRank:
    """How thinking mode turns beams into a ranking.

    ``reasoned``: the beams that follow the reasoning, as they come. ``race``: the reasoned beams
    and the direct (non-thinking) beams merged by rank (OneReason's Race). ``fused`` (default): the
    union of both beam sets, each candidate scored under both contexts,
    ``log p(item | history) + weight * log p(item | history, reasoning) - contrast * log p(item | reasoning)``;
    ``contrast`` > 0 is the linguistic-inertia calibration (what the reasoning predicts by itself is
    taken out). The weights are set by measurement (docs/RESULTS.md, issue 13)."""
    mode: str = "fused"
    weight: float = 0.5
    contrast: float = 0.5

    def __post_init__(self):
        if self.mode not in THINK_RANKS:
            raise ValueError(f"unknown thinking rank '{self.mode}' (choose from {', '.join(THINK_RANKS)})")


THINK_RANKS = ("reasoned", "race", "fused")


def _union(first: list[list[RankedItem]], second: list[list[RankedItem]]) -> list[list[RankedItem]]:
    """Per user, the candidates of two beam searches, each item once."""
    return [list({i.item_id: i for i in list(a) + list(b)}.values()) for a, b in zip(first, second)]


def race(first: Sequence[RankedItem], second: Sequence[RankedItem], k: int) -> list[RankedItem]:
    """Two rankings merged by rank: an item takes its better rank of the two (ties: the smaller sum
    of ranks, then ``first`` before ``second``)."""
    rank_a = {i.item_id: r for r, i in enumerate(first)}
    rank_b = {i.item_id: r for r, i in enumerate(second)}
    missing = len(first) + len(second)
    by_id = {i.item_id: i for i in list(second) + list(first)}

    def key(item_id):
        a, b = rank_a.get(item_id, missing), rank_b.get(item_id, missing)
        return (min(a, b), a + b, a)

    return [by_id[i] for i in sorted(by_id, key=key)[:k]]


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


_SPAN_TEXT = re.compile(re.escape(ITEM_BEGIN) + r"(?:<[a-z]_\d+>)+" + re.escape(ITEM_END))

# Weight of the item head's log-probability beside the SID path's (chosen on ML-100K valid, docs/RESULTS.md
# issue 25). Exact ranking's budget, in forward steps (one per distinct admissible prefix), is by
# default EXACT_FACTOR times the rows beam search itself forwards (num_beams per SID level after the
# first): 400 for 20 beams over 3 levels. Measured on 2 cores, exact ranking costs about what beam
# search with the head does at that size, so a request that narrows the catalog (a genre and a
# decade) is ranked exactly, while the whole unseen ML-100K catalog (~830 steps) goes to the beams
# plus the head's favourites, which scored the same NDCG on valid at 0.6x the latency.
DEFAULT_HEAD_WEIGHT = 1.0
# The full reasoning budget, in tokens, every reasoning token counted (written ones and the closing one
# too): it holds the whole reading of levels 1-2 of any ML-100K history (233 tokens at most) and level
# 3's own tokens.
FULL_REASONING_TOKENS = 320
EXACT_FACTOR = 10
DEFAULT_EXACT_STEPS = None      # None: sized as above; 0: never exact


class Recommender:
    """``model`` decodes in this process; with ``model_url`` a ``thinkrec serve-model`` server does
    (``model`` is then None and ``meta`` the checkpoint's metadata, which the server must match).
    ``facets`` (every item's year and categories) lets requests restrict the items."""

    def __init__(self, model, tokenizer: ThinkrecTokenizer, sid_codes: dict[str, Sequence[int]],
                 history_items: int = 20, model_url: str | None = None, meta=None, facets: Facets | None = None,
                 filter_cache_size: int = 64, category_word: str = "category", follow_weight: float = 0.0,
                 follow_share: float = 0.8, think_rank: ThinkRank | None = None,
                 same_item: dict[str, str] | None = None, recent_view: int = 0, recent_weight: float = 0.5,
                 head_weight: float = DEFAULT_HEAD_WEIGHT, exact_steps: int | None = DEFAULT_EXACT_STEPS,
                 reader: InterestReader | None = None):
        self.model, self.tokenizer = model, tokenizer
        # Levels 1-2 read from the user's long history (engine/interests.py): with a reader the
        # engine writes them (true by construction, beyond the prompt's window) and the model writes
        # level 3; ``read_levels = False`` lets the model write all three (the older path, measured).
        self.reader = reader
        self.read_levels = reader is not None
        # Ids the catalog lists twice for one film (Catalog.duplicates): the reasoning cites only one.
        self.same_item = same_item or {}
        self.sid_codes = {item: tuple(codes) for item, codes in sid_codes.items()}
        self.trie = build_token_trie(tokenizer, self.sid_codes)
        self.history_items = history_items
        self.facets = facets
        self.category_word = category_word          # "genre" for movies: how level 3 names a category
        self.follow_weight = follow_weight          # soft prior toward level 3's attributes (see follow)
        # Floor on the shown items that carry them (see follow). 0.8 by measurement: on all 943 ML-100K
        # valid users it cost no NDCG@10 (0.0597 vs 0.0596) where the soft prior cost 6-16 %.
        self.follow_share = follow_share
        # Non-thinking ranking from two views of the history: the whole prompt, and only its latest
        # ``recent_view`` items (0: one view). Candidates are both views' beams, scored
        # log p(i | history) + recent_weight * log p(i | latest items). See rank_direct.
        self.recent_view, self.recent_weight = recent_view, recent_weight
        self.think_rank = think_rank or ThinkRank()  # how thinking mode ranks its candidates (see rank_thinking)
        # Ranking (rank_items): score = log p(SID path) + head_weight * log p_head(item), the item-ID
        # head's memorisation beside the SID's generalisation (0: SID only, or no head); every
        # admissible item is scored exactly when its prefix tree needs at most exact_steps forward steps.
        from engine.item_head import head_of

        self.head = head_of(model) if model is not None else None
        self.head_weight = head_weight if self.head is not None else 0.0
        self.exact_steps = exact_steps
        self.sid_depth = max((len(codes) for codes in self.sid_codes.values()), default=1)
        # Decode-time prior from a second model (an option, off by default): ``prior(histories)`` gives
        # each history a {item_id: log-probability} map, and ranking adds prior_weight times it. The
        # engine cannot import the teachers (training/ sits above it): the caller hands the callable in.
        self.prior, self.prior_weight, self.prior_name = None, 0.0, ""
        self.vocabulary = set(facets.vocabulary) if facets is not None else set()
        self.filter_for = ConstraintFilters(self.trie, facets, filter_cache_size, missing="this recommender has no catalog facets")
        # Where the reasoning names interests, trends and attributes, only the catalog's words
        # (the vLLM server builds the same grammar from the same facets).
        self.slots = (SlotGrammar.build(tokenizer, facets, category_word).attach(self.trie, facets)
                      if facets is not None else None)
        self.backend: Backend = (VLLMBackend(model_url, tokenizer, self.trie, meta, filter_for=self.filter_for)
                                 if model_url else TransformersBackend(model, tokenizer, self.trie, self.filter_for,
                                                                       self.slots))

    # -- constraints ---------------------------------------------------------------------------
    def available(self, constraints: Constraints | None, exclude: set[str]) -> int | None:
        """How many items the constraints leave once ``exclude`` is taken out (None: unconstrained)."""
        restrict = self.filter_for(constraints)
        if restrict is None:
            return None
        return self.trie.cursor(exclude=exclude, restrict=restrict).remaining()

    # -- prompt and reasoning ------------------------------------------------------------------
    def prompt_ids(self, history: Sequence[str], user_text: str | None = None,
                   earlier_turns: Sequence[Message] = (), thinking: bool = False) -> list[int]:
        codes = [self.sid_codes[i] for i in history if i in self.sid_codes]
        messages = recommendation_messages(codes, user_text, earlier_turns, self.history_items)
        ids, _ = self.tokenizer.render_conversation(
            messages, add_generation_prompt=True, assistant_prefix=THINK_PREFIX if thinking else NO_THINK_PREFIX)
        return ids

    def shown_history(self, history: Sequence[str]) -> set[str]:
        """The history items the prompt shows (the latest ``history_items``): all reasoning may cite.
        A film the catalog lists under two ids counts once (its latest id), so it is never cited twice."""
        known = [i for i in history if i in self.sid_codes]
        shown = known[-self.history_items:] if self.history_items else known
        latest = {self.same_item.get(i, i): i for i in shown}
        return set(latest.values())

    def plan(self, history: Sequence[str], constraints: Constraints | None,
             user_text: str | None = None, budget: int | None = None) -> ReasoningPlan:
        """Users with a history: the model reasons, and level 3 opens with the active request.
        Users without one: all three levels are written from the request (nothing to derive, so
        nothing the model could say there would be true). ``budget`` (reasoning tokens): levels 1-2
        read from the history take a shorter form (``InterestReader.shorter``) until they leave
        level 3 its room."""
        if any(i in self.sid_codes for i in history):
            described = constraints.describe() if constraints is not None else ""
            required, ends = self.required_pieces(constraints)
            if self.reader is not None and self.read_levels:
                whole = self.reader.read([i for i in history if i in self.sid_codes])
                served, lead = self.request_lead(whole, constraints, described) if described else (None, "")
                # A shorter form keeps the interest that serves the request (when one does) first.
                for reading in [whole, *self.reader.shorter(whole, served)] if budget is not None else [whole]:
                    if reading is not whole and described:
                        lead = self.request_lead(reading, constraints, described)[1]
                    statement = self.tokenizer.encode(lead, trusted=False) if lead else []
                    prefix = (self.encode_written(reading.derivation) + [self.tokenizer.ids[EVOLUTION]]
                              + self.encode_written(reading.evolution))
                    if budget is None or len(prefix) + self.level3_room(statement, required, ends) <= budget:
                        break
                return ReasoningPlan(prefix=prefix, statement=statement, cite=self.shown_history(history),
                                     required=required, required_ends=ends, levels_written=True,
                                     min_tokens=len(prefix) + self.level3_room(statement, required, ends))
            statement = self.tokenizer.encode(request_statement(described), trusted=False) if described else []
            return ReasoningPlan(statement=statement, cite=self.shown_history(history), required=required,
                                 required_ends=ends, min_tokens=self.level3_room(statement, required, ends))
        text = fresh_user_recommendation(constraints, user_text, self.category_word)
        prefix = (self.tokenizer.encode(NO_HISTORY_DERIVATION, trusted=False) + [self.tokenizer.ids[EVOLUTION]]
                  + self.tokenizer.encode(NO_HISTORY_EVOLUTION, trusted=False) + [self.tokenizer.ids[RECOMMENDATION]]
                  + self.tokenizer.encode(text, trusted=False) + [self.tokenizer.think_end_id])
        return ReasoningPlan(prefix=prefix, complete=True, min_tokens=len(prefix))

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
        return len(self._next_opener) + len(required) + (0 if ends else self._longest_piece) + 1

    @functools.cached_property
    def _next_opener(self) -> list[int]:
        """The tokens of " Next item:", as the engine writes the opener."""
        return self.tokenizer.encode(" " + NEXT_ITEM, trusted=False)

    @functools.cached_property
    def _longest_piece(self) -> int:
        """Tokens of the catalog's longest "Next item:" piece (a category or decade with its separator)."""
        if self.slots is None:
            return 0
        return max((len(self.slots.pieces.path(key)) for key in self.slots.pieces.items), default=0)

    def worth_reasoning(self, history: Sequence[str], constraints: Constraints | None) -> bool:
        """The adaptive budget's rule: reason where the reasoning carries what the direct answer
        lacks: a history longer than the prompt's window (levels 1-2 read all of it) or an active
        request (level 3 serves it through an interest). Otherwise answer directly."""
        known = sum(1 for i in history if i in self.sid_codes)
        long_history = self.reader is not None and self.read_levels and bool(self.history_items) \
            and known > self.history_items
        return long_history or bool(constraints is not None and (constraints.is_hard() or constraints.is_soft()))

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

    def required_pieces(self, constraints: Constraints | None) -> tuple[list[int], bool]:
        """What "Next item:" must state first under ``constraints``: every wanted category (up to the
        list's three) and the decade when the request spans one, as the slot grammar's own pieces.
        Returns their tokens and whether they end the list."""
        if constraints is None or self.slots is None:
            return [], False
        from engine.slots import MAX_NEXT_CATEGORIES

        pieces = self.slots.pieces
        wanted = [c for group in constraints.want for c in group]
        categories = [c for c in dict.fromkeys(wanted) if (c, "category", ",") in pieces.items][:MAX_NEXT_CATEGORIES]
        decade = None
        if constraints.year_min is not None and constraints.year_max is not None \
                and constraints.year_min // 10 == constraints.year_max // 10:
            word = f"{constraints.year_min // 10 * 10}s"
            decade = word if (word, "decade", ".") in pieces.items else None
        ends = decade is not None or len(categories) == MAX_NEXT_CATEGORIES
        keys = [(c, "category", ",") for c in categories] + ([(decade, "decade", ".")] if decade else [])
        if ends and not decade and keys:
            keys[-1] = (keys[-1][0], "category", ".")
        return [t for key in keys for t in pieces.path(key)], ends

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

    def _stages(self, max_new_tokens: int):
        opened, close, end = self.tokenizer.ids[RECOMMENDATION], self.tokenizer.think_end_id, self.tokenizer.end_id
        levels_1_2 = max(max_new_tokens - self.LEVEL3_TOKENS, 16)
        return opened, close, end, levels_1_2

    def _tidy(self, tokens: list[int]) -> None:
        """Before the engine writes the next level: drop a trailing level-3 opener, ``</think>`` or
        ``<|end|>`` (closing before level 3 is premature: the engine writes its own) and a span the
        budget cut off."""
        opened, close, end = self.tokenizer.ids[RECOMMENDATION], self.tokenizer.think_end_id, self.tokenizer.end_id
        while tokens and tokens[-1] in (opened, close, end):
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
        closing = (self.tokenizer.think_end_id, self.tokenizer.end_id)
        opener = self._next_opener
        if plan.required:
            end = self._opener_end(level3)
            if end is not None:
                del level3[end:]
            else:
                while level3 and level3[-1] in closing:
                    level3.pop()
            return ([] if end is not None else opener) + plan.required, not plan.required_ends
        state = self.slots.state(plan.cite).resume(context)
        if state.states_attributes():
            return None
        while level3 and level3[-1] in closing:
            level3.pop()
        return ([] if state.in_statement() else opener), True

    def stream_reasoning(self, prompt: Sequence[int], plan: ReasoningPlan,
                         max_new_tokens: int = FULL_REASONING_TOKENS, temperature: float = 0.0) -> Iterator[int]:
        """One user's reasoning tokens as they come, the plan's written tokens included in place
        (the prompt opened the first level). Ends with ``</think>`` (or ``<|end|>``) when closed.
        ``max_new_tokens`` caps everything, written tokens and the closing one included: each stage
        gets what is left after the room the later ones need (``level3_room``). A cap below the
        plan's ``min_tokens`` is raised to it."""
        max_new_tokens = max(max_new_tokens, plan.min_tokens)
        yield from plan.prefix
        if plan.complete:
            return
        opened, close, end, levels_1_2 = self._stages(max_new_tokens)
        closing_ids = (close, end)
        evolution = self.tokenizer.ids[EVOLUTION]
        room = self.level3_room(plan.statement, plan.required, plan.required_ends)
        context = list(prompt) + plan.prefix
        if not plan.levels_written:
            for wanted in (levels_1_2, self.LEVEL2_TOKENS):
                budget = min(wanted, max_new_tokens - (len(context) - len(prompt)) - room)
                generated = (yield from self._stream_stage(context, budget, [opened, close, end], plan.cite,
                                                           temperature)) if budget > 0 else []
                self._tidy(generated)
                context += generated
                if evolution in context[len(prompt):]:
                    break
                yield evolution
                context.append(evolution)
        written = [opened] + plan.statement
        yield from written
        context += written
        # Level 3 cites nothing in the teacher's format; the gate still limits spans to the history.
        # With a request, the model's own "Next item:" list is held back: the engine writes the
        # request's pieces first (see _statement_needed).
        stops = self._sentence_end() if plan.levels_written else None
        budget = min(self.LEVEL3_TOKENS, max_new_tokens - (len(context) - len(prompt))
                     - self.statement_room(plan.required, plan.required_ends))
        if (plan.levels_written and plan.statement) or budget <= 0:
            level3 = []          # the engine's lead is level 3's sentence: the statement follows at once
        else:
            level3 = yield from self._stream_stage(context, budget, stops, plan.cite, temperature,
                                                   final=True, hold_statement=bool(plan.required))
        closing = [t for t in level3[-1:] if t in closing_ids]
        fix = self._statement_needed(context + level3, level3, plan)
        if fix is not None:
            written, more_needed = fix
            used = len(context) - len(prompt) + len(level3)
            closing = [close]
            if used + len(written) + 1 <= max_new_tokens:
                yield from written
                budget = min(self.STATEMENT_TOKENS, max_new_tokens - used - len(written) - 1)
                if more_needed and budget > 0:
                    more = yield from self._stream_stage(context + level3 + written, budget, stops, plan.cite,
                                                         temperature, final=True)
                    closing = [t for t in more[-1:] if t in closing_ids]
        yield from closing

    def _stream_stage(self, context: list[int], budget: int, stops, cite, temperature: float, final: bool = False,
                      hold_statement: bool = False):
        """Stream one stage, holding a span back until it closes; returns the stage's tokens (a
        span left open at the end is neither shown nor returned before level 3). ``</think>`` and
        ``<|end|>`` are returned, never shown: the caller closes the reasoning."""
        opened, close, end = self.tokenizer.ids[RECOMMENDATION], self.tokenizer.think_end_id, self.tokenizer.end_id
        begin, finish = self.tokenizer.item_begin_id, self.tokenizer.item_end_id
        generated, held = [], []
        closing = (close, end)
        holding = False        # hold_statement: the "Next item:" opener is written (nothing after it is shown)
        for token in self.backend.stream_reasoning(context, set(), budget, temperature, stop_ids=stops, cite=cite):
            if holding:
                generated.append(token)
                continue
            if held or token == begin:
                held.append(token)
                if token == finish:
                    generated += held
                    yield from held
                    held = []
                continue
            generated.append(token)
            # The final stage's closing token is the caller's to show (after level 3 is complete).
            if token not in closing and (final or token != opened):
                yield token
            holding = hold_statement and self._opener_end(generated[-8:]) is not None
        if held and final:          # before level 3 a span cut off by the budget is dropped
            generated += held
            yield from held
        return generated

    def _reason_batch(self, prompts: list[list[int]], plans: list[ReasoningPlan],
                      max_new_tokens: int, sample: bool, temperature: float, batch_size: int) -> list[list[int]]:
        """Batched reasoning with the plans applied: what ``stream_reasoning`` yields, for many users
        (the same stages under the same cap; users whose stages get the same budget share a batch)."""
        opened, close, end, levels_1_2 = self._stages(max_new_tokens)
        evolution = self.tokenizer.ids[EVOLUTION]
        reasoning = [list(plan.prefix) for plan in plans]
        rooms = [self.level3_room(plan.statement, plan.required, plan.required_ends) for plan in plans]
        caps = [max(max_new_tokens, plan.min_tokens) for plan in plans]      # as stream_reasoning raises them

        def run(group: list[int], wanted: int, keep: Callable[[int], int], stops) -> None:
            """Generate for ``group``: each gets ``wanted`` tokens at most, less what must stay free."""
            by_budget: dict[int, list[int]] = {}
            for i in group:
                budget = min(wanted, caps[i] - len(reasoning[i]) - keep(i))
                if budget > 0:
                    by_budget.setdefault(budget, []).append(i)
            for budget, members in by_budget.items():
                out = self.backend.generate_reasoning([prompts[i] + reasoning[i] for i in members],
                                                      [set() for _ in members], budget, sample=sample,
                                                      temperature=temperature, batch_size=batch_size, stop_ids=stops,
                                                      cites=[plans[i].cite for i in members])
                for i, tokens in zip(members, out):
                    reasoning[i] += tokens

        todo = [i for i, plan in enumerate(plans) if not plan.complete]
        room = rooms.__getitem__
        run([i for i in todo if not plans[i].levels_written], levels_1_2, room, [opened, close, end])
        level_2 = []
        for i in todo:
            if plans[i].levels_written:
                continue
            self._tidy(reasoning[i])
            if evolution not in reasoning[i]:
                reasoning[i].append(evolution)
                level_2.append(i)
        run(level_2, self.LEVEL2_TOKENS, room, [opened, close, end])
        starts = {}
        for i in todo:
            self._tidy(reasoning[i])
            reasoning[i] += [opened] + plans[i].statement
            starts[i] = len(reasoning[i])

        def statement_room(i: int) -> int:
            return self.statement_room(plans[i].required, plans[i].required_ends)

        # Under engine-written levels 1-2 the model writes one sentence of its own, then the
        # statement: level 3 ends at its first period (a small model otherwise loops on "(k) name.").
        # With a request, the engine's lead is that sentence: the statement follows at once.
        run([i for i in todo if not plans[i].levels_written], self.LEVEL3_TOKENS, statement_room, None)
        run([i for i in todo if plans[i].levels_written and not plans[i].statement], self.LEVEL3_TOKENS,
            statement_room, self._sentence_end())
        unstated = []
        for i in todo:
            level3 = reasoning[i][starts[i]:]
            fix = self._statement_needed(prompts[i] + reasoning[i], level3, plans[i])
            if fix is not None:
                written, more_needed = fix
                fits = starts[i] + len(level3) + len(written) + 1 <= caps[i]
                reasoning[i][starts[i]:] = level3 + (written if fits else [])
                if fits and more_needed and caps[i] - len(reasoning[i]) - 1 > 0:
                    unstated.append(i)
                else:
                    reasoning[i].append(self.tokenizer.think_end_id)
        run([i for i in unstated if not plans[i].levels_written], self.STATEMENT_TOKENS, lambda i: 1, None)
        run([i for i in unstated if plans[i].levels_written], self.STATEMENT_TOKENS, lambda i: 1, self._sentence_end())
        return reasoning

    def _sentence_end(self) -> list[int] | None:
        """Level 3's stops under engine-written levels: the period's token (when it is one) besides
        the closing tokens."""
        period = self.tokenizer.encode(".", trusted=False)
        closing = [self.tokenizer.think_end_id, self.tokenizer.end_id]
        return period + closing if len(period) == 1 else None

    def item_prompt(self, prompt: Sequence[int], reasoning: Sequence[int]) -> list[int]:
        body = [t for t in reasoning if t not in (self.tokenizer.think_end_id, self.tokenizer.end_id)]
        return list(prompt) + body + [self.tokenizer.think_end_id, self.tokenizer.item_begin_id]

    def describe_reasoning(self, reasoning: Sequence[int]) -> tuple[str, dict[str, str]]:
        body = [t for t in reasoning if t not in (self.tokenizer.think_end_id, self.tokenizer.end_id)]
        text = DERIVATION + self.tokenizer.decode(body)       # the prompt opened the first level
        return text, parse_reasoning(text)

    # -- the one path ----------------------------------------------------------------------------
    def recommend(self, histories: Sequence[Sequence[str]], k: int = 10, num_beams: int | None = None,
                  thinking: bool = False, user_texts: Sequence[str | None] | None = None,
                  earlier_turns: Sequence[Sequence[Message]] | None = None,
                  exclude: Sequence[set[str]] | None = None, max_reasoning_tokens: int = FULL_REASONING_TOKENS,
                  sample: bool = False, temperature: float = 1.0, batch_size: int = 16,
                  constraints: Sequence[Constraints | None] | None = None,
                  reasoning: Sequence[Sequence[int] | None] | None = None,
                  follow_weight: float | None = None, think_rank: ThinkRank | None = None,
                  follow_share: float | None = None, shown: int | None = None) -> list[Recommendation]:
        """Top-``k`` items for each history (history items and ``exclude`` never recommended; every
        item satisfies its ``constraints``). ``reasoning``: already generated reasoning per user
        (the app streams it first), used instead of generating it here. Thinking mode: level 3's
        statement re-ranks the candidates (``follow``) for the first ``shown`` (default ``k``) items
        people see."""
        n = len(histories)
        num_beams = max(k, num_beams or k)
        user_texts = user_texts or [None] * n
        earlier_turns = earlier_turns or [()] * n
        constraints = list(constraints) if constraints is not None else [None] * n
        excludes = [set(h) | (set(exclude[i]) if exclude else set()) for i, h in enumerate(histories)]
        prompts = [self.prompt_ids(histories[i], user_texts[i], earlier_turns[i], thinking) for i in range(n)]
        results = [Recommendation(items=[], prompt_tokens=len(p), prompt_ids=list(p),
                                  available=self.available(constraints[i], excludes[i]))
                   for i, p in enumerate(prompts)]
        item_prompts = prompts
        if thinking:
            started = time.perf_counter()
            if reasoning is not None:
                generated = [list(r or []) for r in reasoning]
            else:
                plans = [self.plan(histories[i], constraints[i], user_texts[i], max_reasoning_tokens) for i in range(n)]
                generated = self._reason_batch(prompts, plans, max_reasoning_tokens, sample, temperature,
                                               max(batch_size, 16))
            share = (time.perf_counter() - started) / max(n, 1)
            item_prompts = []
            for i, tokens in enumerate(generated):
                results[i].reasoning, results[i].levels = self.describe_reasoning(tokens)
                results[i].reasoning_tokens = len(tokens)
                results[i].reasoning_ids = list(tokens)
                results[i].seconds["reasoning"] = share
                item_prompts.append(self.item_prompt(prompts[i], tokens))
        started = time.perf_counter()
        if not thinking and self.recent_view:
            recent = [self.prompt_ids(list(histories[i])[-self.recent_view:], user_texts[i], earlier_turns[i], False)
                      for i in range(n)]
            ranked = self.rank_direct(prompts, recent, excludes, constraints, k, num_beams, batch_size)
        else:
            priors = self.prior(histories) if self.prior is not None and self.prior_weight else None
            ranked, how = self.rank_items(item_prompts, excludes, constraints, k=num_beams if thinking else k,
                                          num_beams=num_beams, batch_size=batch_size, priors=priors)
            for result, info in zip(results, how):
                result.ranking = info
        if thinking:
            direct = [self.prompt_ids(histories[i], user_texts[i], earlier_turns[i], False) for i in range(n)]
            ranked = self.rank_thinking(think_rank or self.think_rank, ranked, direct, item_prompts,
                                        [r.reasoning_ids for r in results], excludes, constraints, num_beams,
                                        batch_size)
        share = (time.perf_counter() - started) / max(n, 1)
        weight = self.follow_weight if follow_weight is None else follow_weight
        share = self.follow_share if follow_share is None else follow_share
        for result, items in zip(results, ranked):
            if thinking:
                # The whole candidate pool is re-ranked, so a following item can move into the top k.
                result.candidates = items
                items = self.follow(items, result.levels.get("recommendation", ""), weight, share, shown or k)[:k]
            result.items = items
            result.seconds["items"] = share
        return results

    def rank_items(self, prompts: list[list[int]], excludes: Sequence[set], constraints: Sequence[Constraints | None],
                   k: int, num_beams: int, batch_size: int,
                   priors: Sequence[dict] | None = None) -> tuple[list[list[RankedItem]], list[dict]]:
        """Top ``k`` admissible items per prompt (each prompt ends with ``<|item_begin|>``), ranked by
        ``log p(SID path) + head_weight * log p_head(item)``, and how each list was made.

        Exact when the admissible items' prefix tree needs at most ``exact_steps`` forward steps
        (and the backend scores trees): every admissible item gets its full score, nothing is
        pruned. Otherwise beam search over the SID steps; with a head, the head's ``num_beams`` best
        admissible items join the beams and all are re-scored on the same scale.
        ``priors`` (one {item: log p} per prompt): a second model's prior, added with ``prior_weight``."""
        filters = [self.filter_for(c) for c in constraints]
        budget = self.exact_budget(num_beams)
        can_exact = budget > 0 and hasattr(self.backend, "score_trees")
        trees = [admissible_tree(self.trie, e, f, budget) if can_exact else None
                 for e, f in zip(excludes, filters)]
        ranked: list[list[RankedItem]] = [[] for _ in prompts]
        info = [{"method": "exact" if t is not None else "beam", "budget": budget,
                 "head_weight": self.head_weight, "steps": t.steps if t is not None else None,
                 "admissible": len(t.items) if t is not None else None} for t in trees]
        if priors is not None:
            for entry in info:
                entry["prior"], entry["prior_weight"] = self.prior_name or "second model", self.prior_weight

        def with_prior(i: int, pool: list[RankedItem]) -> list[RankedItem]:
            if priors is None:
                return pool
            floor = min(priors[i].values(), default=0.0)
            pool = [RankedItem(r.item_id, r.score + self.prior_weight * priors[i].get(str(r.item_id), floor), r.token_ids)
                    for r in pool]
            return sorted(pool, key=lambda r: -r.score)
        exact = [i for i, t in enumerate(trees) if t is not None]
        if exact:
            scored = self.backend.score_trees([prompts[i] for i in exact], [trees[i] for i in exact],
                                              self.head_weight, batch_size)
            for i, scores in zip(exact, scored):
                tree = trees[i]
                pool = [RankedItem(item, float(score), path) for item, score, path in zip(tree.items, scores, tree.paths)]
                ranked[i] = with_prior(i, pool) if priors is not None else sorted(pool, key=lambda r: -r.score)
                ranked[i] = ranked[i][:k]
        rest = [i for i, t in enumerate(trees) if t is None]
        if rest:
            beams = self.backend.beam_search([prompts[i] for i in rest], [excludes[i] for i in rest],
                                             k=max(k, num_beams) if self.head_weight or priors is not None else k, num_beams=num_beams,
                                             batch_size=batch_size, constraints=[constraints[i] for i in rest])
            if self.head_weight:
                # The head's own favourites join the beams (beam search may have pruned their prefixes).
                sub = [prompts[i] for i in rest]
                admissible = [self._admissible(excludes[i], filters[i]) for i in rest]
                items, paths, scores = self.backend.score_with_head(sub, [[r.item_id for r in pool] for pool in beams],
                                                                   self.head_weight, admissible, num_beams, batch_size)
                beams = [sorted((RankedItem(i, float(x), tuple(p)) for i, p, x in zip(a, b, c)), key=lambda r: -r.score)
                         for a, b, c in zip(items, paths, scores)]
            for i, items in zip(rest, beams):
                ranked[i] = with_prior(i, items)[:k]
        return ranked, info

    def exact_budget(self, num_beams: int) -> int:
        """Forward steps exact ranking may take: ``exact_steps``, or EXACT_FACTOR × the beam's own rows."""
        if self.exact_steps is not None:
            return self.exact_steps
        return EXACT_FACTOR * num_beams * max(1, self.sid_depth - 1)

    def _admissible(self, exclude: set, restrict) -> callable:
        """Whether an item may be recommended: unseen, known to the trie, inside the filter."""
        return lambda item: item not in exclude and item in self.trie and (restrict is None or restrict.allows(item))

    def rank_direct(self, prompts: list[list[int]], recent: list[list[int]], excludes, constraints, k: int,
                    num_beams: int, batch_size: int) -> list[list[RankedItem]]:
        """Non-thinking top ``k`` from two views: the beams of the full prompt and of the latest
        items alone, each candidate scored ``log p(i | prompt) + recent_weight * log p(i | recent)``
        (teacher-forced, the beams' own scores). Every candidate is a beam of one of the two
        searches, so it satisfies the same exclusions and constraints."""
        full = self.backend.beam_search(prompts, excludes, k=num_beams, num_beams=num_beams, batch_size=batch_size,
                                        constraints=constraints)
        short = self.backend.beam_search(recent, excludes, k=num_beams, num_beams=num_beams, batch_size=batch_size,
                                         constraints=constraints)
        views = [(prompts, 1.0, True), (recent, self.recent_weight, True)]
        return [ranked[:k] for ranked in self._score_pools(_union(full, short), views, batch_size)]

    def _score_pools(self, pools: list[list[RankedItem]], views: list[tuple[list[list[int]], float, bool]],
                     batch_size: int) -> list[list[RankedItem]]:
        """Each user's candidates scored as the weighted sum of their teacher-forced
        log-probabilities under each view (prompts, weight, whether the item head adds its
        ``head_weight`` × log-probability there), best first."""
        paths = [[list(i.token_ids) for i in pool] for pool in pools]
        totals = [[0.0] * len(pool) for pool in pools]
        for prompts, weight, with_head in views:
            if weight:
                extra = {"head_weight": self.head_weight} if with_head and self.head_weight else {}
                for total, scores in zip(totals, self.backend.score_paths(prompts, paths, batch_size, **extra)):
                    total[:] = [t + weight * x for t, x in zip(total, scores)]
        out = []
        for pool, total in zip(pools, totals):
            scored = [RankedItem(item.item_id, score, item.token_ids) for item, score in zip(pool, total)]
            scored.sort(key=lambda item: -item.score)
            out.append(scored)
        return out

    def rank_thinking(self, how: ThinkRank, reasoned: list[list[RankedItem]], direct_prompts: list[list[int]],
                      reasoned_prompts: list[list[int]], reasoning: list[list[int]], excludes, constraints,
                      num_beams: int, batch_size: int) -> list[list[RankedItem]]:
        """Thinking mode's candidates, best first (``how``: ThinkRank); the caller keeps the top ``k``.
        Every candidate is a beam of one of the two searches, so it satisfies the same exclusions
        and constraints."""
        if how.mode == "reasoned":
            return [list(beams) for beams in reasoned]
        direct, _ = self.rank_items(direct_prompts, excludes, constraints, k=num_beams, num_beams=num_beams,
                                    batch_size=batch_size)
        if how.mode == "race":
            return [race(a, b, len(a) + len(b)) for a, b in zip(reasoned, direct)]
        # Each view scores as rank_items does (SID path + the head), so a row's score is the sum of the
        # scores its views rank by.
        views = [(direct_prompts, 1.0, True), (reasoned_prompts, how.weight, True)]
        if how.contrast:
            empty = self.prompt_ids([], thinking=True)
            views.append(([self.item_prompt(empty, r) for r in reasoning], -how.contrast, True))
        return self._score_pools(_union(reasoned, direct), views, batch_size)

    def follow(self, items: list[RankedItem], recommendation: str, weight: float = 0.0, share: float = 0.0,
               shown: int = 10) -> list[RankedItem]:
        """Items follow what level 3 states (its categories and decade), two ways, both measured
        (docs/RESULTS.md, issue 13):

        - ``weight``, a soft prior: each candidate's log-probability gains ``weight`` per stated
          attribute it carries, and all are re-ranked;
        - ``share``, a floor: at least that share of the first ``shown`` items carry a stated
          attribute. Walking the model's order, the first candidates that carry none keep their
          places while the allowance lasts (the model's strongest beliefs outside the statement);
          the others move below the first ``shown``.

        0 and 0 leave the model's order."""
        if not (weight or share) or self.facets is None or not items:
            return items
        categories, decade = stated_attributes(recommendation, self.vocabulary)
        if not categories and decade is None:
            return items

        def hits(item: RankedItem) -> int:
            have = set(self.facets.categories_of(str(item.item_id)))
            year = self.facets.year_of(str(item.item_id))
            return len(have & set(categories)) + int(decade is not None and year is not None and year // 10 * 10 == decade)

        if weight:
            items = sorted(items, key=lambda item: -(item.score + weight * hits(item)))
        if not share:
            return items
        allowance = int(shown * (1 - share) + 1e-9)
        front = []
        for item in items:
            if len(front) == shown:
                break
            if hits(item) or allowance > 0:
                allowance -= 0 if hits(item) else 1
                front.append(item)
        placed = {id(i) for i in front}
        return front + [i for i in items if id(i) not in placed]


BACKENDS = ("transformers", "vllm")


def _window(meta: CheckpointMeta, history_items: int | None) -> int:
    """History items a prompt lists: as many as the checkpoint was trained with, unless told
    otherwise (0: the whole history)."""
    return meta.history_items if history_items is None else history_items


def open_recommender(checkpoint, data, sid_codes: dict[str, Sequence[int]], backend: str = "transformers",
                     model_url: str | None = None, device: str | None = None,
                     history_items: int | None = None, facets: Facets | None = None) -> tuple[Recommender, CheckpointMeta]:
    """A checkpoint's recommender (checked against ``data``'s catalog either way): the model loaded
    here (``transformers``), or only its tokenizer with a ``thinkrec serve-model`` server decoding
    (``vllm``, at ``model_url``). ``facets`` defaults to the catalog's at ``data``."""
    from data.manifest import Manifest

    from data.catalog import Catalog

    category_word = Manifest.load(data).category_key
    catalog = Catalog(data)
    if facets is None:
        facets = Facets(*catalog.attribute_table())
    same_item = catalog.duplicates()
    reader = interest_reader(catalog, sid_codes)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend '{backend}' (choose transformers or vllm)")
    if backend == "vllm":
        if not model_url:
            raise ValueError("the vllm backend needs the server's URL (--model-url http://HOST:PORT)")
        tokenizer, meta = load_checked(checkpoint, data)        # the weights live in the server
        return Recommender(None, tokenizer, sid_codes, _window(meta, history_items), model_url=model_url, meta=meta,
                           facets=facets, category_word=category_word, same_item=same_item, reader=reader), meta
    model, tokenizer, meta = load_checkpoint(checkpoint, data, device=device)
    return Recommender(model, tokenizer, sid_codes, _window(meta, history_items), facets=facets, category_word=category_word,
                       same_item=same_item, reader=reader), meta


def interest_reader(catalog, sid_codes: dict[str, Sequence[int]]) -> InterestReader:
    """The catalog's reader of levels 1-2, citing items as spans (people see each as its title)."""
    ids, titles = catalog.id_title_table()
    _, years, categories = catalog.attribute_table()
    return InterestReader.from_table(ids, titles, years, categories, catalog.item_vectors(),
                                     cite=lambda item_id: item_span(sid_codes[item_id]))
