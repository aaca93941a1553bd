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
- distinct interests per trace (by name), and how many citations repeat within a trace;
- trend truth: level 2's trend statements recounted from the history (engine.interests.check_trends);
- sameness: the share of traces whose level 2 is the single most common level-2 text;
- level-3 accuracy next to a no-learning baseline, "the most frequent categories and decade of the
  last 10 items", with as many categories as level 3 stated (the same odds);
- contradictions: with an active request, level 3 serving an interest that carries an avoided
  category, or none of the asked ones, or stating an avoided category (goal 0).

Titles are matched as normalized word runs (case, punctuation and a leading article ignored), the
longest title first, through a dict of titles: linear in the text, whatever the catalog size.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from collections import Counter

from engine.interests import INTEREST_NAME, READ_ITEMS, check_trends, request_terms
from engine.prompt import stated_attributes

_SPAN = re.compile(r"<\|item_begin\|>((?:<[a-d]_\d+>)+)<\|item_end\|>")
_SERVED = re.compile(r"(?:serve it through|[Ss]erve) \((\d+)\)")
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
        return [name.strip() for _, name in INTEREST_NAME.findall(_SPAN.sub(" ", derivation))]

    def _carries(self, item: str, categories: list[str], decade: int | None) -> bool:
        info = self.items.get(item)
        if info is None:
            return False
        return bool(set(categories) & set(info.categories)) or (
            decade is not None and info.year is not None and info.year // 10 * 10 == decade)

    def baseline(self, history: Sequence[str], count: int) -> tuple[list[str], int | None]:
        """The no-learning level 3: the ``count`` most frequent categories and the most frequent
        decade of the last 10 history items (ties: the more recent first)."""
        last = [self.items[i] for i in list(history)[-10:] if i in self.items][::-1]
        categories = Counter(c for info in last for c in info.categories)
        decades = Counter(info.year // 10 * 10 for info in last if info.year is not None)
        top = sorted(categories, key=lambda c: -categories[c])[:max(count, 1)]
        return top, (max(decades, key=lambda d: decades[d]) if decades else None)

    def contradiction(self, level: dict, constraints) -> bool | None:
        """Whether level 3 goes against the active request (None: no request to go against)."""
        wanted, avoid, _, structured = request_terms(constraints)
        if not (wanted or avoid):
            return None
        recommendation = level.get("recommendation", "")
        names = dict(INTEREST_NAME.findall(_SPAN.sub(" ", level.get("derivation", ""))))
        served = _SERVED.search(recommendation)
        if served and served.group(1) in names:
            categories = {w.strip() for w in names[served.group(1)].split(",")}
            if categories & avoid or (wanted and not categories & wanted):
                return True
        stated, _ = self.stated(recommendation)
        return bool(set(stated) & avoid)

    # -- a whole eval ------------------------------------------------------------------------
    def score(self, levels: Sequence[dict], histories: Sequence[Sequence[str]], ranked: Sequence[Sequence[str]],
              targets: Sequence[str | None], k: int = 10, constraints: Sequence | None = None,
              read_items: int = READ_ITEMS) -> dict:
        traces = len(levels)
        citations = outside = repeats = with_outside = 0
        faithful, faithful_category, category_acc, decade_acc, interests = [], [], [], [], []
        category_hit, base_hit, base_precision, base_decade = [], [], [], []
        trend_statements = trend_true = 0
        contradictions: list[bool] = []
        evolutions = Counter(level.get("evolution", "") for level in levels)
        for row, (level, history, items, target) in enumerate(zip(levels, histories, ranked, targets)):
            read = [i for i in history if i in self.items]
            checked, true = check_trends(level.get("derivation", ""), level.get("evolution", ""),
                                         read[-read_items:] if read_items else read, self.items)
            trend_statements, trend_true = trend_statements + checked, trend_true + true
            if constraints is not None:
                said = self.contradiction(level, constraints[row])
                if said is not None:
                    contradictions.append(said)
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
                category_hit.append(float(bool(set(categories) & set(info.categories))))
                top, _ = self.baseline(history, len(categories))
                base_precision.append(sum(c in info.categories for c in top) / max(len(top), 1))
                base_hit.append(float(bool(set(top) & set(info.categories))))
            if info is not None and decade is not None and info.year is not None:
                decade_acc.append(float(info.year // 10 * 10 == decade))
                _, usual = self.baseline(history, 1)
                base_decade.append(float(usual == info.year // 10 * 10))

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
                "level3_decade_accuracy": mean(decade_acc),
                # The no-learning level 3 over the same traces (as many categories as level 3 stated).
                "level3_category_hit": mean(category_hit),
                "baseline_category_accuracy": mean(base_precision),
                "baseline_category_hit": mean(base_hit),
                "baseline_decade_accuracy": mean(base_decade),
                "trend_statements": trend_statements,
                "trend_truth": round(trend_true / trend_statements, 4) if trend_statements else None,
                "top_evolution_share": round(max(evolutions.values()) / traces, 4) if traces else None,
                "distinct_evolutions": len(evolutions),
                "requests": len(contradictions),
                "contradiction_rate": mean([float(c) for c in contradictions])}


def scorer_for(view) -> ReasoningScorer:
    """A scorer over a ``training.dataset_view.DatasetView``'s catalog."""
    from engine.sid import sid_string

    items = {i: ItemInfo(item.title, list(item.categories), item.year) for i, item in view.items.items()}
    return ReasoningScorer(items, {i: sid_string(codes) for i, codes in view.codes.items()})
