"""The teacher that writes training rationales for the three CoT levels (DESIGN.md, "Three-level CoT").

    teacher = DeterministicTeacher(items, embeddings)          # items: item_id -> ItemFacts
    r = teacher.rationale(history, timestamps, target="74", request=None)
    r.derivation, r.evolution, r.recommendation                # the three level texts
    LangChainTeacher(chat_model, teacher).rationale(...)       # same facts, rewritten by any chat model

Levels 1-2 (derivation, evolution) are read from the user's long history by
``engine.interests.InterestReader`` (the engine writes the same text at serving time) and never see
the target, so the model cannot learn to read the answer off its own reasoning. Level 3
(recommendation) may use the target as the training label, as reasoning scaffolding does: it picks
the interest the target belongs to and states what the next item should be: the served interest's
categories the target carries, then the target's rarest, and the target's decade. With a request,
the served interest is chosen by the engine's rule (``engine.interests.serving_lead``).
The deterministic teacher is plain numpy + string templates (about 1 ms a call), so it can label a
whole corpus on a laptop; the same input always gives the same text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from engine.constraints import Constraints
from engine.interests import (TREND_PHRASE, Interest, InterestReader, ItemFacts, normalize_title, by_recency,
                              decade_of, serving_lead)
from engine.prompt import request_statement

MAX_NEXT_CATEGORIES = 2   # level 3 names at most two categories: the served interest's, then the target's rarest


@dataclass
class Request:
    """What the user asked for in the dialogue."""
    text: str                             # the user's words, e.g. "a 90s comedy please"
    categories: tuple[str, ...] = ()      # wanted categories, e.g. ("Comedy",)
    decade: int | None = None             # wanted decade, e.g. 1990
    avoid: tuple[str, ...] = ()           # categories to avoid, e.g. ("Horror",)
    like_title: str | None = None         # "more like <title>"

    def constraints(self) -> Constraints:
        """The same request as the engine's active constraints."""
        return Constraints(want=[[c] for c in self.categories], avoid=list(self.avoid),
                           year_min=self.decade, year_max=self.decade + 9 if self.decade else None,
                           like_title=self.like_title)


@dataclass
class Rationale:
    derivation: str
    evolution: str
    recommendation: str
    interests: list[Interest]
    served: int | None              # index into interests, None when a request is served instead
    set_aside: list[str] = field(default_factory=list)     # noise titles, most recent first
    next_item: tuple[str, ...] = ()                        # the attributes level 3 asks for


def mentions(text: str, title: str) -> bool:
    """Whether text names the title (case, punctuation and a leading article ignored)."""
    needle = normalize_title(title)
    return bool(needle) and f" {needle} " in f" {normalize_title(text)} "


