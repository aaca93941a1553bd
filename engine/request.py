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

import numpy as np

from pydantic import BaseModel, Field

from engine.constraints import Constraints, Facets, year_phrase

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
s mind fine with that this these those other else different another seen them about featuring involving
lots plenty hey hi hello recommendations recommendation ideas idea loved liked enjoyed adored dug
awesome cool stuff got have has had something someone somebody there here""".split())


# Titles named anywhere: the words before a title say whether it was liked or turned down.
LIKED_BEFORE = re.compile(r"\b(?:loved|liked|enjoyed|adored|love|like|likes|fan of|into|more of|a lot of|really dug|dug|"
                          r"reminds me of|such as|same vibe as|vibe as|vibes of|the style of|the spirit of)\s*$")
DISLIKED_BEFORE = re.compile(r"\b(?:hated|hate|disliked|dislike|didnt like|dont like|did not like|do not like|couldnt stand|"
                             r"cant stand|not another|no more|sick of|tired of|bored of|anything but|not like|unlike|"
                             r"except|not|no|nothing like|avoid|skip)\s*$")
LIKED_AFTER = re.compile(r"^\s*(?:(?:was|is|were|are)\s+(?:(?:so|really|just|pretty|very)\s+)?(?:great|amazing|awesome|brilliant|good|"
                         r"lovely|fantastic|perfect|the best|my jam|my favou?rite|incredible|excellent|fun|wonderful)|vibes?\b|"
                         r"type of|kind of|sort of|style\b|blew me away|rocks\b|rules\b)")
DISLIKED_AFTER = re.compile(r"^\s*(?:(?:was|is|were|are)\s+(?:(?:so|really|just|pretty|very)\s+)?(?:bad|awful|terrible|boring|rubbish|"
                            r"meh|dull|overrated|garbage|trash|the worst|a letdown|disappointing)|sucked|sucks|"
                            r"(?:and |but )?(?:it )?(?:wasnt|was not|isnt) (?:impressed|great|good|for me))")
TITLE_NEGATIONS = {"no", "not", "never", "nothing", "dont", "didnt", "doesnt", "wasnt", "hate", "hated", "without",
                   "avoid", "skip", "except", "none"}
TITLE_SMALL_WORDS = {"of", "the", "a", "an", "and", "in", "on", "to", "for", "with", "at", "from", "vs", "&", "de", "la", "le"}
# Numbers that are not years: ages, counts, durations (cut out before years are read).
AGE = re.compile(r"\b(?:my |our |a |an )?(\d{1,2})[ -]?(?:years?|yrs?|yo)[ -]?olds?\b|\b(?:aged?|ages) (\d{1,2})(?: ?(?:to|-|and) ?\d{1,2})?\b"
                 r"|\b(\d{1,2}) ?(?:yo|y o)\b")
COUNT = re.compile(r"\b(?:top|best|give me|show me|list|just|only)? ?\d{1,3} (?:movies?|films?|items?|picks?|products?|"
                   r"recommendations?|options?|suggestions?|things?|ideas?|titles?|ones?)\b|\btop \d{1,3}\b")
# Facets a catalog may lack; the key is the attribute name a catalog would need to answer it.
FACETS = {
    "length": re.compile(r"\b(?:under|over|less than|more than|at most|at least|about|around|no longer than|"
                         r"shorter than|longer than)? ?\d+(?:\.\d+)? ?(?:and a half )?(?:hours?|hrs?|h|minutes?|mins?)(?: long)?\b"
                         r"|\b(?:runtime|running time|run time)\b"),
    "language": re.compile(r"\b(?:in|with) (?:french|spanish|german|italian|japanese|chinese|mandarin|cantonese|korean|hindi|"
                           r"russian|swedish|portuguese|english) ?(?:audio|subtitles|language)?\b"
                           r"|\b(?:french|spanish|german|italian|japanese|korean|chinese|hindi|foreign|english)[ -]language\b"
                           r"|\bsubtitle[sd]?\b|\bdubbed\b"),
    "cast": re.compile(r"\b(?:starring|with (?:the )?actors?|with (?:the )?actress|played by|acted by|featuring actors?)\b(?: [a-z]+){0,2}"),
    "director": re.compile(r"\b(?:directed by|director)\b(?: [a-z]+){0,2}"),
    "price": re.compile(r"(?:\$|£|€) ?\d+(?:\.\d+)?|\b\d+ (?:dollars|bucks|euros?|pounds)\b|\b(?:cheap|cheaper|affordable|"
                        r"inexpensive|pricey|expensive|on sale|discount(?:ed)?|price[ds]?|budget friendly)\b"),
    "rating": re.compile(r"\b(?:highly|top|best|well|critically) (?:rated|reviewed)\b|\b\d(?:\.\d)? stars?\b|\bstar rating\b|"
                         r"\b(?:ratings?|reviews?|imdb|rotten tomatoes|metacritic)\b"),
    "awards": re.compile(r"\b(?:oscars?|academy awards?|award[ -]?winn(?:ing|er)s?|awards?|golden globes?|won an? \w+ award)\b"),
    "shipping": re.compile(r"\b(?:free |fast |next day |same day |express )?(?:shipping|delivery|delivered|ships)\b"),
    "availability": re.compile(r"\b(?:free to stream|streaming|to stream|on netflix|on prime|on hulu|on disney plus|in stock)\b"),
    "size": re.compile(r"\b(?:in )?size \d+(?:\.\d)?\b|\b(?:size|sizes) (?:small|medium|large|xs|s|m|l|xl|xxl)\b"),
}
FACET_WORDS = {"length": "running time", "language": "language", "cast": "cast", "director": "director", "price": "price",
               "rating": "rating", "awards": "awards", "shipping": "shipping", "availability": "streaming or stock",
               "size": "size"}
NEGATED_YEAR = (r"\b(?:nothing|not|no|never|none)(?: (?:movies?|films?|anything|something|stuff|items?|products?|ones?|made|"
                r"released|produced|from|thats|that|is|are|was|were|any|really|too|much|way|at all)){0,3} ")
FEW = {"few": 5, "couple": 2, "couple of": 2, "several": 5, "two": 2, "three": 3, "four": 4, "five": 5, "ten": 10}
RELATIVE_OLDER = {"older", "earlier", "older ones", "less recent"}
RELATIVE_NEWER = {"newer", "more recent", "later", "more modern", "less old", "newer ones"}
CONTENT_CUE = re.compile(r"\b(?:about|featuring|involving|set in|set on|based on|where|in which|that has|that have|with)\s+(.+)$")
PLAIN_CONTENT = re.compile(r"\b(?:(?:a|an|the|some|any) [a-z]+|movies|films|items|something|anything|ones|stories|products|"
                           r"stuff|books|shows|games) (?:about|featuring|involving|set in|set on|based on)\b|^(?:about|featuring) ")


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


class RequestParser:
    def __init__(self, facets: Facets, find_title: TitleFinder | None = None, max_ngram: int = 5,
                 reader=None, same_title: Callable | None = None, known_facets: Sequence[str] = (),
                 exact_title: Callable | None = None):
        self.facets = facets
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
                if not self._ask_which(found, request, disliked=False):
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

    def _years(self, text: str, request: Request, last_years: Sequence[int] = (),
               active: tuple[int | None, int | None] = (None, None)) -> str:
        """Year ranges; returns the text with them blanked out. ``last_years``: the years of the
        last answer's items, against which "older" and "more recent" are read."""
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
        def last(m):
            span = m[1] or ("1" if m[2] in ("year", "decade") else "few")
            n = int(span) if span.isdigit() else FEW.get(span, 5)
            n = n * 10 if m[2].startswith("decade") else n
            if self.last_year is not None:
                setr(self.last_year - max(1, n) + 1, None)

        patterns = [
            # A negated comparison bounds the other side: "nothing older than 1990" is 1990 on.
            (rf"{NEGATED_YEAR}(?:older than|before|earlier than|prior to|pre) {year}\b", lambda m: setr(int(m[1]), None)),
            (rf"{NEGATED_YEAR}(?:newer than|after|later than|more recent than|past|beyond) {year}\b",
             lambda m: setr(None, int(m[1]))),
            (rf"{NEGATED_YEAR}(?:older than|before|earlier than|prior to|pre) {decade}",
             lambda m: setr(decade_at(m[1])[0], None)),
            (rf"{NEGATED_YEAR}(?:newer than|after|later than|more recent than|past|beyond) {decade}",
             lambda m: setr(None, decade_at(m[1])[1])),
            (r"\b(?:the |these )?(?:last|past|previous) (?:(few|couple of|couple|several|\d{1,2}|two|three|four|five|ten) )?"
             r"(years?|decades?)\b", last),
            (rf"\b{year} or (?:older|earlier|before)\b", lambda m: setr(None, int(m[1]))),
            (rf"\bbetween {year} and {year}\b", lambda m: setr(int(m[1]), int(m[2]))),
            (rf"\b(?:from )?{year} (?:to|until|till|through) {year}\b", lambda m: setr(int(m[1]), int(m[2]))),
            (rf"\b{year} {year}\b", lambda m: setr(min(int(m[1]), int(m[2])), max(int(m[1]), int(m[2])))),
            (rf"\b(?:before|pre|older than|earlier than) {year}\b", lambda m: setr(None, int(m[1]) - 1)),
            (rf"\b(?:until|till|up to|through)(?: and including)? {year}\b", lambda m: setr(None, int(m[1]))),
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
        ranges = []
        for _ in range(2):                  # a message may state two ranges ("90s, nothing before 1995")
            for pattern, handle in patterns:
                match = re.search(pattern, text)
                if match:
                    request.years_set = False
                    handle(match)
                    if request.years_set:
                        ranges.append((request.year_min, request.year_max))
                    text = text[:match.start()] + " " + text[match.end():]
                    break
            else:
                break
        if len(ranges) == 2:
            (a_low, a_high), (b_low, b_high) = ranges
            low = max([y for y in (a_low, b_low) if y is not None], default=None)
            high = min([y for y in (a_high, b_high) if y is not None], default=None)
            if low is not None and high is not None and low > high:
                # They exclude each other: ask which one was meant.
                setr(*ranges[0])
                labels = [year_phrase(*r) or "any year" for r in ranges]
                request.question = f"Those years do not overlap: {labels[0]} or {labels[1]}?"
                request.options = [{"label": label, "answer": [w for w in re.findall(r"\d{4}", label)] + [["first", "second"][n]],
                                    "patch": {"year_min": r[0], "year_max": r[1]}} for n, (label, r) in enumerate(zip(labels, ranges))]
            else:
                setr(low, high)
        elif ranges:
            setr(*ranges[0])
        words = set(text.split())
        known = [y for y in last_years if y is not None]
        older = r"\b(?:older|earlier|less recent|more classic)\b"
        newer = r"\b(?:newer|more recent|more modern|later|less old)\b"
        if not request.years_set and (known or active != (None, None)):
            # A comparative against what is active: older than the asked range ("90s action" ->
            # "older than that": before 1990), else than most of the items just shown.
            middle = int(np.median(known)) if known else None
            if re.search(older, text) and (active[0] is not None or middle is not None):
                edge = active[0] if active[0] is not None else middle
                setr(None, edge - 1)
                text = re.sub(older, " ", text)
                request.readings.append(f"'older' read against {'the asked years' if active[0] is not None else 'the last answer'}: "
                                        f"before {edge}")
            elif re.search(newer, text) and (active[1] is not None or middle is not None):
                edge = active[1] if active[1] is not None else middle
                setr(edge + 1, None)
                text = re.sub(newer, " ", text)
                request.readings.append(f"'more recent' read against {'the asked years' if active[1] is not None else 'the last answer'}: "
                                        f"after {edge}")
            words = set(text.split())
        def negated(vocabulary) -> bool:
            tokens = text.split()
            spots = [n for n, w in enumerate(tokens) if w in vocabulary]
            return bool(spots) and bool(set(tokens[max(0, spots[0] - 3):spots[0]]) & {"not", "no", "nothing", "never", "none"})
        if not request.years_set and words & RECENT and self.recent_from is not None:
            if negated(RECENT):                       # "nothing new": older than the newest fifth
                setr(None, self.recent_from - 1)
            else:
                setr(self.recent_from, None)
            text = " ".join(w for w in text.split() if w not in RECENT)
        elif not request.years_set and words & OLD and self.classic_until is not None:
            if negated(OLD):                          # "not a really old one": newer than the oldest fifth
                setr(self.classic_until + 1, None)
            else:
                setr(None, self.classic_until)
            text = " ".join(w for w in text.split() if w not in OLD)
        if request.years_set and self.first_year is not None:
            low = request.year_min if request.year_min is not None else self.first_year
            high = request.year_max if request.year_max is not None else self.last_year
            if high < self.first_year or low > self.last_year or low > high:
                request.notes.append(f"The catalog has items from {self.first_year} to {self.last_year}; "
                                     "none fits that year range.")
        return text

    def _lemma(self, word: str) -> list[str] | None:
        """A comparative of a known word ("scarier" -> scary, "funnier" -> funny, "darker" -> dark)."""
        for stem in ([word[:-3] + "y"] if word.endswith("ier") else []) + \
                    ([word[:-2], word[:-3], word[:-1]] if word.endswith("er") and len(word) > 4 else []):
            if stem in self.phrases:
                return self.phrases[stem]
        return None

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
                    categories, n = self._lemma(words[position]), 1
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

    def _numbers(self, text: str, request: Request) -> str:
        """Ages, counts and durations are not years; facets the catalog lacks are said to be unknown.
        Returns the text with them cut out."""
        for match in list(AGE.finditer(text)):
            age = int(next(g for g in match.groups() if g))
            request.notes.append(f'"{match.group(0).strip()}" was read as an age ({age}), not a year.')
            if age <= 12:
                kids = self.phrases.get("kids")
                if kids:
                    request.prefer += [c for c in kids if c not in request.prefer]
        text = AGE.sub(" ", text)
        text = COUNT.sub(" ", text)
        for facet, pattern in FACETS.items():
            match = pattern.search(text)
            if match and facet not in self.known_facets:
                request.unknown.append(facet)
                request.notes.append(f'This catalog has no {FACET_WORDS[facet]} information, so "{match.group(0).strip()}" '
                                     "could not be used.")
                text = pattern.sub(" ", text)
        return text

    def _titles(self, message: str, text: str, request: Request) -> str:
        """Catalog titles named anywhere ("I loved Scream", "not another Toy Story", "fargo was
        great"): quoted or capitalised spans, the words after a liking or disliking cue, and any run
        of two or more words that is exactly a catalog title. The words around a title say whether
        it was liked or turned down. Returns the text with the titles cut out."""
        if self.find_title is None:
            return text
        lowered = normalize(text)
        tokens = lowered.split()
        candidates: list[tuple[str, float, bool]] = []          # (span, score floor, exact lookup only)
        for quoted in re.findall(r"[\"\u201c]([^\"\u201d]{2,80})[\"\u201d]", message):
            candidates.append((quoted, 0.85, False))
        run: list[str] = []
        for word in re.findall(r"[\w'&:.-]+", message) + [""]:
            if word[:1].isupper() or (word[:1].isdigit() and run) or (run and word.lower() in TITLE_SMALL_WORDS):
                run.append(word)
                continue
            while run and run[-1].lower() in TITLE_SMALL_WORDS:
                run.pop()
            for start in range(len(run)):
                candidates.append((" ".join(run[start:start + MAX_TITLE_WORDS]), 0.95, False))
            run = []
        for position in range(1, len(tokens)):
            before = " ".join(tokens[:position])
            if (LIKED_BEFORE.search(before) or DISLIKED_BEFORE.search(before)) and tokens[position] not in ("a", "an"):
                for n in range(min(MAX_TITLE_WORDS, len(tokens) - position), 0, -1):
                    candidates.append((" ".join(tokens[position:position + n]), 0.9, n == 1))
        if self.exact_title is not None:
            for n in range(min(MAX_TITLE_WORDS, len(tokens)), 0, -1):
                for start in range(len(tokens) - n + 1):
                    span = " ".join(tokens[start:start + n])
                    after = " ".join(tokens[start + n:start + n + 4])
                    # Without a cue, a title must be two words or more besides a leading article.
                    bare = tokens[start + (tokens[start] in ("a", "an", "the")):start + n]
                    if len(bare) > 1 or (bare and (LIKED_AFTER.match(after) or DISLIKED_AFTER.match(after))):
                        candidates.append((span, 1.0, True))
        tried: set[str] = set()
        for span, floor, exact in candidates:
            key = normalize(span)
            words = key.split()
            if not key or key in tried or all(w in FILLER or w in NEGATIONS for w in words) or words[0] in NEGATIONS:
                continue
            tried.add(key)
            if key in self.phrases or key in WORD_DECADES or re.fullmatch(r"[\d ]+s?", key) or \
                    not re.search(rf"\b{re.escape(key)}\b", lowered):
                continue
            hits = self.exact_title(span) if exact and self.exact_title is not None else self.find_title(span)
            if not hits or (getattr(hits[0], "score", None) or 0) < floor:
                continue
            found = hits[0]
            where = re.search(rf"\b{re.escape(key)}\b", lowered)
            window = lowered[:where.start()].split()[-5:]
            if "but" in window:                     # "loved X but not Y": only what follows "but" speaks of Y
                window = window[len(window) - window[::-1].index("but"):]
            after = lowered[where.end():]
            disliked = bool(DISLIKED_AFTER.match(after)) or (
                bool(set(window) & TITLE_NEGATIONS or DISLIKED_BEFORE.search(" ".join(window)))
                and not LIKED_AFTER.match(after))
            if self._ask_which(found, request, disliked):
                pass
            elif disliked:
                request.dislike_items.append(str(found.item_id))
                request.dislike_titles.append(found.title)
            elif request.like_item is None:
                request.like_item, request.like_title = str(found.item_id), found.title
                request.like_categories = [c for c in found.categories if normalize(c) not in ("unknown", "")]
            # The title's words are no request ("Star Wars" asks for no War).
            lowered = lowered[:where.start()] + " " + lowered[where.end():]
            loose = r"[^0-9a-z]+".join("'?".join(map(re.escape, w)) for w in key.split())
            text = re.sub(rf"(?:\bthe\s+)?\b{loose}\b(?:,\s*the\b)?", " ", text)
            tried.add(normalize(found.title))
        return text

    def _ask_which(self, found, request: Request, disliked: bool) -> bool:
        """When two catalog items share ``found``'s title, set a question asking which one."""
        same = self.same_title(found.title) if self.same_title is not None else []
        if len(same) < 2:
            return False
        labels = [f"{i.title} ({i.year})" if i.year else f"{i.title} [{i.item_id}]" for i in same]
        request.question = f"Which {found.title} do you mean: " + ", ".join(labels[:-1]) + f" or {labels[-1]}?"
        request.options = [{"label": label, "answer": [str(i.year)] if i.year else [str(i.item_id)],
                            "item_id": str(i.item_id), "title": i.title, "categories": list(i.categories),
                            "disliked": disliked} for label, i in zip(labels, same)]
        return True

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
    def parse(self, message: str | None, last_years: Sequence[int] = (), active: Constraints | None = None) -> Request:
        """``last_years``: years of the items last shown, and ``active``: the constraints in force,
        for "older" and "more recent"."""
        request = Request(text=message or "")
        text = (message or "").lower().replace("\u2019", "'")
        text = re.sub(r"\b(\w+)n't\b", r"\1nt", text)          # don't -> dont, isn't -> isnt
        text = re.sub(r"\banything but\b", " not ", text)
        text = re.sub(r"\bno more\b|\bnot in the mood for\b|\bdont want\b|\bdo not want\b", " not ", text)
        text = self._flag(text, request, (RESET, "reset"), (NOT_THAT, "not_that"))
        text = self._like(text, request)
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
