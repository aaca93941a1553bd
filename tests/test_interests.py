"""Levels 1-2 read from the data (engine/interests.py): the trend definitions, the recount that
checks a trace, naming by information, short histories, and level 3's lead under a request."""

from __future__ import annotations

import numpy as np
import pytest

from engine.constraints import Constraints
from engine.interests import (Interest, InterestReader, ItemFacts, check_trends, contradicts, next_categories,
                              request_terms, serving_lead, trend_of)


@pytest.mark.parametrize("positions, n, expected", [
    ([0, 1, 2, 3], 30, ("fading", 0, 10)),                  # nothing in the latest third
    ([25, 27, 29], 30, ("new", 3, 10)),                     # only in the latest third
    ([0, 2, 4, 22, 25], 30, ("returning", 2, 10)),          # early and latest, none in the middle
    ([3, 15, 21, 23, 25, 27], 30, ("growing", 4, 10)),      # rate 0.4 latest against 0.1 before
    ([1, 4, 7, 11, 14, 17, 25], 30, ("cooling", 1, 10)),    # rate 0.1 latest against 0.3 before
    ([2, 8, 14, 19, 24, 28], 30, ("steady", 2, 10)),        # rate 0.2 latest against 0.2 before
    ([0, 28], 30, ("growing", 1, 10)),                     # two items are not a return: no empty middle claim
])
def test_trend_definitions(positions, n, expected):
    assert trend_of(positions, n) == expected


def _catalog():
    rng = np.random.default_rng(3)
    themes = {"space": (("Sci-Fi",), 1990), "romance": (("Romance",), 1995), "noir": (("Crime",), 1950)}
    directions = np.linalg.qr(rng.normal(size=(64, 3)))[0].T
    items, vectors = {}, []
    for t, (theme, (categories, year)) in enumerate(themes.items()):
        for j in range(12):
            # Two thirds of this catalog are from the 1990s; the noir films are the only 1950s ones.
            items[f"{theme}{j}"] = ItemFacts(f"{theme}{j}", f"{theme.title()} {j}", year + j % 5,
                                             categories + (("Drama",) if j % 2 else ()), len(vectors))
            vectors.append(directions[t] + rng.normal(scale=0.05, size=64))
    return items, np.asarray(vectors, dtype=np.float32)


@pytest.fixture(scope="module")
def reader():
    items, vectors = _catalog()
    return InterestReader(items, vectors)


def test_an_era_is_named_only_where_it_tells_something(reader):
    history = [f"space{j}" for j in range(8)] + [f"noir{j}" for j in range(8)]
    reading = reader.read(history)
    names = {it.categories[0]: it for it in reading.interests}
    assert names["Crime"].era == "1950s"          # a twelfth of the catalog: telling
    assert names["Sci-Fi"].era == ""              # the 1990s hold two thirds of it: less than Sci-Fi tells
    assert "Drama" not in names                   # half of every theme: sets nothing apart


def test_a_trace_is_recounted_and_a_false_statement_caught(reader):
    history = [f"space{j}" for j in range(10)] + [f"romance{j}" for j in range(6)] + [f"space{j}" for j in (10, 11)]
    reading = reader.read(history)
    assert check_trends(reading.derivation, reading.evolution, history, reader.items) == (2, 2)
    number, romance = next((i + 1, it) for i, it in enumerate(reading.interests) if "Romance" in it.categories)
    assert romance.trend == "growing"      # 4 of its 6 in the latest 6 of 18, against 2 in the 12 before
    wrong = reading.evolution.replace(f"({number}) growing", f"({number}) fading")
    assert wrong != reading.evolution
    assert check_trends(reading.derivation, wrong, history, reader.items) == (2, 1)
    # A trend said of an interest level 1 never named is checked and false.
    assert check_trends("From 3 items: no clear interest.", "(1) steady, 1 of its 3 items in the latest 1.",
                        history, reader.items) == (1, 0)


def test_interests_read_the_whole_history_not_only_the_window(reader):
    old = [f"noir{j}" for j in range(10)]
    recent = [f"space{j}" for j in range(12)] + [f"romance{j}" for j in range(12)]
    reading = reader.read(old + recent)
    noir = next(it for it in reading.interests if "Crime" in it.categories)
    assert noir.trend == "fading" and all(reader.items[i].categories[0] == "Crime" for i in noir.evidence_ids)
    assert "(1)" in reading.derivation and reading.size == 34