class DeterministicTeacher:
    """Levels 1-2 come from the :class:`~engine.interests.InterestReader` (the text the engine
    writes at serving time); level 3 is the training label the model learns to write."""

    def __init__(self, items: dict[str, ItemFacts], embeddings: np.ndarray, category_word: str = "genre",
                 window: int = 20, max_interests: int = 4, cite: Callable[[str], str] | None = None,
                 read_items: int | None = None):
        from engine.interests import READ_ITEMS

        self.items = items
        self.cite = cite or (lambda item_id: self.items[item_id].title)
        self.embeddings = embeddings
        self.category_word = category_word
        self.window = window          # the prompt's window (level 3 ranks interests by recency inside it)
        self.reader = InterestReader(items, embeddings, self.cite, READ_ITEMS if read_items is None else read_items,
                                     max_interests)
        self.base_rate = self.reader.base_rate

    # -- levels 1-2 --------------------------------------------------------------------------
    def analyse(self, history: list[str], timestamps: list[float]) -> tuple[list[Interest], list[str]]:
        """Levels 1-2's interests and the item ids set aside as noise (see engine/interests.py)."""
        reading = self.reader.read(history, timestamps)
        return reading.interests, reading.set_aside

    # -- level 3 -----------------------------------------------------------------------------
    def _ranked(self, interests: list[Interest], size: int, target: str | None) -> list[int]:
        """Interest indices, best first: most similar to the target, or most recently active."""
        if target is None:
            return by_recency(interests, size)
        vector = self.reader._centred([self.items[target].row])[0]
        score = [float(it.centroid @ vector) for it in interests]
        return sorted(range(len(interests)), key=lambda i: (-round(score[i], 6), i))

    def _asked(self, request: Request) -> str:
        # The engine's own wording of the active constraints, which it writes into level 3 at
        # serving time: the model is trained on exactly the text it will be handed.
        described = request.constraints().describe()
        if not described:
            words = request.text.split()
            return '"' + " ".join(words[:12]) + ("..." if len(words) > 12 else "") + '"'
        return described

    def _serve(self, interests: list[Interest], ranked: list[int], request: Request | None,
               liked: ItemFacts | None) -> tuple[int | None, str]:
        """Which interest level 3 serves, and the sentence that says so. A request comes first, by
        the engine's own rule (engine.interests.serving_lead), so training and serving agree."""
        served = ranked[0] if ranked else None
        if request is None:
            if served is None:
                return None, "No clear interest to serve yet."
            it = interests[served]
            return served, f"Serve ({served + 1}) {it.name}, {TREND_PHRASE[it.trend]}."
        wanted = set(request.categories) | (set(liked.categories) if liked else set())
        structured = bool(request.categories or request.decade or request.like_title)
        return serving_lead(request_statement(self._asked(request)), interests, ranked, wanted, set(request.avoid),
                            {request.decade} if request.decade else set(), structured)

    def rationale(self, history: list[str], timestamps: list[float], target: str | None = None,
                  request: Request | None = None) -> Rationale:
        """All three levels; only level 3 looks at target (the training label) and request."""
        reading = self.reader.read(history, timestamps)
        interests = reading.interests
        ranked = self._ranked(interests, reading.size, target) if interests else []
        # "more like <title>": the first catalog row wins when titles repeat (the engine's own lookup).
        liked = self.reader.facts_titled(request.like_title) if request and request.like_title else None
        served, lead = self._serve(interests, ranked, request, liked)
        categories, decade = self._next_item(interests, served, self.items[target] if target is not None else None,
                                             request, liked)
        shown = ", ".join(categories or (f"any {self.category_word}",)) + (f", {decade}s" if decade else "")
        return Rationale(reading.derivation, reading.evolution, f"{lead} Next item: {shown}.", interests, served,
                         [self.items[i].title for i in reading.set_aside],
                         categories + ((f"{decade}s",) if decade else ()))

    def _informative(self, categories: tuple[str, ...]) -> list[str]:
        """The item's categories, rarest in the catalog first."""
        return sorted(categories, key=lambda c: (self.base_rate.get(c, 1.0), c))

    def _next_item(self, interests: list[Interest], served: int | None, target: ItemFacts | None,
                   request: Request | None, liked: ItemFacts | None) -> tuple[tuple[str, ...], int | None]:
        """Attributes the next item should have: the request's first, then those of the served
        interest the target carries (what level 3 reasons toward), then the target's rarest."""
        avoid = set(request.avoid) if request else set()
        categories = [c for c in request.categories if c not in avoid] if request else []
        interest = list(interests[served].categories) if served is not None else []
        if target is not None:
            source = [c for c in interest if c in target.categories] + self._informative(target.categories)
            decade = decade_of(target.year)
        elif liked is not None:
            source, decade = self._informative(liked.categories), decade_of(liked.year)
        elif served is not None:
            it = interests[served]
            source, decade = interest, (max(it.decades) if it.decades else None)
        else:
            source, decade = [], None
        for category in source:
            if category not in categories and category not in avoid and len(categories) < MAX_NEXT_CATEGORIES:
                categories.append(category)
        if request is not None and request.decade:
            decade = request.decade
        return tuple(categories), decade
