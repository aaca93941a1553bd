"""Years in a message, and the numbers that are not years: decades, ranges, negated comparisons
("nothing older than 1990"), "the last few years" sized by the catalog, comparatives against the
asked range or the last answer, ages, counts, durations, and facets the catalog lacks. Mixed into
``engine.request.RequestParser``."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from engine.constraints import year_phrase
from engine.request_words import (
    AGE,
    COUNT,
    FACET_WORDS,
    FACETS,
    FEW,
    NEGATED_YEAR,
    OLD,
    RECENT,
    WORD_DECADES,
)


# Words after which a two-digit number is a year ("before 85", "from 92 or 93").
TIME_CUES = r"before|after|since|pre|post|from|until|till|older than|newer than|earlier than|later than"
# Early, mid and late parts of a decade, in years from its start.
PARTS = {"early": (0, 3), "mid": (4, 6), "late": (7, 9)}


class YearReading:
    """Needs ``facets``, ``phrases``, ``known_facets``, ``first_year``, ``last_year``,
    ``recent_from`` and ``classic_until`` on the parser."""

    def _decade(self, two_digits: int) -> tuple[int, int]:
        candidates = [1900 + two_digits, 2000 + two_digits] if two_digits < 30 else [1900 + two_digits]
        counts = [int(((self.facets.years >= d) & (self.facets.years <= d + 9)).sum()) for d in candidates]
        start = candidates[counts.index(max(counts))] if max(counts) else candidates[-1 if two_digits < 30 else 0]
        return start, start + 9

    def _years(self, text: str, request, last_years: Sequence[int] = (),
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
        # "the year 2000" is 2000; a two-digit year after a time cue ("before 85", "from 92") is in the
        # century where the catalog has more items, and the second of a pair ("between 1980 and 95",
        # "1992 or 93") in the first one's century.
        text = re.sub(r"\b(?:the )?year (?=(?:1[5-9]|20)\d\d\b)", "", text)
        text = re.sub(rf"\b({TIME_CUES}) (\d\d)\b(?!s\b|\s*(?:min|mins|minutes|hours?|hrs?|years? old|yo|percent)\b)",
                      lambda m: f"{m[1]} {self._decade(int(m[2]) // 10 * 10)[0] + int(m[2]) % 10}", text)
        text = re.sub(rf"\b{year} (and|or|to|until|till|through|thru) (\d\d)\b(?!s\b)",
                      lambda m: f"{m[1]} {m[2]} {int(m[1]) // 100 * 100 + int(m[3])}", text)

        def decades(first: str, second: str) -> None:
            (a, b), (c, d) = decade_at(first), decade_at(second)
            setr(min(a, c), max(b, d))

        def part_of(which: str, token: str) -> None:
            start = decade_at(token)[0]
            low, high = PARTS[which]
            setr(start + low, start + high)

        def not_decade(token: str) -> None:
            """ "nothing from the 90s": the years on the side of it that the catalog has; with items
            on both sides, a question (the year range cannot have a hole)."""
            low, high = decade_at(token)
            before, after = (None, low - 1), (high + 1, None)
            if self.last_year is None or high >= self.last_year:
                setr(*before)
            elif self.first_year is not None and low <= self.first_year:
                setr(*after)
            else:
                setr(*before)
                labels = [year_phrase(*before), year_phrase(*after)]
                request.question = f"Nothing from the {low}s: {labels[0]} or {labels[1]}?"
                request.options = [{"label": labels[0], "answer": ["before", "earlier", "older", "first"],
                                    "patch": {"year_min": None, "year_max": low - 1}},
                                   {"label": labels[1], "answer": ["after", "later", "newer", "second"],
                                    "patch": {"year_min": high + 1, "year_max": None}}]
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
            (rf"{NEGATED_YEAR}{decade}(?![0-9a-z])", lambda m: not_decade(m[1])),
            ((r"\b(?:the |these )?(?:last|past|previous) (?:(few|couple of|couple|several|\d{1,2}|two|three|four|five|ten) )?"
              r"(years?|decades?)\b"), last),
            (rf"\b{year} or (?:older|earlier|before)\b", lambda m: setr(None, int(m[1]))),
            # Two years bound a range whichever comes first ("from 1999 to 1990" is the nineties).
            (rf"\bbetween {year} and {year}\b", lambda m: setr(*sorted((int(m[1]), int(m[2]))))),
            (rf"\b(?:from )?{year} (?:to|until|till|through|thru|or|and) {year}\b",
             lambda m: setr(*sorted((int(m[1]), int(m[2]))))),
            (rf"\b{year} {year}\b", lambda m: setr(*sorted((int(m[1]), int(m[2]))))),
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
            (rf"\b(?:from )?{decade},? (?:on|onwards?|or later|and later|or newer|and up)\b",
             lambda m: setr(decade_at(m[1])[0], None)),
            # Two decades joined span both ("80s or 90s", "from the 40s through the 60s", "1950s-1960s").
            (rf"\b(?:between |from )?{decade},? (?:(?:or|and|to|till|until|through|thru) )?{decade}(?![0-9a-z])",
             lambda m: decades(m[1], m[2])),
            (rf"\b(?:the )?(early|mid|late) {decade}(?![0-9a-z])", lambda m: part_of(m[1], m[2])),
            (rf"\b(?:up to|until|till|through) {decade}(?![0-9a-z])", lambda m: setr(None, decade_at(m[1])[1])),
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
        known = [y for y in last_years if y is not None]
        older = r"\b(?:older|earlier|less recent|more classic)\b"
        newer = r"\b(?:newer|more recent|more modern|later|less old)\b"
        anchor = self.facets.year_of(str(request.like_item)) if request.like_item is not None else None
        if not request.years_set and anchor is not None:
            # "like the shining but newer": newer than that film, not than the last answer.
            for words, bound, word, side in ((older, (None, anchor - 1), "older", "before"),
                                             (newer, (anchor + 1, None), "more recent", "after")):
                if re.search(words, text):
                    setr(*bound)
                    text = re.sub(words, " ", text)
                    request.readings.append(f"'{word}' read against {request.like_title} ({anchor}): {side} {anchor}")
                    break
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

        # Words and phrases of a vocabulary, wherever clause punctuation stands ("something recent, no horror").
        def said(vocabulary) -> re.Pattern:
            return re.compile(r"\b(?:" + "|".join(sorted(map(re.escape, vocabulary), key=len, reverse=True)) + r")\b")

        def negated(vocabulary) -> bool:
            spot = said(vocabulary).search(text)
            before = set(re.findall(r"[a-z]+", text[:spot.start()])[-3:]) if spot else set()
            return bool(before & {"not", "no", "nothing", "never", "none"})
        if not request.years_set and said(RECENT).search(text) and self.recent_from is not None:
            if negated(RECENT):                       # "nothing new": older than the newest fifth
                setr(None, self.recent_from - 1)
            else:
                setr(self.recent_from, None)
            text = said(RECENT).sub(" ", text)
        elif not request.years_set and said(OLD).search(text) and self.classic_until is not None:
            if negated(OLD):                          # "not a really old one": newer than the oldest fifth
                setr(self.classic_until + 1, None)
            else:
                setr(None, self.classic_until)
            text = said(OLD).sub(" ", text)
        if request.years_set and self.first_year is not None:
            low = request.year_min if request.year_min is not None else self.first_year
            high = request.year_max if request.year_max is not None else self.last_year
            if high < self.first_year or low > self.last_year or low > high:
                request.notes.append(f"The catalog has items from {self.first_year} to {self.last_year}; "
                                     "none fits that year range.")
        return text

    def _numbers(self, text: str, request) -> str:
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
