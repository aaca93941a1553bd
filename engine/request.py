"""What a user's chat message asks for, as a typed request, and how it updates the conversation's
active constraints.

A deterministic parser over the catalog's own vocabulary (its categories: genres for movies,
category path parts for products), plus a small table of everyday words that name a category
("funny" -> Comedy, "scary" -> Horror, "for the kids" -> Children's or Animation). A word in that
table only counts when its category exists in this catalog, so the same code serves any domain.
It understands:

- wanted and avoided categories ("a comedy", "no horror", "nothing scary", "comedy or drama");
- years and decades ("80s", "the nineties", "before 1970", "from 1995 on", "recent", "classic");
- "more like <title>", resolved through the catalog's title search;
- "not that / something else", which turns down the items of the last answer;
- lifting and resetting ("actually horror is fine", "any decade", "start over").

Words it cannot place are not guessed at: they are listed (``unparsed``) and left to the model as
a soft wish. ``apply`` merges a request into the active ``Constraints``: each facet changes only
when the new message speaks of it, so "no horror" stays until lifted.

    parser = RequestParser(facets, find_title=catalog.search_titles)
    request = parser.parse("a 90s comedy please")
    constraints = apply(Constraints(), request)
    constraints.describe()      # 'Comedy from the 1990s'
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from pydantic import BaseModel, Field
from rapidfuzz.distance import OSA

from engine.constraints import Constraints, Facets
from engine.request_words import *
from engine.request_words import FILLER, NEGATIONS, _forms, normalize
from engine.titles import TitleReading
from engine.years import YearReading


class Request(BaseModel):
    """One message, understood."""

    text: str
    want: list[list[str]] = Field(default_factory=list)
    avoid: list[str] = Field(default_factory=list)
    lift: list[str] = Field(default_factory=list)          # avoided categories allowed again
    year_min: int | None = None
    year_max: int | None = None
    years_set: bool = False                                # the message spoke of years
    clear_years: bool = False
    clear_want: bool = False
    reset: bool = False
    like_item: str | None = None
    like_title: str | None = None
    like_categories: list[str] = Field(default_factory=list)
    not_that: bool = False
    unparsed: list[str] = Field(default_factory=list)      # words it could not place (left to the model)
    notes: list[str] = Field(default_factory=list)         # what the user should know about the parse
    # Read by meaning (engine.understanding): soft leanings, content matches, turned-down titles.
    prefer: list[str] = Field(default_factory=list)
    prefer_not: list[str] = Field(default_factory=list)
    content_phrase: str | None = None
    content_items: list[str] = Field(default_factory=list)
    content_hard: bool = False
    dislike_items: list[str] = Field(default_factory=list)
    dislike_titles: list[str] = Field(default_factory=list)
    readings: list[str] = Field(default_factory=list)      # how each free phrase was read, for the trace
    unknown: list[str] = Field(default_factory=list)       # facets asked for that the catalog lacks
    question: str | None = None                           # ask this instead of guessing
    options: list[dict] = Field(default_factory=list)      # what each answer to the question means
    answered: bool = False                                 # this message answered the last question

    def understood(self) -> str:
        """What was understood, for the trace ("wants Comedy; 1990s; avoids Drama")."""
        parts = []
        if self.reset:
            parts.append("start over")
        if self.want:
            parts.append("wants " + " and ".join(" or ".join(g) for g in self.want))
        if self.years_set:
            from engine.constraints import year_phrase
            parts.append(year_phrase(self.year_min, self.year_max) or "any year")
        if self.avoid:
            parts.append("avoids " + ", ".join(self.avoid))
        if self.lift:
            parts.append("allows " + ", ".join(self.lift) + " again")
        if self.like_title:
            parts.append(f"more like {self.like_title}")
        if self.dislike_titles:
            parts.append("turns down " + ", ".join(self.dislike_titles))
        if self.content_items:
            parts.append(("only items about " if self.content_hard else "a boost for items about ")
                         + f"'{self.content_phrase}'")
        if self.prefer:
            parts.append("leaning to " + " or ".join(self.prefer))
        if self.prefer_not:
            parts.append("leaning away from " + " or ".join(self.prefer_not))
        if self.not_that:
            parts.append("turns down the last items")
        if self.clear_want:
            parts.append("any category")
        if self.clear_years:
            parts.append("any year")
        return "; ".join(parts) or "no filter"


TitleFinder = Callable[[str], Sequence]   # query -> catalog items (best first) with .item_id/.title/.categories/.score


class RequestParser(TitleReading, YearReading):
    def __init__(self, facets: Facets, find_title: TitleFinder | None = None, max_ngram: int = 5,
                 reader=None, same_title: Callable | None = None, known_facets: Sequence[str] = (),
                 exact_title: Callable | None = None, item_of: Callable | None = None,
                 known_words: set[str] | None = None):
        self.facets = facets
        # Words the language knows (data.embed.known_words), so a typo of a category word is read as
        # it; None: no typo reading.
        self.known_words = known_words
        self.item_of = item_of                   # item id -> catalog item (for "more like the second one")
        self.find_title = find_title
        self.reader = reader                     # engine.understanding.SemanticReader, or None
        self.same_title = same_title             # title -> items sharing it (for "which one?")
        self.exact_title = exact_title           # phrase -> items with exactly that (normalized) title
        self.known_facets = set(known_facets)
        self.phrases: dict[str, list[str]] = {}     # normalized phrase -> categories it names
        by_form: dict[str, str] = {}
        for category in facets.vocabulary:
            if normalize(category) in ("unknown", "other", "misc", ""):
                continue
            for form in _forms(category):
                by_form.setdefault(form, category)
                self.phrases.setdefault(form, [category])
        for word, targets in SYNONYMS.items():
            found = list(dict.fromkeys(by_form[normalize(t)] for t in targets if normalize(t) in by_form))
            if found:
                key = normalize(word)
                # Plurals name the same ("romcoms", "cartoons"); a word is never cut to a singular.
                plurals = (key + "s", key + "es") if not key.endswith("s") and " " not in key else ()
                for form in (key, *plurals):
                    self.phrases.setdefault(form, found)
        self.max_ngram = max(max_ngram, max((len(p.split()) for p in self.phrases), default=1))
        span = facets.year_range()
        self.first_year, self.last_year = span if span else (None, None)
        # "recent" and "classic" are sized by this catalog's years, not by calendar constants.
        self.recent_from = facets.year_quantile(0.8)
        self.classic_until = facets.year_quantile(0.2)

    # -- pieces ------------------------------------------------------------------------------
    def _lemma(self, word: str) -> list[str] | None:
        """A comparative of a known word ("scarier" -> scary, "funnier" -> funny, "darker" -> dark)."""
        for stem in ([word[:-3] + "y"] if word.endswith("ier") else []) + \
                    ([word[:-2], word[:-3], word[:-1]] if word.endswith("er") and len(word) > 4 else []):
            if stem in self.phrases:
                return self.phrases[stem]
        return None

    def _misspelt(self, word: str, request: Request) -> list[str] | None:
        """A category word typed with a slip ("comdey", "thriler", "horor"): a word the language does
        not know, one edit (a swap counts as one) from one category's names and from no other's; two
        edits for words of eight letters or more. Words the language knows ("prime", "eastern") are
        never read so."""
        if self.known_words is None or len(word) < 5 or not word.isalpha() or word in FILLER or word in self.known_words:
            return None
        limit = 1 if len(word) < 8 else 2
        named = {tuple(categories) for form, categories in self.phrases.items()
                 if " " not in form and abs(len(form) - len(word)) <= limit
                 and OSA.distance(word, form, score_cutoff=limit) <= limit}
        if len(named) != 1:
            return None
        categories = list(named.pop())
        request.readings.append(f"'{word}' read as {' or '.join(categories)} (a typo, by spelling)")
        return categories

    def _categories(self, text: str, request: Request, clauses: list | None = None) -> list[str]:
        """Category mentions, each wanted, avoided or lifted by its clause; returns leftover words.
        ``clauses`` (when given) receives each clause's leftover words and whether it was negated."""
        leftover = []
        for clause in re.split(r"[,;.!?]+|\bbut\b(?! not)", text):
            words = clause.split()
            negated, or_pending, position = False, False, 0
            here: list[str] = []
            while position < len(words):
                for n in range(min(self.max_ngram, len(words) - position), 0, -1):
                    phrase = " ".join(words[position:position + n])
                    categories = self.phrases.get(phrase)
                    if categories:
                        break
                else:
                    categories, n = self._lemma(words[position]) or self._misspelt(words[position], request), 1
                word = words[position]
                if categories is None:
                    if word in NEGATIONS or word in ("nor",):
                        negated = True
                    elif word == "or":
                        or_pending = True
                    elif word not in FILLER and not word.isdigit():
                        leftover.append(word)
                        here.append(word)
                    position += 1
                    continue
                before = " ".join(words[:position]) + " "
                after = " " + " ".join(words[position + n:])
                if LIFT_BEFORE.search(before) or LIFT_AFTER.search(after):
                    request.lift += [c for c in categories if c not in request.lift]
                elif negated:
                    request.avoid += [c for c in categories if c not in request.avoid]
                elif or_pending and request.want:
                    request.want[-1] = list(dict.fromkeys(request.want[-1] + categories))
                elif categories not in request.want:
                    request.want.append(list(categories))
                or_pending = False
                position += n
            if clauses is not None and here:
                clauses.append((here, negated))
        return leftover

    def _meaning(self, clauses: list, message: str, request: Request) -> list[str]:
        """Leftover phrases read by meaning: categories (hard, soft or unused), else a content
        search. Returns the words still not used."""
        unused: list[str] = []
        plain = bool(PLAIN_CONTENT.search(message))
        wishes = []                         # (content reading, its words, whether its category was placed)
        for words, negated in clauses:
            content = [w for w in words if len(w) > 2 and w not in NEGATIONS]
            phrase = " ".join(words)
            if not content:
                continue
            reading = self.reader.categories(phrase)
            # The message's own category words rule: a reading by meaning beside them only leans.
            explicit = bool(request.want) if not negated else False
            if reading.level == "hard" and not (plain and not negated) and not explicit:
                request.readings.append(reading.describe())
                if negated:
                    request.avoid += [c for c in reading.categories if c not in request.avoid]
                    continue
                if reading.categories not in request.want:
                    request.want.append(list(reading.categories))
                reading.level = "placed"
            if reading.level in ("hard", "soft"):
                request.readings.append(reading.describe().replace(" read as ", " leaning to ") if reading.level == "hard"
                                        else reading.describe())
                side = request.prefer_not if negated else request.prefer
                side += [c for c in reading.categories if c not in side]
            if negated:
                if reading.level == "unused":
                    unused += words
                continue
            found = self.reader.content(phrase, plain=plain and reading.level != "placed") \
                if sum(len(w) > 3 for w in words) else None
            if found is not None and found.level != "unused":
                wishes.append((found, words, reading.level))
            elif reading.level == "unused":
                unused += words
        if wishes:
            # One content wish per message: the clause whose matches stand out the most.
            found, words, _ = max(wishes, key=lambda w: w[0].z)
            request.content_phrase = found.phrase
            request.content_items = [i for i, _, _ in found.items]
            request.content_hard = found.level == "hard"
            request.readings.append(found.describe())
            unused += [w for other, ws, level in wishes if other is not found and level == "unused" for w in ws]
        return unused

    @staticmethod
    def _flag(text: str, request: Request, *rules) -> str:
        """For each (pattern, field): set the request's flag when the pattern occurs, and cut it out."""
        for pattern, name in rules:
            if pattern.search(text):
                setattr(request, name, True)
                text = pattern.sub(" ", text)
        return text

    # -- the whole message -------------------------------------------------------------------
    def parse(self, message: str | None, last_years: Sequence[int] = (), active: Constraints | None = None,
              shown: Sequence[str] = ()) -> Request:
        """``last_years``: years of the items last shown, and ``active``: the constraints in force,
        for "older" and "more recent"; ``shown``: the last answer's item ids in the order listed,
        for "more like the second one"."""
        request = Request(text=message or "")
        text = (message or "").lower().replace("\u2019", "'")
        text = re.sub(r"\b(\w+)n't\b", r"\1nt", text)          # don't -> dont, isn't -> isnt
        text = re.sub(r"\banything but\b", " not ", text)
        text = re.sub(r"\bno more\b|\bnot in the mood for\b|\bdont want\b|\bdo not want\b", " not ", text)
        text = self._flag(text, request, (RESET, "reset"), (NOT_THAT, "not_that"))
        text = self._like(text, request, shown)
        if request.like_item is None:
            text = self._titles(message or "", text, request)
        text = self._flag(text, request, (ANY_CATEGORY, "clear_want"), (ANY_YEAR, "clear_years"))
        text = self._numbers(text, request)
        # "'88" is a year: in the century where this catalog has more items.
        text = re.sub(r"(?<![\w'])'(\d\d)\b(?!s)", lambda m: str(self._decade(int(m[1]) // 10 * 10)[0] + int(m[1]) % 10), text)
        # Keep clause punctuation, normalize the rest ("sci-fi" -> "sci fi", "'80s" -> "80s").
        text = re.sub(r"'", "", text)
        text = re.sub(r"[^0-9a-z,;.!?]+", " ", text)
        text = self._years(text, request, last_years,
                           (active.year_min, active.year_max) if active is not None else (None, None))
        clauses: list = []
        wanted_before = len(request.want)
        leftover = self._categories(text, request, clauses)
        if self.reader is not None and clauses:
            leftover = self._meaning(clauses, normalize(message or ""), request)
        # Stated both ways in one message ("a horror movie but nothing scary"): ask, do not guess.
        both = [c for g in request.want[wanted_before:] for c in g if c in request.avoid]
        if request.question is None and both:
            request.question = (f"You asked for {both[0]} and also to avoid it: should I include {both[0]} or leave it out?")
            request.options = [{"label": f"include {both[0]}", "answer": ["include", "yes", "keep", "with"],
                                "patch": {"want_add": both[0]}},
                               {"label": f"leave {both[0]} out", "answer": ["leave", "out", "no", "without", "exclude", "avoid"],
                                "patch": {"avoid_add": both[0]}}]
        request.want = [kept for kept in ([c for c in g if c not in request.avoid] for g in request.want) if kept]
        request.prefer = [c for c in request.prefer if c not in request.avoid and c not in request.prefer_not
                          and not any(c in g for g in request.want)]
        request.unparsed = list(dict.fromkeys(leftover))
        return request


def apply(constraints: Constraints, request: Request, last_items: Sequence[str] = ()) -> Constraints:
    """The constraints after this message: a facet changes only when the message speaks of it."""
    current = Constraints() if request.reset else constraints.model_copy(deep=True)
    leaning: list[str] = []
    if request.reset:
        current.turned_down = list(constraints.turned_down)
    if request.clear_want:
        current.want = []
    if request.clear_years:
        current.year_min = current.year_max = None
    if request.want:
        current.want = [list(g) for g in request.want]
        current.like_item = current.like_title = None
        current.like_categories = []
        wanted = {c for g in request.want for c in g}
        current.avoid = [c for c in current.avoid if c not in wanted]
    if request.lift:
        current.avoid = [c for c in current.avoid if c not in request.lift]
    if request.avoid:
        current.avoid = list(dict.fromkeys(current.avoid + request.avoid))
        current.want = [g for g in ([c for c in group if c not in request.avoid] for group in current.want) if g]
    if request.years_set:
        current.year_min, current.year_max = request.year_min, request.year_max
    if request.like_item:
        current.like_item, current.like_title = request.like_item, request.like_title
        if request.want or request.years_set or request.content_items:
            # "like Heat but funnier": the stated facets rule, the title only leans.
            current.like_categories = []
            leaning = [c for c in request.like_categories if not any(c in g for g in current.want)]
        else:
            current.like_categories = list(request.like_categories)
    if request.not_that:
        current.turned_down = list(dict.fromkeys(current.turned_down + [str(i) for i in last_items]))
    if request.dislike_items:
        current.turned_down = list(dict.fromkeys(current.turned_down + request.dislike_items))
    # Soft leanings follow the latest message that speaks of categories at all.
    if request.want or request.avoid or request.prefer or request.prefer_not or request.clear_want:
        current.prefer, current.prefer_not = list(request.prefer), list(request.prefer_not)
    current.prefer = list(dict.fromkeys(current.prefer + [c for c in leaning if c not in current.avoid]))
    if request.clear_want:
        current.among, current.among_label = [], None
    if request.content_items:
        if request.content_hard:
            current.among, current.among_label = list(request.content_items), request.content_phrase
            current.boost, current.boost_label = [], None
        else:
            current.boost, current.boost_label = list(request.content_items), request.content_phrase
    current.pending = None
    return current
