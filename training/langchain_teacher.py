"""A stronger teacher: any LangChain chat model (``BaseChatModel``) rewrites the deterministic
teacher's three levels in more natural words; the facts (interests, served interest, next-item
attributes) stay the deterministic ones, and every unusable level falls back to them.

    thinkrec train sft --teacher my_module:make_chat_model ...
"""

from __future__ import annotations

import logging
import re
from collections import Counter

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

from training.teacher import DeterministicTeacher, Rationale, Request, mentions

log = logging.getLogger(__name__)
LEVELS = ("derivation", "evolution", "recommendation")
LINE = re.compile(r"^[\s*#>-]*(DERIVATION|EVOLUTION|RECOMMENDATION)[\s*]*:[\s*]*(.*?)\s*$", re.IGNORECASE)
SYSTEM_PROMPT = """You write the visible reasoning of a recommender, in three levels.
Rewrite the three facts below in plain, natural English. Keep every fact: interest numbers, their \
names, the evidence titles, the trends and the attributes of the next item. Add no titles that are \
not in the history, and never guess the next item's title. Keep all three lines under {max_words} words \
in all. Answer with exactly three lines and nothing else:
DERIVATION: <the interests and their evidence, and what was set aside>
EVOLUTION: <how each interest moves over time>
RECOMMENDATION: <which interest to serve now and what the next item should be>"""


class LangChainTeacher:
    """Any langchain-core chat model rewrites the deterministic facts; each unusable level falls back."""

    def __init__(self, chat_model: BaseChatModel, base: DeterministicTeacher, max_words: int = 60):
        self.chat_model = chat_model
        self.base = base
        self.max_words = max_words    # asked for in all; a single level over it falls back as "too_long"
        self.fallbacks: Counter[str] = Counter()    # reason -> count of levels that fell back

    def messages(self, history: list[str], facts: Rationale, request: Request | None) -> list[BaseMessage]:
        window = history[-self.base.window:]
        titles = [self.base.items[i].title + (f" ({self.base.items[i].year})" if self.base.items[i].year else "")
                  for i in window]
        lines = [f"History, oldest first: {'; '.join(titles)}.",
                 f"Level 1 facts: {facts.derivation}",
                 f"Level 2 facts: {facts.evolution}",
                 f"Level 3 facts: {facts.recommendation}"]
        if facts.next_item:
            lines.append(f"The next item should be: {', '.join(facts.next_item)}.")
        if request is not None:
            lines.append(f'The user just said: "{request.text}"')
        return [SystemMessage(SYSTEM_PROMPT.format(max_words=self.max_words)), HumanMessage("\n".join(lines))]

    def parse(self, answer: str) -> dict[str, str]:
        found: dict[str, str] = {}
        for line in answer.splitlines():
            match = LINE.match(line)
            if match and match.group(1).lower() not in found:
                found[match.group(1).lower()] = match.group(2).strip()
        return found

    def rationale(self, history: list[str], timestamps: list[float], target: str | None = None,
                  request: Request | None = None) -> Rationale:
        facts = self.base.rationale(history, timestamps, target, request)
        try:
            answer = self.chat_model.invoke(self.messages(history, facts, request)).text
        except Exception as error:   # a failed call must not stop a corpus build; it is counted
            log.warning("teacher chat model failed: %s", error)
            self.fallbacks["error"] += len(LEVELS)
            return facts
        found = self.parse(answer)
        title = self.base.items[target].title if target is not None else None
        texts = {}
        for level in LEVELS:
            text = found.get(level)
            reason = ("missing" if text is None else "empty" if not text
                      else "too_long" if len(text.split()) > self.max_words
                      else "leak" if level != "recommendation" and title and mentions(text, title) else None)
            if reason:
                self.fallbacks[reason] += 1
                text = getattr(facts, level)
            texts[level] = text
        return Rationale(texts["derivation"], texts["evolution"], texts["recommendation"], facts.interests,
                         facts.served, facts.set_aside, facts.next_item)
