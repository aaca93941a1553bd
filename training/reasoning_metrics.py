"""How good the three reasoning levels are, as numbers: what ``thinkrec eval`` reports for every
thinking row next to NDCG.

- grounding: items the derivation cites that are not in the user's history (goal 0). A citation is
  an item span (``<|item_begin|>…<|item_end|>``, mapped to its item by SID) or a catalog title in an
  evidence list ("(1) Comedy, 1990s: Title, Title." and "Set aside: Title.");
- faithfulness: share of the top-10 carrying an attribute level 3 states ("Next item: Comedy, 1990s."
  — one of the categories, or the decade), and the same for the categories alone (a common decade
  makes the first easy);
- level-3 accuracy against the true next item: share of stated categories the target carries, and
  whether the stated decade is the target's;
- distinct interests per trace (by name), and how many citations repeat within a trace.

Titles are matched as normalized word runs (case, punctuation and a leading article ignored), the
longest title first, through a dict of titles: linear in the text, whatever the catalog size.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from engine.prompt import stated_attributes

_SPAN = re.compile(r"<\|item_begin\|>((?:<[a-d]_\d+>)+)<\|item_end\|>")
_INTEREST = re.compile(r"\((\d+)\)\s*([^:()]+?):")
MAX_TITLE_WORDS = 12


def _normalize(text: str) -> str:
    text = re.sub(r"[^0-9a-z]+", " ", text.lower()).strip()
    return re.sub(r"^(the|a|an) ", "", text)


@dataclass
class ItemInfo:
    title: str
    categories: Sequence[str]
    year: int | None


class ReasoningScorer:
    def __init__(self, items: dict[str, ItemInfo], sid_of: dict[str, str]):
        self.items = items
        self.item_of_sid = {sid: item for item, sid in sid_of.items()}
        self.by_title: dict[str, list[str]] = {}
        for item_id, info in items.items():
            key = _normalize(info.title)
            if key:
                self.by_title.setdefault(key, []).append(item_id)
        self.vocabulary = {c for info in items.values() for c in info.categories}

    # -- reading a trace ---------------------------------------------------------------------
    def citation_groups(self, derivation: str) -> list[list[str]]:
        """What the derivation cites, in order: each item span (one item), then each title of the
        evidence lists (every catalog item bearing that title: remakes share titles, and a
        citation is grounded when any of them is in the history)."""
        groups = [[self.item_of_sid[m]] for m in _SPAN.findall(derivation) if m in self.item_of_sid]
        text = _SPAN.sub(" ", derivation)
        for segment in re.split(r"\(\d+\)", text):
            for part in segment.split(":")[1:]:
                groups += self._titles_in(part)
        return groups

    def _titles_in(self, text: str) -> list[list[str]]:
        words = _normalize(text).split()
        found, position = [], 0
        while position < len(words):
            for n in range(min(MAX_TITLE_WORDS, len(words) - position), 0, -1):
                hit = self.by_title.get(" ".join(words[position:position + n]))
                if hit:
                    found.append(hit)
                    position += n
                    break
            else:
                position += 1
        return found

    def _ungrounded(self, derivation: str, history: set[str]) -> tuple[int, int, int]:
        """(citations, citations outside the history, repeated citations)."""
        groups = self.citation_groups(derivation)
        outside = sum(1 for g in groups if not set(g) & history)
        keys = [tuple(g) for g in groups]
        return len(groups), outside, len(keys) - len(set(keys))

    def stated(self, recommendation: str) -> tuple[list[str], int | None]:
        """Categories and decade of level 3's "Next item: ..." (those in the catalog's vocabulary)."""
        return stated_attributes(recommendation, self.vocabulary)

    @staticmethod
    def interests(derivation: str) -> list[str]:
        return [name.strip() for _, name in _INTEREST.findall(_SPAN.sub(" ", derivation))]

    def _carries(self, item: str, categories: list[str], decade: int | None) -> bool:
        info = self.items.get(item)
        if info is None:
            return False
        return bool(set(categories) & set(info.categories)) or (
            decade is not None and info.year is not None and info.year // 10 * 10 == decade)

    # -- a whole eval ------------------------------------------------------------------------
    def score(self, levels: Sequence[dict], histories: Sequence[Sequence[str]], ranked: Sequence[Sequence[str]],
              targets: Sequence[str | None], k: int = 10) -> dict:
        traces = len(levels)
        citations = outside = repeats = with_outside = 0
        faithful, faithful_category, category_acc, decade_acc, interests = [], [], [], [], []
        for level, history, items, target in zip(levels, histories, ranked, targets):
            total, out, repeated = self._ungrounded(level.get("derivation", "") + " " + level.get("evolution", ""),
                                                    set(history))
            citations, outside, repeats = citations + total, outside + out, repeats + repeated
            with_outside += out > 0
            names = self.interests(level.get("derivation", ""))
            interests.append(len(set(names)))
            categories, decade = self.stated(level.get("recommendation", ""))
            top = list(items)[:k]
            if top and (categories or decade is not None):
                faithful.append(sum(self._carries(i, categories, decade) for i in top) / len(top))
            if top and categories:
                faithful_category.append(sum(self._carries(i, categories, None) for i in top) / len(top))
            info = self.items.get(target) if target is not None else None
            if info is not None and categories:
                category_acc.append(sum(c in info.categories for c in categories) / len(categories))
            if info is not None and decade is not None and info.year is not None:
                decade_acc.append(float(info.year // 10 * 10 == decade))

        def mean(values):
            return round(sum(values) / len(values), 4) if values else None

        return {"citations_per_trace": round(citations / max(traces, 1), 3),
                "ungrounded_citations": outside,
                "ungrounded_share": round(outside / max(citations, 1), 4),
                "traces_with_ungrounded": with_outside,
                "repeated_citations_per_trace": round(repeats / max(traces, 1), 3),
                "distinct_interests": mean(interests),
                "faithfulness": mean(faithful),
                "faithfulness_categories": mean(faithful_category),     # the categories alone, no decade
                "stated_share": round(len(faithful) / max(traces, 1), 4),
                "level3_category_accuracy": mean(category_acc),
                "level3_decade_accuracy": mean(decade_acc)}


def scorer_for(view) -> ReasoningScorer:
    """A scorer over a ``training.dataset_view.DatasetView``'s catalog."""
    from engine.sid import sid_string

    items = {i: ItemInfo(item.title, list(item.categories), item.year) for i, item in view.items.items()}
    return ReasoningScorer(items, {i: sid_string(codes) for i, codes in view.codes.items()})
