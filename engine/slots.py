"""Vocabulary slots of the three-level reasoning: the places where the reasoning names something
(an interest, a trend, the next item's attributes) may only use the catalog's own words.

The reasoning's text stays free, except right after these openers (token sequences, so both
backends match them the same way, with no decoding of text):

- level 1, after ``(k)``: an interest name: one or two catalog categories that occur together on
  some item, then an era (``1990s``, ``1970s-1990s``), or ``mixed``; ended by ``:``. A name used by
  an earlier interest of the same trace is not offered again, so interests are distinct.
- level 2, after ``(k)``: a trend (engine.interests.TRENDS: steady, growing, cooling, new, fading,
  returning), then ``,`` or ``.``.
- level 3, after ``(k)``: the name level 1 gave interest k, copied (any level-1 name when k names
  none), so "Serve (2) …" always says what (2) was.
- level 3, after ``Next item:``: up to three categories, then at most one decade (or "any
  <category word>" and a decade), each ``,``-separated and the list ended by ``.``: the attributes
  the engine reads back (:func:`engine.prompt.stated_attributes`). The engine makes sure level 3
  has this statement (:meth:`engine.reasoning.ReasoningWriter._script`).

Each slot is a walk through a :class:`~engine.sid.SIDTrie` over the words' token paths (the
machinery of the catalog trie), so a slot is exactly as strict as an item span. The vocabulary is
the catalog's (its facets), sized by the data: names come only from category pairs that occur
together on an item, eras only from decades that hold items.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from itertools import combinations

import numpy as np

from engine.interests import TRENDS
from engine.prompt import NEXT_ITEM
from engine.sid import SIDTrie, TrieCursor, TrieFilter

MAX_OPENER_NUMBER = 9        # "(1)" … "(9)": more interests than this are never written
MAX_NEXT_CATEGORIES = 3      # level 3 names at most three categories (the teacher writes two; a request may ask three)
LEVEL_ORDER = ("derivation", "evolution", "recommendation")


def _decade_word(decade: int) -> str:
    return f"{decade}s"


def _prefix_free(paths: Iterable[tuple[Hashable, tuple[int, ...]]]) -> list[tuple[Hashable, tuple[int, ...]]]:
    """Drop duplicates and paths that extend (or are extended by) another: a trie needs every word
    to end at a leaf. With a byte-level tokenizer and a terminator on every path none is dropped."""
    kept: dict[tuple[int, ...], Hashable] = {}
    for key, path in paths:
        kept.setdefault(tuple(path), key)
    ordered = sorted(kept)
    out = []
    for i, path in enumerate(ordered):
        if i + 1 < len(ordered) and ordered[i + 1][:len(path)] == path:
            continue          # a prefix of the next path
        if out and path[:len(out[-1][1])] == out[-1][1]:
            continue          # extends a kept path
        out.append((kept[path], path))
    return out


class SlotGrammar:
    """The slots' vocabularies as token paths; :meth:`state` is one trace's walk through them."""

    def __init__(self, sections: dict[int, str], think_end: Sequence[int], openers: dict[tuple[int, ...], int],
                 next_opener: Sequence[tuple[int, ...]], names: list[tuple[str, Sequence[int]]],
                 trends: list[tuple[Sequence, Sequence[int]]], pieces: list[tuple[Sequence, Sequence[int]]],
                 name_paths: dict[str, Sequence[int]], period: Sequence[int] = ()):
        self.sections = {int(t): s for t, s in sections.items()}      # token id -> level name
        self.think_end = {int(t) for t in think_end}
        self.openers = {tuple(p): int(k) for p, k in openers.items()}  # "(k)" token path -> k
        self.next_opener = {tuple(p) for p in next_opener}
        self.longest = max([len(p) for p in self.openers] + [len(p) for p in self.next_opener] + [1])
        self.names = SIDTrie((n, tuple(p)) for n, p in names)
        self.trends = SIDTrie((tuple(k), tuple(p)) for k, p in trends)
        self.pieces = SIDTrie((tuple(k), tuple(p)) for k, p in pieces)
        self.name_paths = {n: tuple(p) for n, p in name_paths.items()}   # name without ":" (level 3 copies)
        self.piece_kind = {key[0]: key[1] for key in self.pieces.items}     # "Comedy" -> "category"
        self.period = tuple(period)
        # Each name's categories and era, so a trace is offered only names its history supports.
        self.name_parts = {n: _parts(n) for n in self.names.items}
        self.catalog: SIDTrie | None = None     # the catalog's item trie and facets (attach)
        self.facets = None
        # Name support by cited set: every stage of a turn (and every turn of a session) replays
        # the same name slots over the same history, so each is worked out once.
        self._support: OrderedDict[tuple, tuple] = OrderedDict()
        self._tables = None
        self._support_guard = threading.Lock()
        self._serialised = (sections, think_end, openers, next_opener, names, trends, pieces, name_paths, period)

    def attach(self, catalog: SIDTrie, facets) -> SlotGrammar:
        """The catalog's item trie (token paths) and facets: with them, a trace's interest names
        must fit at least two of the history items it may cite, and each interest's spans cite
        only history items that fit its name."""
        self.catalog, self.facets = catalog, facets
        return self

    # -- building -------------------------------------------------------------------------------
    @classmethod
    def build(cls, tokenizer, facets, category_word: str = "category") -> SlotGrammar:
        """The grammar for a catalog: ``facets`` give the categories and years, ``tokenizer`` the paths."""
        from engine.tokenizer import DERIVATION, EVOLUTION, RECOMMENDATION

        encode = lambda text: tuple(tokenizer.encode(text, trusted=False))   # noqa: E731
        categories = list(facets.vocabulary)
        pairs = set()
        for row in range(len(facets)):
            cats = list(dict.fromkeys(facets.categories_of(facets.item_ids[row])))
            pairs.update(combinations(cats, 2))
        decades = sorted({int(y) // 10 * 10 for y in (facets.year_of(i) for i in facets.item_ids) if y is not None})
        eras = [_decade_word(d) for d in decades] + [f"{a}s-{b}s" for a, b in combinations(decades, 2)]
        heads = [[c] for c in categories] + [[a, b] for a, b in pairs] + [[b, a] for a, b in pairs]
        names = {"mixed"}
        for head in heads + [[]]:
            for era in eras + [None]:
                words = head + ([era] if era else [])
                if words:
                    names.add(", ".join(words))
        name_list = sorted(names)
        name_paths = dict(zip(name_list, (encode(" " + n) for n in name_list)))
        terminated = [(n, p + encode(":")) for n, p in name_paths.items()]
        trends = [((t, end), encode(f" {t}{end}")) for t in TRENDS for end in ",."]
        anything = f"any {category_word}"
        # "any genre" says nothing the items could follow, so where the catalog has decades it must
        # be followed by one ("any genre, 1990s."); it may end the list only in a catalog without years.
        pieces = ([((c, "category", end), encode(f" {c}{end}")) for c in categories for end in ",."]
                  + [((anything, "any", end), encode(f" {anything}{end}")) for end in ("," if decades else ",.")]
                  + [((_decade_word(d), "decade", "."), encode(f" {_decade_word(d)}.")) for d in decades])
        openers = {}
        for k in range(1, MAX_OPENER_NUMBER + 1):
            openers[encode(f" ({k})")] = k
            openers[encode(f"({k})")] = k
        sections = {tokenizer.ids[DERIVATION]: "derivation", tokenizer.ids[EVOLUTION]: "evolution",
                    tokenizer.ids[RECOMMENDATION]: "recommendation"}
        return cls(sections, [tokenizer.think_end_id, tokenizer.end_id], openers,
                   [encode(" " + NEXT_ITEM), encode(NEXT_ITEM)], _prefix_free(terminated),
                   _prefix_free(trends), _prefix_free(pieces), name_paths, encode("."))

    def to_json(self) -> dict:
        """Plain lists and strings, for the vLLM server's catalog file."""
        sections, think_end, openers, next_opener, names, trends, pieces, name_paths, period = self._serialised
        return {"sections": {str(t): s for t, s in sections.items()}, "think_end": sorted(think_end),
                "openers": [[list(p), k] for p, k in openers.items()], "next_opener": [list(p) for p in next_opener],
                "names": [[n, list(p)] for n, p in names], "trends": [[list(k), list(p)] for k, p in trends],
                "pieces": [[list(k), list(p)] for k, p in pieces],
                "name_paths": {n: list(p) for n, p in name_paths.items()}, "period": list(period)}

    @classmethod
    def from_json(cls, spec: dict) -> SlotGrammar:
        return cls({int(t): s for t, s in spec["sections"].items()}, spec["think_end"],
                   {tuple(p): k for p, k in spec["openers"]}, [tuple(p) for p in spec["next_opener"]],
                   [(n, tuple(p)) for n, p in spec["names"]], [(tuple(k), tuple(p)) for k, p in spec["trends"]],
                   [(tuple(k), tuple(p)) for k, p in spec["pieces"]],
                   {n: tuple(p) for n, p in spec["name_paths"].items()}, spec.get("period", ()))

    def state(self, cite: Iterable[Hashable] | None = None) -> SlotState:
        """One trace's slot walk; ``cite`` is the history its spans may name (grounds the names)."""
        return SlotState(self, cite)

    def support(self, cite: Sequence[Hashable], cache_size: int = 4096) -> tuple[tuple[set[str], Mapping[str, list]], TrieFilter]:
        """:meth:`supported_names` for ``cite`` and the name trie's filter to them, memoised
        (read-only: callers must not change what comes back)."""
        key = tuple(cite)
        with self._support_guard:
            hit = self._support.get(key)
            if hit is not None:
                self._support.move_to_end(key)
                return hit
        names, fits, chosen = self._support_rows(key)
        value = ((names, fits), self.names.restrict(self._name_tables()[-1], chosen))
        with self._support_guard:
            self._support[key] = value
            while len(self._support) > cache_size:
                self._support.popitem(last=False)
        return value

    def _name_tables(self):
        """Per name (in ``self._name_order``): a row over categories (True where the name has the
        category; all True for a name without categories) and one over decades (its era; all True
        without one). Built once; supported_names is then two matrix products."""
        if self._tables is None:
            order = list(self.name_parts)
            categories = sorted({c for parts, _, _ in self.name_parts.values() for c in parts})
            decades = sorted({d for _, low, high in self.name_parts.values() if low is not None
                              for d in range(low, high + 10, 10)})
            column = {c: n for n, c in enumerate(categories)}
            decade_column = {d: n for n, d in enumerate(decades)}
            by_category = np.zeros((len(order), len(categories)), dtype=bool)
            by_decade = np.zeros((len(order), len(decades)), dtype=bool)
            any_category = np.zeros(len(order), dtype=bool)
            any_decade = np.zeros(len(order), dtype=bool)
            for row, name in enumerate(order):
                parts, low, high = self.name_parts[name]
                any_category[row] = not parts
                for category in parts:
                    by_category[row, column[category]] = True
                any_decade[row] = low is None
                if low is not None:
                    for decade in range(low, high + 10, 10):
                        by_decade[row, decade_column[decade]] = True
            self._tables = (order, column, decade_column, by_category, by_decade, any_category, any_decade,
                            self.names.node_paths(order))
        return self._tables

    def supported_names(self, cite: Sequence[Hashable]) -> tuple[set[str], Mapping[str, list]]:
        """Names that fit at least two of the cited items (one when there is only one), with the
        items each fits. An item fits a name when it carries one of its categories and its year
        lies in its era ("mixed" fits everything)."""
        supported, fits, _ = self._support_rows(cite)
        return supported, fits

    def _support_rows(self, cite: Sequence[Hashable]) -> tuple[set[str], Mapping[str, list], np.ndarray]:
        facets = self.facets
        items = [i for i in cite if facets is not None and str(i) in facets.row_of]
        need = min(2, len(items))
        order, column, decade_column, by_category, by_decade, any_category, any_decade, _ = self._name_tables()
        has_category = np.zeros((len(items), len(column)), dtype=bool)
        has_decade = np.zeros((len(items), len(decade_column)), dtype=bool)
        for n, item in enumerate(items):
            for category in facets.categories_of(str(item)):
                if category in column:
                    has_category[n, column[category]] = True
            year = facets.year_of(str(item))
            if year is not None and year // 10 * 10 in decade_column:
                has_decade[n, decade_column[year // 10 * 10]] = True
        # fit[name, item]: the item carries one of the name's categories and lies in its era.
        fit = ((by_category.astype(np.int32) @ has_category.T.astype(np.int32) > 0) | any_category[:, None]) & \
              ((by_decade.astype(np.int32) @ has_decade.T.astype(np.int32) > 0) | any_decade[:, None])
        chosen = fit.sum(axis=1) >= need if need else np.zeros(len(order), dtype=bool)
        rows = np.flatnonzero(chosen)
        supported = {order[r] for r in rows}
        return supported, _Fits(items, {order[r]: fit[r] for r in rows}), chosen


class _Fits(Mapping):
    """Name -> the cited items it fits, listed only when asked (a trace asks for a few of the
    hundreds of supported names)."""

    def __init__(self, items: list, masks: dict[str, np.ndarray]):
        self._items, self._masks, self._lists = items, masks, {}

    def __getitem__(self, name: str) -> list:
        listed = self._lists.get(name)
        if listed is None:
            listed = self._lists[name] = [self._items[n] for n in np.flatnonzero(self._masks[name])]
        return listed

    def __iter__(self):
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)


_ERA = re.compile(r"^(\d{3,4})s(?:-(\d{3,4})s)?$")


def _parts(name: str) -> tuple[tuple[str, ...], int | None, int | None]:
    """("Comedy", "Drama"), 1970, 1990 from "Comedy, Drama, 1970s-1990s"; "mixed" has neither."""
    if name == "mixed":
        return (), None, None
    words = name.split(", ")
    era = _ERA.match(words[-1])
    if era:
        low = int(era.group(1))
        return tuple(words[:-1]), low, int(era.group(2) or low)
    return tuple(words), None, None


class SlotState:
    """One trace's walk: which level it is in, the slot open now (a trie cursor), and what the
    finished slots said (``names``: interest number -> name; ``stated``: level 3's attributes)."""

    __slots__ = ("grammar", "section", "tail", "cursor", "kind", "number", "names", "stated", "errors",
                 "cite", "_supported", "scope", "cited", "_scope_filter")

    def __init__(self, grammar: SlotGrammar, cite: Iterable[Hashable] | None = None):
        self.grammar = grammar
        self.cite = list(cite) if cite is not None else None
        self._supported: tuple[set[str], Mapping[str, list]] | None = None
        self.scope: list | None = None      # the history items the current interest's spans may cite
        self._scope_filter = None           # its trie filter, built once per interest (spans and bans read it)
        self.cited: set = set()             # items this trace's spans have named (the gate reports them)
        self.section: str | None = None
        self.tail: list[int] = []
        self.cursor: TrieCursor | None = None
        self.kind = ""
        self.number = 0
        self.names: dict[int, str] = {}
        self.stated: list[str] = []
        self.errors = 0            # slots left on a token outside their vocabulary (text the engine wrote)

    def resume(self, prompt: Sequence[int]) -> SlotState:
        """Replay the prompt from its last level-1 opening (the prompt opens level 1; the engine may
        have written more levels), so a slot the prompt opens is open here and level 3 knows the
        names level 1 gave."""
        # From level 1's opening, so names given there are known when level 3 copies them.
        opening = [i for i, t in enumerate(prompt) if self.grammar.sections.get(t) == "derivation"]
        start = opening[-1] if opening else max((i for i, t in enumerate(prompt) if t in self.grammar.sections),
                                                default=None)
        if start is not None:
            for token in prompt[start:]:
                self.advance(token)
        return self

    def _open(self, kind: str) -> None:
        g = self.grammar
        if kind == "name":
            restrict = None
            if self.cite is not None and g.facets is not None:
                # Support counts the history items not cited yet: a name's evidence is still citable.
                self._supported, restrict = g.support([c for c in self.cite if c not in self.cited])
            self.cursor = g.names.cursor(exclude=set(self.names.values()), restrict=restrict)
        elif kind == "trend":
            self.cursor = g.trends.cursor()
        elif kind == "copy":
            chosen = [self.names[self.number]] if self.number in self.names else list(dict.fromkeys(self.names.values()))
            if not chosen:
                return         # level 1 named nothing (a fresh user): nothing to copy
            paths = {n: g.name_paths[n] for n in chosen if n in g.name_paths}
            self.cursor = SIDTrie(copyable(paths).items()).cursor()
        elif kind == "piece":
            kinds = [g.piece_kind[word] for word in self.stated]
            blocked = {key for key in g.pieces.items
                       if key[0] in self.stated
                       or (key[1] == "category" and ("any" in kinds or kinds.count("category") >= MAX_NEXT_CATEGORIES))
                       or (key[1] == "any" and kinds)}
            self.cursor = g.pieces.cursor(exclude=blocked)
        self.kind = kind
        if self.cursor is not None and not self.cursor.allowed():
            self.cursor = None

    def advance(self, token: int) -> None:
        g = self.grammar
        if token in g.sections:
            self.section, self.tail, self.cursor, self.scope = g.sections[token], [], None, None
            return
        if token in g.think_end:
            self.section, self.cursor, self.scope = None, None, None
            return
        if self.scope is not None and self.cursor is None and token in g.period:
            self.scope = None                       # "(1) Comedy: …, …." ends the interest's evidence
        if self.cursor is not None:
            if not self.cursor.accept(token):
                self.errors += 1
                self.cursor = None
            elif self.cursor.done():
                self._finish(self.cursor.item)
            return
        if self.section is None:
            return
        self.tail = (self.tail + [token])[-g.longest:]
        for size in range(1, len(self.tail) + 1):
            path = tuple(self.tail[-size:])
            if path in g.openers:
                self.number = g.openers[path]
                self._open({"derivation": "name", "evolution": "trend", "recommendation": "copy"}[self.section])
                return
            if path in g.next_opener and self.section == "recommendation":
                self._open("piece")
                return

    def _finish(self, item) -> None:
        self.cursor, self.tail = None, []
        if self.kind == "name":
            self.names[self.number] = item
            if self._supported is not None:
                self.scope = self._supported[1].get(item)
                self._scope_filter = None
        elif self.kind == "piece":
            word, _, end = item
            self.stated.append(word)
            if end == ",":
                self._open("piece")

    def banned_sections(self) -> list[int]:
        """Level openers that would go back or repeat: the levels are written once, in order."""
        if self.section is None:
            return []
        here = LEVEL_ORDER.index(self.section)
        return [token for token, name in self.grammar.sections.items() if LEVEL_ORDER.index(name) <= here]

    def states_attributes(self) -> bool:
        """Level 3 has stated at least one category or decade (not only "any <word>")."""
        return any(self.grammar.piece_kind.get(word) in ("category", "decade") for word in self.stated)

    def in_statement(self) -> bool:
        """A "Next item:" list is being written (its slot is open)."""
        return self.cursor is not None and self.kind == "piece"

    def span_filter(self):
        """The items the next span may name while an interest's evidence is being listed (history
        items that fit its name), else None (the gate's own restriction holds)."""
        if self.scope is None or self.grammar.catalog is None:
            return None
        if self._scope_filter is None:
            self._scope_filter = self.grammar.catalog.restrict_to(self.scope)
        return self._scope_filter

    def allowed(self) -> list | None:
        """None while the text is free; inside a slot, the tokens that continue its vocabulary."""
        if self.cursor is None:
            return None
        return self.cursor.allowed() or None


def copyable(paths: dict[str, Sequence[int]]) -> dict[str, Sequence[int]]:
    """Names level 3 may copy, as one trie can hold them: a name whose tokens begin another's
    ("Comedy, 1980s" inside "Comedy, 1980s-1990s") cannot end where the other goes on, so only the
    longer one is offered (a trie refuses a path that extends another)."""
    return {n: p for n, p in paths.items()
            if not any(len(q) > len(p) and tuple(q[:len(p)]) == tuple(p) for m, q in paths.items() if m != n)}
