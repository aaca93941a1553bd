"""Everyday requests: numbers read right, titles named anywhere, phrases read by meaning with the
real sentence encoder over a real built catalog, and a clarifying question whose answer is
understood through the real engine."""

from __future__ import annotations

import pytest

from engine.constraints import Constraints, Facets
from engine.events import ItemsEvent, NoticeEvent, ReplyDelta, TraceEvent
from engine.request import RequestParser, apply
from tests.test_openai_api import _narrow_year
from tests.test_request import ITEMS, Found, find_title


@pytest.fixture(scope="module")
def parser() -> RequestParser:
    facets = Facets([i for i, _, _ in ITEMS], [y for _, y, _ in ITEMS], [c for _, _, c in ITEMS])
    return RequestParser(facets, find_title=find_title)


@pytest.mark.parametrize("text, low, high", [
    ("nothing older than 1990", 1990, None),
    ("no movies before 1980 please", 1980, None),
    ("not before 1980", 1980, None),
    ("no later than 1975", None, 1975),
    ("nothing after 1985", None, 1985),
    ("older than 1990", None, 1989),          # a plain comparison keeps its own side
    ("nothing from before the 80s", 1980, None),
])
def test_negated_year_comparisons_bound_the_other_side(parser, text, low, high):
    request = parser.parse(text)
    assert (request.year_min, request.year_max) == (low, high)


def test_the_last_few_years_are_sized_by_the_catalog(parser):
    last = parser.last_year
    assert parser.parse("something from the last few years").year_min == last - 4
    assert parser.parse("made in the past 2 years").year_min == last - 1
    assert parser.parse("from the last decade").year_min == last - 9


@pytest.mark.parametrize("text", ["a cartoon I can watch with my 6 year old", "something for a 10-year-old",
                                  "top 5 comedies", "give me 3 movies", "a comedy under 2 hours",
                                  "something about 90 minutes long"])
def test_ages_counts_and_durations_are_not_years(parser, text):
    request = parser.parse(text)
    assert not request.years_set, (text, request.year_min, request.year_max)


def test_a_facet_the_catalog_lacks_is_said_to_be_unknown(parser):
    request = parser.parse("a comedy under 2 hours, in French")
    assert set(request.unknown) == {"length", "language"}
    assert request.want == [["Comedy"]]
    assert any("running time" in n for n in request.notes) and any("language" in n for n in request.notes)
    # A catalog that has the facet is not told it lacks it.
    facets = Facets([i for i, _, _ in ITEMS], [y for _, y, _ in ITEMS], [c for _, _, c in ITEMS])
    knowing = RequestParser(facets, find_title=find_title, known_facets=["language"])
    assert knowing.parse("something in French").unknown == []


def test_an_age_of_a_child_leans_to_childrens_items_softly(parser):
    request = parser.parse("something for my 7 year old")
    assert request.want == [] and "Children's" in request.prefer


@pytest.mark.parametrize("text, liked, disliked", [
    ("I loved Alien, more of that", "4", None),
    ("i really liked toy story", "7", None),
    ("not another Toy Story", None, "7"),
    ("I hated Alien", None, "4"),
])
def test_titles_named_anywhere_are_liked_or_turned_down(parser, text, liked, disliked):
    request = parser.parse(text)
    assert request.like_item == liked
    assert request.dislike_items == ([disliked] if disliked else [])
    if disliked:
        assert disliked in apply(Constraints(), request).turned_down


def test_a_comparative_reads_the_word_it_compares():
    facets = Facets([i for i, _, _ in ITEMS], [y for _, y, _ in ITEMS], [c for _, _, c in ITEMS])
    parser = RequestParser(facets, find_title=find_title)
    assert parser.parse("something scarier").want == [["Horror"]]
    assert parser.parse("funnier please").want == [["Comedy"]]
    # "older" and "more recent" against the years of the last answer.
    older = parser.parse("older ones", last_years=[1994, 1995, 1997])
    assert (older.year_min, older.year_max) == (None, 1994)
    newer = parser.parse("something more recent", last_years=[1960, 1965, 1970])
    assert (newer.year_min, newer.year_max) == (1966, None)


def test_a_title_two_items_share_asks_which_one():
    facets = Facets([i for i, _, _ in ITEMS], [y for _, y, _ in ITEMS], [c for _, _, c in ITEMS])
    twins = [Found("4", "Alien", ["Horror", "Sci-Fi"]), Found("5", "Alien", ["Action", "Sci-Fi"])]
    for found, year in zip(twins, (1979, 1986)):
        found.year = year
    parser = RequestParser(facets, find_title=find_title, same_title=lambda title: twins)
    request = parser.parse("I loved Alien")
    assert request.question and "1979" in request.question and "1986" in request.question
    assert request.like_item is None
    from engine.understanding import apply_answer, resolve_answer

    pending = {"question": request.question, "options": request.options}
    chosen = resolve_answer(pending, "the 1986 one")
    assert chosen["item_id"] == "5"
    assert apply_answer(Constraints(pending=pending), chosen).like_item == "5"
    assert resolve_answer(pending, "actually show me westerns from the fifties instead, thanks a lot") is None
    # A place in the options, said the ways "more like the second one" reads a list.
    assert resolve_answer(pending, "the 2nd")["item_id"] == "5"
    assert resolve_answer(pending, "the other one")["item_id"] == "5"
    assert resolve_answer(pending, "top one")["item_id"] == "4"
    assert resolve_answer(pending, "last")["item_id"] == "5"
    assert resolve_answer(pending, "the third") is None          # there are two: a new request


