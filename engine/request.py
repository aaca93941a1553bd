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

from engine.constraints import Constraints, Facets

# Everyday words for categories. Targets are resolved against the catalog's vocabulary; a target
# the catalog lacks is dropped, so a product catalog simply never matches "scary".
SYNONYMS: dict[str, list[str]] = {
    "funny": ["Comedy"], "hilarious": ["Comedy"], "comic": ["Comedy"], "comedic": ["Comedy"],
    "humor": ["Comedy"], "humour": ["Comedy"], "humorous": ["Comedy"], "laugh": ["Comedy"], "laughs": ["Comedy"],
    "scary": ["Horror"], "spooky": ["Horror"], "creepy": ["Horror"], "frightening": ["Horror"],
    "terrifying": ["Horror"], "slasher": ["Horror"], "scare": ["Horror"], "scares": ["Horror"],
    "kids": ["Children's", "Children", "Kids", "Animation"], "kid": ["Children's", "Children", "Kids", "Animation"],
    "children": ["Children's", "Children", "Kids", "Animation"], "family": ["Children's", "Family", "Animation"],
    "cartoon": ["Animation"], "cartoons": ["Animation"], "animated": ["Animation"],
    "science fiction": ["Sci-Fi", "Science Fiction"], "scifi": ["Sci-Fi", "Science Fiction"],
    "futuristic": ["Sci-Fi", "Science Fiction"],
    "romantic": ["Romance"], "love story": ["Romance"], "love stories": ["Romance"], "romcom": ["Romance"],
    "thrilling": ["Thriller"], "suspense": ["Thriller"], "suspenseful": ["Thriller"], "thrillers": ["Thriller"],
    "whodunit": ["Mystery"], "detective": ["Mystery"], "mysteries": ["Mystery"],
    "gangster": ["Crime"], "gangsters": ["Crime"], "mafia": ["Crime"], "heist": ["Crime"], "mob": ["Crime"],
    "military": ["War"], "wartime": ["War"], "cowboy": ["Western"], "cowboys": ["Western"],
    "singing": ["Musical"], "musicals": ["Musical"], "documentaries": ["Documentary"], "docs": ["Documentary"],
    "magic": ["Fantasy"], "magical": ["Fantasy"], "fairy tale": ["Fantasy"],
    "dramatic": ["Drama"], "tearjerker": ["Drama"], "noir": ["Film-Noir"],
}

NEGATIONS = {"no", "not", "without", "avoid", "nothing", "none", "except", "skip", "hate", "excluding",
             "enough", "dont", "never", "less", "sick", "tired", "minus", "but"}
LIFT_AFTER = re.compile(r"^\s*(?:is|are)\s+(?:fine|ok|okay|alright|all right|good|allowed|back)\b|^\s+again\b")
LIFT_BEFORE = re.compile(r"(?:dont mind|do not mind|fine with|ok with|okay with|allow|bring back|open to)\s+$")
RESET = re.compile(r"\b(?:start over|start again|reset|clear (?:all|everything|the filters?)|forget (?:it|all|that|everything)|"
                   r"no preference|anything goes|whatever you like|surprise me)\b")
ANY_CATEGORY = re.compile(r"\bany (?:genre|category|kind|type)s?\b")
ANY_YEAR = re.compile(r"\bany (?:year|decade|era|time|period|age)s?\b")
NOT_THAT = re.compile(r"\b(?:not (?:that|this|these|those)(?: ones?)?|something else|anything else|other ones|"
                      r"different ones|none of (?:these|those|them)|seen (?:it|them|those|these)|another one|"
                      r"something different)\b")
LIKE_CUE = re.compile(r"\b(?:more like|similar to|something like|stuff like|things like|films? like|movies? like|"
                      r"anything like|in the vein of|along the lines of|the likes of|resembling|^like)\s+(.+)$")
LIKE_STOP = re.compile(r"\s+(?:but|from|without|and no|and not|though|except|in the|before|after|since)\b|[.!?;]")
MAX_TITLE_WORDS = 10
WORD_DECADES = {"twenties": 20, "thirties": 30, "forties": 40, "fifties": 50, "sixties": 60, "seventies": 70,
                "eighties": 80, "nineties": 90}
RECENT = {"recent", "new", "newer", "newest", "latest", "modern", "recently"}
OLD = {"old", "older", "classic", "classics", "vintage", "oldies", "golden age"}
# Words that carry no wish of their own ("please give me a movie"): never reported as unparsed.
FILLER = set("""a an the and or of for to in on at by with me my i im id ive we us you your it its is are be
was were am do does did can could would will should please pls some something anything any one ones
want wanted need like love prefer give show find recommend suggest suggestion suggestions pick get see
watch watching tonight today now next movie movies film films item items thing things kind sort type
what which how maybe perhaps really very quite just also too so thanks thank mood feel feeling in
again actually instead then let lets ok okay yes yeah good great nice well more most bit little lot
from since until till after before between up year years decade decades era released made old new
s mind fine with that this these those other else different another seen them""".split())


