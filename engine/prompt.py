"""How a recommendation request becomes a conversation, and how an answer is laid out.

Training corpora, evaluation, RL rollouts and the app all build prompts here, so the model sees at
serving time exactly the layout it was trained on:

    <|system|>{SYSTEM_TEXT} <item><item>…<|end|>          trusted: built by thinkrec
    (earlier turns of the dialogue)
    <|user|>{what the person typed}<|end|>                 untrusted: special tokens stay text
    <|assistant|><think><|derivation|>…<|evolution|>…<|recommendation|>…</think><item><|end|>

A non-thinking answer has an empty think block, so one model serves both modes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from engine.sid import ITEM_BEGIN, ITEM_END, sid_string
from engine.tokenizer import DERIVATION, EVOLUTION, RECOMMENDATION, THINK, THINK_END, Message

NEXT_ITEM = "Next item:"     # level 3's statement of the next item's attributes (the engine reads it back)

SYSTEM_TEXT = "You are thinkrec, a recommender. The user's history, oldest first:"
DEFAULT_ASK = "What should I watch next?"
LEVELS = ("derivation", "evolution", "recommendation")
LEVEL_TOKENS = {"derivation": DERIVATION, "evolution": EVOLUTION, "recommendation": RECOMMENDATION}
# The mode is chosen by what the answer is started with: an empty think block goes straight to the
# item; thinking opens the first level, so the model cannot skip its reasoning by closing at once.
NO_THINK_PREFIX = THINK + THINK_END + ITEM_BEGIN
THINK_PREFIX = THINK + DERIVATION
# A user with no history gets these two levels as written (the engine writes them, the teacher
# trains on them): nothing to derive, nothing to follow; level 3 reasons from the request alone.
NO_HISTORY_DERIVATION = "No history yet: no interests to derive."
NO_HISTORY_EVOLUTION = "No interest to follow over time."
ASKED_LEAD = "You asked for "      # level 3 opens with the active request in these words


def request_statement(described: str) -> str:
    """How level 3 states the active request (``Constraints.describe()``); the engine writes it."""
    return ASKED_LEAD + described


def fresh_user_recommendation(constraints, user_text: str | None, category_word: str = "category") -> str:
    """Level 3 for a user with no history, written whole: there is nothing to derive, so the only
    honest reasoning is the request itself (the teacher writes the same for fresh users)."""
    from engine.constraints import decade_label, year_phrase

    described = constraints.describe() if constraints is not None else ""
    words = (user_text or "").split()
    if described:
        lead = request_statement(described) + ": serve that."
    elif words and user_text.strip() != DEFAULT_ASK:
        quoted = " ".join(words[:12]) + ("..." if len(words) > 12 else "")
        lead = request_statement(f'"{quoted}"') + ": serve that."
    else:
        lead = "No history and no request yet: serve what is widely liked."
    wanted = [group[0] for group in constraints.want] if constraints is not None else []
    years = ""
    if constraints is not None and (constraints.year_min is not None or constraints.year_max is not None):
        decade = decade_label(constraints.year_min, constraints.year_max)
        years = decade.removeprefix("the ") if decade else year_phrase(constraints.year_min, constraints.year_max)
    shown = ", ".join(wanted or [f"any {category_word}"]) + (f", {years}" if years else "")
    return f"{lead} {NEXT_ITEM} {shown}."


def item_span(codes: Sequence[int]) -> str:
    return ITEM_BEGIN + sid_string(codes) + ITEM_END


def system_message(history_codes: Sequence[Sequence[int]], max_items: int = 20) -> Message:
    recent = list(history_codes)[-max_items:] if max_items else list(history_codes)
    return Message("system", SYSTEM_TEXT + " " + "".join(item_span(c) for c in recent))


def recommendation_messages(history_codes: Sequence[Sequence[int]], user_text: str | None = None,
                            earlier_turns: Sequence[Message] = (), max_items: int = 20) -> list[Message]:
    """The prompt for one turn. ``user_text`` is what the person typed (None: a plain ask)."""
    ask = Message("user", user_text if user_text and user_text.strip() else DEFAULT_ASK,
                  trusted=not (user_text and user_text.strip()))
    return [system_message(history_codes, max_items), *earlier_turns, ask]


def think_block(levels: dict[str, str] | None) -> str:
    """``<think>…</think>`` with the three levels, or empty for a non-thinking answer."""
    if not levels:
        return THINK + THINK_END
    return THINK + "".join(LEVEL_TOKENS[name] + levels[name].strip() for name in LEVELS) + THINK_END


def answer_text(levels: dict[str, str] | None, item_codes: Sequence[Sequence[int]]) -> str:
    return think_block(levels) + "".join(item_span(c) for c in item_codes)


def earlier_assistant_turn(item_codes: Sequence[Sequence[int]], learn: bool = False) -> Message:
    """A past answer as it stays in the dialogue: its items, its reasoning dropped (and, by
    default, out of the loss: the user turned it down)."""
    return Message("assistant", answer_text(None, item_codes), learn=learn)


_SPAN = re.compile(re.escape(ITEM_BEGIN) + r"(.*?)" + re.escape(ITEM_END))


def render_spans(text: str, label_of) -> str:
    """Reasoning as people read it: each item span becomes ``label_of(sid)`` (the catalog title,
    with year). A span still being generated is held back (not shown half-made)."""
    open_at = text.rfind(ITEM_BEGIN)
    if open_at > text.rfind(ITEM_END):
        text = text[:open_at]
    return _SPAN.sub(lambda m: label_of(m.group(1)), text)


_DECADE = re.compile(r"(\d{4})s(?=[,.]|$)")
_ANY = re.compile(r"any [^,.<]+(?=[,.]|$)")


def stated_attributes(recommendation: str, vocabulary) -> tuple[list[str], int | None]:
    """What level 3 says the next item should be ("Next item: Comedy, Drama, 1990s."), read back:
    the categories in ``vocabulary`` and the decade (None when not stated). The list is read the
    way the slot grammar writes it (words separated by ", ", ended by "."), so whatever follows
    the list is not part of it."""
    at = recommendation.rfind(NEXT_ITEM)
    if at < 0:
        return [], None
    text, pos = recommendation[at + len(NEXT_ITEM):], 0
    words = sorted(vocabulary, key=len, reverse=True)      # the longest word that fits, as the trie does
    categories, decade = [], None
    while True:
        while pos < len(text) and text[pos] == " ":
            pos += 1
        word = next((w for w in words if text.startswith(w, pos) and text[pos + len(w):pos + len(w) + 1] in ("", ",", ".")),
                    None)
        if word is not None:
            categories.append(word)
        elif (found := _DECADE.match(text, pos)) is not None:
            decade, word = int(found.group(1)), found.group(0)
        elif (found := _ANY.match(text, pos)) is not None:
            word = found.group(0)
        else:
            break
        pos += len(word)
        if text[pos:pos + 1] != ",":
            break
        pos += 1
    return categories, decade


_LEVEL_SPLIT = re.compile(r"(<\|derivation\|>|<\|evolution\|>|<\|recommendation\|>|</think>)")


def parse_reasoning(text: str) -> dict[str, str]:
    """Split generated reasoning into its levels; a missing level comes back empty."""
    names = {DERIVATION: "derivation", EVOLUTION: "evolution", RECOMMENDATION: "recommendation"}
    levels = dict.fromkeys(LEVELS, "")
    current = None
    for part in _LEVEL_SPLIT.split(text.replace(THINK, "")):
        if part in names:
            current = names[part]
        elif part == THINK_END:
            break
        elif current:
            levels[current] += part
    return {name: value.strip() for name, value in levels.items()}


def well_formed(text: str) -> bool:
    """All three levels present, in order, each non-empty, closed by ``</think>``."""
    positions = [text.find(token) for token in (DERIVATION, EVOLUTION, RECOMMENDATION, THINK_END)]
    return all(p >= 0 for p in positions) and positions == sorted(positions) and all(parse_reasoning(text).values())