def test_a_request_that_contradicts_itself_asks(parser):
    request = parser.parse("a horror movie but nothing scary")
    assert request.question and "Horror" in request.question


# -- meaning, with the real encoder over the themed catalog --------------------------------------
@pytest.fixture(scope="module")
def reading(built_dataset):
    from data.catalog import Catalog
    from engine.understanding import catalog_parser

    catalog = Catalog(built_dataset)
    facets = Facets(*catalog.attribute_table())
    return catalog_parser(catalog, facets), facets


def test_a_phrase_outside_the_word_table_is_read_by_meaning(reading):
    parser, _ = reading
    request = parser.parse("show me something with aliens or spaceships")
    assert "Sci-Fi" in [c for g in request.want for c in g] + request.prefer
    assert request.readings and "Sci-Fi" in " ".join(request.readings)


def test_words_with_no_meaning_for_the_catalog_set_nothing(reading):
    parser, _ = reading
    request = parser.parse("hey, what should I watch tonight?")
    constraints = apply(Constraints(), request)
    assert not constraints.is_hard() and not constraints.prefer


def test_a_content_wish_finds_items_through_the_index(reading):
    parser, facets = reading
    request = parser.parse("movies about a friendly dragon")
    assert request.content_items and "8" in request.content_items      # Dragon Friends
    constraints = apply(Constraints(), request)
    if request.content_hard:
        assert set(facets.allowed_items(constraints)) == set(constraints.among)
    else:
        assert "8" in constraints.boost and not constraints.is_hard()


def test_soft_leanings_reorder_and_never_exclude(reading):
    from engine.decoding import RankedItem
    from engine.understanding import soft_rerank

    _, facets = reading
    items = [RankedItem(i, -float(n), ()) for n, i in enumerate(["20", "21", "13", "14"])]   # comedies, then horror
    leaning = Constraints(prefer=["Horror"])
    ranked = soft_rerank(items, leaning, facets, weight=5.0)
    assert [r.item_id for r in ranked][:2] == ["13", "14"] and {r.item_id for r in ranked} == {"20", "21", "13", "14"}
    assert soft_rerank(items, Constraints(), facets) == items


# -- the question through the engine --------------------------------------------------------------
def _run(engine, session_id, text):
    return list(engine.turn(session_id, text, thinking=False, k=4))


def test_the_engine_asks_when_few_items_are_left_and_understands_the_answer(engine):
    year = _narrow_year(engine)          # fewer than k items that year, more a decade around it
    session = engine.start_session()
    events = _run(engine, session.id, f"something from {year}")
    assert not any(isinstance(e, ItemsEvent) for e in events)
    question = "".join(e.text for e in events if isinstance(e, ReplyDelta))
    assert "widen" in question and str(year) in question
    trace = next(e.trace for e in events if isinstance(e, TraceEvent))
    assert trace.request.question == question
    events = _run(engine, session.id, "widen it please")
    items = next(e.items for e in events if isinstance(e, ItemsEvent))
    assert any(abs(i.year - year) > 0 for i in items)
    assert all(abs(i.year - year) <= 10 for i in items)
    assert any(isinstance(e, NoticeEvent) and "answer" in e.text for e in events)
    # The answer is kept: the session's constraints hold the widened range, no question pending.
    assert engine.sessions.get(session.id).constraints.pending is None


def test_the_engine_shows_the_few_when_that_is_the_answer(engine):
    year = _narrow_year(engine)
    session = engine.start_session()
    _run(engine, session.id, f"something from {year}")
    events = _run(engine, session.id, "show those")
    items = next(e.items for e in events if isinstance(e, ItemsEvent))
    assert items and all(i.year == year for i in items)


def test_nothing_left_offers_the_wider_range_and_yes_takes_it():
    from engine.request import Request
    from engine.understanding import apply_answer, ask_first, resolve_answer

    asked = Constraints(want=[["Western"]], year_min=1950, year_max=1959)
    request = Request(text="a 50s western", want=[["Western"]], year_min=1950, year_max=1959, years_set=True)
    count = lambda c: 4 if c.year_min == 1940 else 0          # noqa: E731 - the wider range holds 4
    question = ask_first(request, asked, 0, 10, count)
    assert "No item" in question["question"] and "1940 to 1969" in question["question"]
    option = resolve_answer(question, "yes")
    assert (apply_answer(asked, option).year_min, apply_answer(asked, option).year_max) == (1940, 1969)
    assert ask_first(request, asked, 0, 10, lambda c: 0) is None          # nothing wider either: no question
