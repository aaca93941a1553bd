"""Requests become constraints: the parser over a catalog's own vocabulary, merging across turns,
and the masks the constraints make (no model needed)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from engine.constraints import Constraints, Facets
from engine.request import RequestParser, apply

ITEMS = [  # id, year, categories
    ("1", 1995, ["Comedy"]), ("2", 1994, ["Comedy", "Romance"]), ("3", 1987, ["Action", "Comedy"]),
    ("4", 1979, ["Horror", "Sci-Fi"]), ("5", 1986, ["Action", "Sci-Fi"]), ("6", 1965, ["Drama", "War"]),
    ("7", 1997, ["Children's", "Animation", "Comedy"]), ("8", 1998, ["Drama"]), ("9", None, ["Horror"]),
    ("10", 1996, ["Crime", "Thriller"]), ("11", 2003, ["Drama"]), ("12", 1955, ["Western"]),
]


@dataclass
class Found:
    item_id: str
    title: str
    categories: list
    score: float = 1.0


TITLES = {"alien": Found("4", "Alien", ["Horror", "Sci-Fi"]), "toy story": Found("7", "Toy Story", ["Children's", "Animation", "Comedy"]),
          "mr. holland's opus": Found("8", "Mr. Holland's Opus", ["Drama"]), "mr": Found("1", "Mr. Wrong", ["Comedy"])}


def find_title(query: str):
    hit = TITLES.get(query.lower().strip())
    return [hit] if hit else []


@pytest.fixture(scope="module")
def facets() -> Facets:
    return Facets([i for i, _, _ in ITEMS], [y for _, y, _ in ITEMS], [c for _, _, c in ITEMS])


@pytest.fixture(scope="module")
def parser(facets) -> RequestParser:
    return RequestParser(facets, find_title=find_title)


@pytest.mark.parametrize("text, want, avoid, years", [
    ("a 90s comedy please", [["Comedy"]], [], (1990, 1999)),
    ("Something funny", [["Comedy"]], [], None),
    ("something scary tonight", [["Horror"]], [], None),
    ("for the kids", [["Children's", "Animation"]], [], None),
    ("no horror", [], ["Horror"], None),
    ("nothing scary, a comedy", [["Comedy"]], ["Horror"], None),
    ("I don't want anything with war or crime", [], ["War", "Crime"], None),
    ("comedy or drama", [["Comedy", "Drama"]], [], None),
    ("a romantic comedy from the eighties", [["Romance"], ["Comedy"]], [], (1980, 1989)),
    ("an 80's action movie", [["Action"]], [], (1980, 1989)),
    ("sci-fi from the 1970s", [["Sci-Fi"]], [], (1970, 1979)),
    ("westerns before 1970", [["Western"]], [], (None, 1969)),
    ("anything from 1995 on", [], [], (1995, None)),
    ("from 1995", [], [], (1995, 1995)),
    ("since 1990", [], [], (1990, None)),
    ("thrillers between 1980 and 1985", [["Thriller"]], [], (1980, 1985)),
    ("a drama from 1999 to 1990", [["Drama"]], [], (1990, 1999)),
    ("thrillers between 1985 and 1980", [["Thriller"]], [], (1980, 1985)),
    ("anything but dramas", [], ["Drama"], None),
])
def test_parse(parser, text, want, avoid, years):
    request = parser.parse(text)
    assert request.want == want and request.avoid == avoid
    if years is None:
        assert not request.years_set
    else:
        assert (request.year_min, request.year_max) == years


def test_recent_and_classic_are_sized_by_the_catalog(parser, facets):
    recent = parser.parse("something recent")
    known = sorted(y for _, y, _ in ITEMS if y)
    assert recent.year_min == parser.recent_from and known[0] < recent.year_min <= known[-1]
    classic = parser.parse("a classic")
    assert classic.year_max == parser.classic_until < recent.year_min


def test_a_decade_before_clause_punctuation_is_read(parser):
    """ "from the 1980s, no drama": the comma ends the decade, it does not hide it."""
    for text in ("something from the 1980s, no drama", "the 80s; no drama", "an 80s film. no drama"):
        request = parser.parse(text)
        assert (request.year_min, request.year_max) == (1980, 1989), text
        assert "Drama" in request.avoid and request.unparsed == [], text


def test_more_like_resolves_a_catalog_title(parser):
    request = parser.parse("more like Alien but from the 80s")
    assert request.like_item == "4" and request.like_categories == ["Horror", "Sci-Fi"]
    assert (request.year_min, request.year_max) == (1980, 1989)
    # A title with full stops is matched whole, not cut at "Mr." (the longest title wins).
    assert parser.parse("more like Mr. Holland's Opus please").like_item == "8"
    missing = parser.parse("more like Nonexistent Film")
    assert missing.like_item is None and any("No title" in n for n in missing.notes)


def test_like_a_description_is_read_as_the_request(facets):
    """ "something like a 70s comedy" describes what is wanted: its words are the request, and a
    loose title search ("a good" -> "Good Morning") names nothing; a title said in full still does."""
    loose = Found("3", "Good Morning", ["Action", "Comedy"])
    exact = {"a fish called wanda": Found("2", "A Fish Called Wanda", ["Comedy", "Romance"])}
    parser = RequestParser(facets, find_title=lambda q: [loose] if "good" in q.lower() else [],
                           exact_title=lambda q: [exact[q.lower()]] if q.lower() in exact else [])
    request = parser.parse("something like a good 70s comedy")
    assert request.like_item is None and not any("No title" in n for n in request.notes)
    assert request.want == [["Comedy"]] and (request.year_min, request.year_max) == (1970, 1979)
    assert parser.parse("more like a fish called wanda").like_item == "2"


def test_more_like_a_place_in_the_last_answer(facets):
    by_id = {f.item_id: f for f in TITLES.values()}
    titles = dict(TITLES, **{"the second jungle book": Found("5", "The Second Jungle Book", ["Action", "Sci-Fi"])})
    parser = RequestParser(facets, find_title=lambda q: [titles[q.lower()]] if q.lower() in titles else [],
                           item_of=by_id.get)
    shown = ["7", "4", "8"]                      # the last answer's list, in its order
    second = parser.parse("more like the second one", shown=shown)
    assert (second.like_item, second.like_title) == ("4", "Alien") and second.like_categories == ["Horror", "Sci-Fi"]
    assert second.unparsed == [] and second.want == []
    assert parser.parse("something like your top pick", shown=shown).like_item == "7"
    assert parser.parse("more like #3", shown=shown).like_item == "8"
    assert parser.parse("more like the last one", shown=shown).like_item == "8"
    later = parser.parse("more like the 2nd but from the 80s", shown=shown)
    assert later.like_item == "4" and (later.year_min, later.year_max) == (1980, 1989)
    # A title that starts with an ordinal is still a title.
    assert parser.parse("more like The Second Jungle Book", shown=shown).like_item == "5"
    # Out of range, or nothing shown yet: said, not guessed.
    far = parser.parse("more like the fifth one", shown=shown)
    assert far.like_item is None and any("listed 3 items" in n for n in far.notes)
    fresh = parser.parse("more like the second one")
    assert fresh.like_item is None and any("no earlier list" in n for n in fresh.notes)


def test_what_it_cannot_parse_is_said_not_guessed(parser):
    request = parser.parse("I want something light and wistful tonight")
    assert request.want == [] and not request.years_set
    assert request.unparsed == ["light", "wistful"]
    assert parser.parse("show me <a_12><|assistant|>").want == []


def test_words_for_categories_the_catalog_lacks_match_nothing():
    products = Facets(["p1", "p2"], [None, None], [["Books", "Science Fiction & Fantasy"], ["Kitchen"]])
    parser = RequestParser(products)
    assert parser.parse("something scary").want == []                    # no Horror in this catalog
    assert parser.parse("science fiction & fantasy books").want == [["Science Fiction & Fantasy"], ["Books"]]
    assert parser.parse("no kitchen stuff").avoid == ["Kitchen"]


def test_constraints_persist_until_changed(parser):
    c = apply(Constraints(), parser.parse("a 90s comedy please"))
    c = apply(c, parser.parse("no drama"))
    assert c.want == [["Comedy"]] and c.avoid == ["Drama"] and (c.year_min, c.year_max) == (1990, 1999)
    assert c.describe() == "Comedy from the 1990s, no Drama"
    c = apply(c, parser.parse("what else?"))                     # a message about nothing keeps everything
    assert c.describe() == "Comedy from the 1990s, no Drama"
    c = apply(c, parser.parse("actually drama is fine"))
    assert c.avoid == [] and c.want == [["Comedy"]]
    c = apply(c, parser.parse("from the 80s"))
    assert (c.year_min, c.year_max) == (1980, 1989) and c.want == [["Comedy"]]
    c = apply(c, parser.parse("no comedy"))                      # avoiding a wanted category drops the want
    assert c.want == [] and c.avoid == ["Comedy"]
    c = apply(c, parser.parse("any decade"))
    assert c.year_min is None and c.year_max is None and c.avoid == ["Comedy"]
    c = apply(c, parser.parse("start over"))
    assert not c.is_hard()


def test_not_that_turns_down_the_last_items(parser):
    c = apply(Constraints(), parser.parse("not that, something else"), last_items=["3", "5"])
    assert c.turned_down == ["3", "5"] and not c.is_hard()


def test_masks_match_the_per_item_check(facets, parser):
    for text in ["a 90s comedy", "no horror", "comedy or drama", "before 1970", "more like Alien",
                 "for the kids", "an 80s action movie, no sci-fi", "from 1995 on"]:
        c = apply(Constraints(), parser.parse(text))
        mask = facets.mask(c)
        expected = np.array([c.allows(cats, year) for _, year, cats in ITEMS])
        assert (mask == expected).all(), text
        assert mask.sum() < len(ITEMS)
    # An item without a year never satisfies a year bound.
    assert not facets.mask(Constraints(year_max=2100))[8]


@pytest.mark.parametrize("text, years", [
    ("80s or 90s action", (1980, 1999)),                 # two decades joined span both
    ("1950s-1960s sci fi", (1950, 1969)),
    ("from the 40s through the 60s", (1940, 1969)),
    ("something from the early 90s", (1990, 1993)),      # parts of a decade
    ("mid-80s", (1984, 1986)),
    ("late 70s horror", (1977, 1979)),
    ("nothing made before 85", (1985, None)),            # two-digit years after a time cue
    ("anything from 92 or 93", (1992, 1993)),
    ("between 1980 and 95", (1980, 1995)),
    ("after the year 1990", (1991, None)),
    ("80s onward", (1980, None)),
    ("nothing from the 90s", (None, 1989)),              # a decade at the catalog's end, negated
    ("something recent, no horror", ("recent", None)),    # clause punctuation after the word
])
def test_everyday_year_phrasings(parser, text, years):
    request = parser.parse(text)
    years = tuple(parser.recent_from if y == "recent" else y for y in years)
    assert (request.year_min, request.year_max) == years, (text, request)


def test_a_negated_decade_inside_the_catalog_asks_which_side(parser):
    request = parser.parse("no 80s movies")
    assert request.question and "1980" in request.question and len(request.options) == 2
    assert {o["patch"]["year_max"] for o in request.options} == {1979, None}


@pytest.mark.parametrize("text, avoid", [
    ("a comedy that isnt a war film", ["War"]),
    ("neither horror nor western", ["Horror", "Western"]),
])
def test_contracted_and_paired_negations_avoid(parser, text, avoid):
    request = parser.parse(text)
    assert request.avoid == avoid and not any(c in g for g in request.want for c in avoid), request


def test_the_words_that_judge_a_title_are_no_request(facets):
    """ "alien was way too childish": Alien is turned down, and "childish" asks for nothing."""
    parser = RequestParser(facets, find_title=find_title, exact_title=find_title)
    for text in ("alien was way too childish", "i didnt enjoy alien", "i never liked alien"):
        request = parser.parse(text)
        assert request.dislike_items == ["4"] and not request.prefer and not request.want, (text, request)
        assert request.unparsed == [], (text, request.unparsed)


def test_older_and_newer_are_read_against_a_named_title(facets):
    parser = RequestParser(facets, find_title=find_title, exact_title=find_title)
    request = parser.parse("more like alien but newer")          # Alien is from 1979 here
    assert request.like_item == "4" and (request.year_min, request.year_max) == (1980, None)
    assert any("Alien (1979)" in r for r in request.readings)


def test_another_one_like_a_place_in_the_list_turns_none_of_it_down(facets):
    by_id = {f.item_id: f for f in TITLES.values()}
    parser = RequestParser(facets, find_title=find_title, item_of=by_id.get)
    request = parser.parse("another one like the first", shown=["7", "4"])
    assert request.like_item == "7" and not request.not_that


def test_a_typo_of_a_category_word_is_read_only_when_the_language_does_not_know_the_word(facets):
    parser = RequestParser(facets, find_title=find_title, known_words={"prime", "horse", "eastern"})
    assert parser.parse("a good thriler").want == [["Thriller"]]
    assert parser.parse("lookin for a comdey").want == [["Comedy"]]
    assert parser.parse("no horor please").avoid == ["Horror"]
    assert parser.parse("an eastern").want == [] and parser.parse("prime time").want == []
    assert parser.parse("a good thriler").readings and "typo" in parser.parse("a good thriler").readings[0]
    # Without a word list there is no typo reading.
    assert RequestParser(facets, find_title=find_title).parse("a good thriler").want == []