@pytest.mark.parametrize("history", [["space1"], ["space1", "space4"], ["space1", "romance2"]])
def test_a_short_history_is_said_plainly(reader, history):
    reading = reader.read(history)
    count = len(history)
    assert reading.derivation.startswith(f"Only {count} item{'s' * (count > 1)} so far")
    assert reading.evolution == f"Too few items to follow a trend: {count} so far."
    for it in reading.interests:      # any interest named is carried by every item shown
        assert all(set(it.categories) <= set(reader.items[i].categories) for i in history)
    if history == ["space1", "romance2"]:
        assert reading.interests == [] and "no genre in common" in reading.derivation


def _interest(name, categories, decades=()):
    return Interest(name, categories, "", [0, 1], [], "steady", 1, 1, "", 0.5, decades)


def test_level_three_serves_what_fits_the_request_or_says_none_does():
    interests = [_interest("Thriller", ("Thriller",), (1990,)), _interest("Comedy", ("Comedy",), (1990,))]
    wanted, avoid, decades, structured = request_terms(Constraints(want=[["Comedy"]], year_min=1990, year_max=1999))
    served, text = serving_lead("You asked for Comedy from the 1990s", interests, [0, 1], wanted, avoid, decades,
                                structured)
    assert served == 1 and text.endswith("serve it through (2) Comedy.")
    assert not contradicts(interests[served], wanted, avoid)
    assert contradicts(interests[0], wanted, avoid)          # what the old trace did
    served, text = serving_lead("You asked for Western", interests, [0, 1], {"Western"}, set(), set(), True)
    assert served is None and text.endswith("none of the interests fits, so serve the request alone.")
    terms = request_terms(Constraints(avoid=["Thriller"]))
    assert terms == (set(), {"Thriller"}, set(), False)     # only an avoidance: keep to an allowed interest
    served, text = serving_lead("You asked for no Thriller", interests, [0, 1], *terms)
    assert served == 1 and text.endswith("serve (2) Comedy.")


def test_shorter_forms_say_less_and_stay_true(reader):
    """For a budget that cannot hold the whole reading: each shorter form is shorter, still recounts
    true, and with ``first`` (the interest a request is served through) keeps that one to the end."""
    history = [f"space{j}" for j in range(12)] + [f"romance{j}" for j in range(8)] + [f"noir{j}" for j in range(4)]
    whole = reader.read(history)
    assert len(whole.interests) >= 2
    forms = list(reader.shorter(whole))
    lengths = [len(whole.derivation + whole.evolution)] + [len(f.derivation + f.evolution) for f in forms]
    assert lengths == sorted(lengths, reverse=True) and lengths[-1] < lengths[0]
    for form in forms:
        assert check_trends(form.derivation, form.evolution, history, reader.items)[1] == len(form.interests)
    assert len(forms[-1].interests) == 1 and forms[-1].interests[0] is whole.interests[0]   # the strongest
    weakest = len(whole.interests) - 1
    kept = list(reader.shorter(whole, first=weakest))[-1]
    assert kept.interests == [whole.interests[weakest]]
    assert kept.derivation.startswith(f"From {len(history)} items: (1) {whole.interests[weakest].name}:")


def test_the_next_category_weighs_the_window_and_where_its_items_led():
    """Level 3's predicted category: the window's shares alone without transitions; with them, where
    the latest items led other users can outweigh the window (and seen items cast no vote)."""
    from engine.interests import Transitions

    items, vectors = _catalog()
    history = ["noir0", "space0", "space2", "noir2"]          # window: Crime 2/4, Sci-Fi 2/4, Drama 0
    alone = InterestReader(items, vectors)
    assert next_categories(alone.items, alone.transitions, history)[:2] == ["Crime", "Sci-Fi"]       # ties: the more recent first
    # Everyone else went from noir2 and space2 to romance films (odd ones carry Drama too).
    led = Transitions().fit([["noir2", "romance1"], ["space2", "romance3"], ["noir2", "romance5"],
                             ["noir2", "space0"]])                          # space0 is seen: no vote
    reader = InterestReader(items, vectors, transitions=led)
    # Votes: romance1 1 + romance5 1 (after noir2, lag 1) + romance3 0.5 (after space2, lag 2), all
    # Romance and Drama: each gets 1.0 beside the window's 0.5 for Crime and Sci-Fi.
    assert next_categories(reader.items, reader.transitions, history) == ["Romance", "Drama", "Crime", "Sci-Fi"]
    # A window of one: Crime 1.0 ties with where the items led, and the window's comes first.
    assert next_categories(reader.items, reader.transitions, history, window=1) == ["Crime", "Romance", "Drama"]