def normalize(text: str) -> str:
    """Lower case, apostrophes dropped, every other non-alphanumeric run a single space."""
    text = text.lower().replace("'", "").replace("\u2019", "")
    return re.sub(r"[^0-9a-z]+", " ", text).strip()


def _forms(name: str) -> set[str]:
    base = normalize(name)
    forms = {base, base.replace(" ", "")}
    for form in list(forms):
        forms |= {form + "s", form + "es"}
        if form.endswith("ies"):
            forms.add(form[:-3] + "y")
        if form.endswith("s"):
            forms.add(form[:-1])
    return {f for f in forms if f}


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
        if self.not_that:
            parts.append("turns down the last items")
        if self.clear_want:
            parts.append("any category")
        if self.clear_years:
            parts.append("any year")
        return "; ".join(parts) or "no filter"


TitleFinder = Callable[[str], Sequence]   # query -> catalog items (best first) with .item_id/.title/.categories/.score


class RequestParser:
    def __init__(self, facets: Facets, find_title: TitleFinder | None = None, max_ngram: int = 5):
        self.facets = facets
        self.find_title = find_title
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
                self.phrases.setdefault(normalize(word), found)
        self.max_ngram = max(max_ngram, max((len(p.split()) for p in self.phrases), default=1))
        span = facets.year_range()
        self.first_year, self.last_year = span if span else (None, None)
        # "recent" and "classic" are sized by this catalog's years, not by calendar constants.
        self.recent_from = facets.year_quantile(0.8)
        self.classic_until = facets.year_quantile(0.2)

    # -- pieces ------------------------------------------------------------------------------
    def _like(self, text: str, request: Request) -> str:
        """Resolve "more like <title>" and cut the title out of the text (its words are no request).
        The longest run of words after the cue that names a catalog title wins, so "more like
        Escape from New York" keeps its "from", "Mr. Holland's Opus" its full stop, and "more like
        Alien but from the 80s" stops at Alien."""
        match = LIKE_CUE.search(text)
        if not match:
            return text
        words = match.group(1).split()
        for n in range(min(len(words), MAX_TITLE_WORDS), 0, -1):
            title = " ".join(words[:n]).strip(" \"'\u201c\u201d,.!?;")
            if not title or (n == 1 and title in FILLER):
                continue
            found = self._find(title)
            if found is not None:
                request.like_item, request.like_title = str(found.item_id), found.title
                request.like_categories = [c for c in found.categories if normalize(c) not in ("unknown", "")]
                return text[:match.start()] + " " + " ".join(words[n:])
        stop = LIKE_STOP.search(match.group(1))
        shown = (match.group(1)[:stop.start()] if stop else match.group(1)).strip(" \"'\u201c\u201d,")
        request.notes.append(f'No title in the catalog matches "{shown}": "more like" was not applied.')
        return text[:match.start()] + " " + (match.group(1)[stop.start():] if stop else "")

    def _find(self, title: str):
        if self.find_title is None:
            return None
        results = self.find_title(title)
        return results[0] if results and (getattr(results[0], "score", None) or 0) >= 0.8 else None

    def _decade(self, two_digits: int) -> tuple[int, int]:
        candidates = [1900 + two_digits, 2000 + two_digits] if two_digits < 30 else [1900 + two_digits]
        counts = [int(((self.facets.years >= d) & (self.facets.years <= d + 9)).sum()) for d in candidates]
        start = candidates[counts.index(max(counts))] if max(counts) else candidates[-1 if two_digits < 30 else 0]
        return start, start + 9

    def _years(self, text: str, request: Request) -> str:
        """Year ranges; returns the text with them blanked out."""
        def setr(low, high):
            request.year_min, request.year_max, request.years_set = low, high, True

        def decade_at(token: str) -> tuple[int, int] | None:
            token = token.strip()
            if m := re.fullmatch(r"(1[5-9]\d0|20\d0)s?", token):
                return int(m.group(1)), int(m.group(1)) + 9
            if m := re.fullmatch(r"(\d)0s", token):
                return self._decade(int(m.group(1)) * 10)
            if token in WORD_DECADES:
                return self._decade(WORD_DECADES[token])
            return None

        year = r"(1[5-9]\d\d|20\d\d)"
        decade = r"(?:the )?((?:1[5-9]\d0|20\d0)s|\d0s|" + "|".join(WORD_DECADES) + ")"
        patterns = [
            (rf"\bbetween {year} and {year}\b", lambda m: setr(int(m[1]), int(m[2]))),
            (rf"\b(?:from )?{year} (?:to|until|till|through) {year}\b", lambda m: setr(int(m[1]), int(m[2]))),
            (rf"\b{year} {year}\b", lambda m: setr(min(int(m[1]), int(m[2])), max(int(m[1]), int(m[2])))),
            (rf"\b(?:before|pre|older than|earlier than) {year}\b", lambda m: setr(None, int(m[1]) - 1)),
            (rf"\b(?:until|till|up to) {year}\b", lambda m: setr(None, int(m[1]))),
            (rf"\b(?:after|post|newer than|later than) {year}\b", lambda m: setr(int(m[1]) + 1, None)),
            (rf"\b(?:since|from) {year} (?:on|onwards?|or later|and later|or newer|and up)\b",
             lambda m: setr(int(m[1]), None)),
            (rf"\b{year} (?:or later|and later|or newer|onwards?|and up)\b", lambda m: setr(int(m[1]), None)),
            (rf"\bsince {year}\b", lambda m: setr(int(m[1]), None)),
            (rf"\b(?:before|pre|older than|earlier than) {decade}", lambda m: setr(None, decade_at(m[1])[0] - 1)),
            (rf"\b(?:after|post|newer than|later than) {decade}", lambda m: setr(decade_at(m[1])[1] + 1, None)),
            (rf"\bsince {decade}", lambda m: setr(decade_at(m[1])[0], None)),
            (rf"\b{decade}(?![0-9a-z])", lambda m: setr(*decade_at(m[1]))),      # "1980s," too
            (rf"\b(?:from|in|of|released in|made in)? ?{year}\b", lambda m: setr(int(m[1]), int(m[1]))),
        ]
        for pattern, handle in patterns:
            match = re.search(pattern, text)
            if match:
                handle(match)
                text = text[:match.start()] + " " + text[match.end():]
                break
        words = set(text.split())
        if not request.years_set and words & RECENT and self.recent_from is not None:
            setr(self.recent_from, None)
            text = " ".join(w for w in text.split() if w not in RECENT)
        elif not request.years_set and words & OLD and self.classic_until is not None:
            setr(None, self.classic_until)
            text = " ".join(w for w in text.split() if w not in OLD)
        if request.years_set and self.first_year is not None:
            low = request.year_min if request.year_min is not None else self.first_year
            high = request.year_max if request.year_max is not None else self.last_year
            if high < self.first_year or low > self.last_year or low > high:
                request.notes.append(f"The catalog has items from {self.first_year} to {self.last_year}; "
                                     "none fits that year range.")
        return text

    def _categories(self, text: str, request: Request) -> list[str]:
        """Category mentions, each wanted, avoided or lifted by its clause; returns leftover words."""
        leftover = []
        for clause in re.split(r"[,;.!?]+|\bbut\b(?! not)", text):
            words = clause.split()
            negated, or_pending, position = False, False, 0
            while position < len(words):
                for n in range(min(self.max_ngram, len(words) - position), 0, -1):
                    phrase = " ".join(words[position:position + n])
                    categories = self.phrases.get(phrase)
                    if categories:
                        break
                else:
                    categories, n = None, 1
                word = words[position]
                if categories is None:
                    if word in NEGATIONS or word in ("nor",):
                        negated = True
                    elif word == "or":
                        or_pending = True
                    elif word not in FILLER and not word.isdigit():
                        leftover.append(word)
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
        # A category both wanted and avoided in one message: the avoidance wins.
        request.want = [kept for kept in ([c for c in g if c not in request.avoid] for g in request.want) if kept]
        return leftover

    @staticmethod
    def _flag(text: str, request: Request, *rules) -> str:
        """For each (pattern, field): set the request's flag when the pattern occurs, and cut it out."""
        for pattern, name in rules:
            if pattern.search(text):
                setattr(request, name, True)
                text = pattern.sub(" ", text)
        return text

    # -- the whole message -------------------------------------------------------------------
    def parse(self, message: str | None) -> Request:
        request = Request(text=message or "")
        text = (message or "").lower().replace("\u2019", "'")
        text = re.sub(r"\b(\w+)n't\b", r"\1nt", text)          # don't -> dont, isn't -> isnt
        text = re.sub(r"\banything but\b", " not ", text)
        text = re.sub(r"\bno more\b|\bnot in the mood for\b|\bdont want\b|\bdo not want\b", " not ", text)
        text = self._flag(text, request, (RESET, "reset"), (NOT_THAT, "not_that"))
        text = self._like(text, request)
        text = self._flag(text, request, (ANY_CATEGORY, "clear_want"), (ANY_YEAR, "clear_years"))
        # Keep clause punctuation, normalize the rest ("sci-fi" -> "sci fi", "'80s" -> "80s").
        text = re.sub(r"'", "", text)
        text = re.sub(r"[^0-9a-z,;.!?]+", " ", text)
        text = self._years(text, request)
        leftover = self._categories(text, request)
        request.unparsed = list(dict.fromkeys(leftover))
        return request


def apply(constraints: Constraints, request: Request, last_items: Sequence[str] = ()) -> Constraints:
    """The constraints after this message: a facet changes only when the message speaks of it."""
    current = Constraints() if request.reset else constraints.model_copy(deep=True)
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
        current.like_categories = list(request.like_categories)
    if request.not_that:
        current.turned_down = list(dict.fromkeys(current.turned_down + [str(i) for i in last_items]))
    return current
