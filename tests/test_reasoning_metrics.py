"""Reasoning metrics on hand-built traces: grounding, faithfulness, level-3 accuracy, interests."""

from __future__ import annotations

from training.reasoning_metrics import ItemInfo, ReasoningScorer

ITEMS = {
    "1": ItemInfo("The Rock", ["Action", "Thriller"], 1996),
    "2": ItemInfo("The Game", ["Mystery", "Thriller"], 1997),
    "3": ItemInfo("Liar Liar", ["Comedy"], 1997),
    "4": ItemInfo("Psycho", ["Horror", "Thriller"], 1960),
    "5": ItemInfo("Psycho", ["Horror"], 1998),          # a remake: same title, another item
    "6": ItemInfo("Mr. Holland's Opus", ["Drama"], 1995),
}
SIDS = {"1": "<a_1><b_1><c_1>", "2": "<a_1><b_2><c_1>", "3": "<a_2><b_1><c_1>", "4": "<a_3><b_1><c_1>",
        "5": "<a_3><b_2><c_1>", "6": "<a_4><b_1><c_1>"}


def scorer() -> ReasoningScorer:
    return ReasoningScorer(ITEMS, SIDS)


def test_citations_from_titles_and_spans():
    text = ("Interests: (1) Action, Thriller, 1990s: The Rock, The Game. (2) Drama, 1990s: Mr. Holland's Opus, "
            "<|item_begin|><a_2><b_1><c_1><|item_end|>. Set aside: Psycho.")
    groups = scorer().citation_groups(text)
    assert groups == [["3"], ["1"], ["2"], ["6"], ["4", "5"]]
    # Interest names are not read as titles ("Drama" is nobody's title here, but it is never looked at).
    assert scorer().interests(text) == ["Action, Thriller, 1990s", "Drama, 1990s"]


def test_grounding_faithfulness_and_accuracy():
    levels = [
        {"derivation": "Interests: (1) Action, 1990s: The Rock, The Rock. (2) Comedy, 1990s: Liar Liar.",
         "evolution": "(1) long-term.", "recommendation": "Serve (1) Action, 1990s. Next item: Thriller, 1990s."},
        {"derivation": "Interests: (1) Horror: Psycho.", "evolution": "",
         "recommendation": "You asked for Horror: serve that. Next item: Horror, 1960s."},
    ]
    histories = [["1", "2"], ["5"]]                       # user 1 never saw Liar Liar; user 2 saw the remake
    ranked = [["2", "3", "4", "6"], ["4", "5", "3", "1"]]
    targets = ["4", "3"]
    result = scorer().score(levels, histories, ranked, targets)
    assert result["citations_per_trace"] == 2.0            # (3 + 1) / 2
    assert result["ungrounded_citations"] == 1 and result["traces_with_ungrounded"] == 1
    assert result["repeated_citations_per_trace"] == 0.5   # The Rock twice in the first trace
    assert result["distinct_interests"] == 1.5
    # Faithfulness: trace 1 states Thriller/1990s -> 2 (Thriller), 3 (1990s), 4 (Thriller), 6 (1990s) = 1.0;
    # trace 2 states Horror/1960s -> 4 and 5 carry it, 3 and 1 do not = 0.5.
    assert result["faithfulness"] == 0.75
    assert result["faithfulness_categories"] == 0.5       # Thriller: 2 of 4; Horror: 2 of 4
    # Level 3 vs the true next item: Psycho (Thriller, 1960) for trace 1; Liar Liar (Comedy, 1997) for trace 2.
    assert result["level3_category_accuracy"] == 0.5 and result["level3_decade_accuracy"] == 0.0


def test_a_level_three_without_attributes_is_not_counted_as_faithful():
    result = scorer().score([{"derivation": "", "evolution": "", "recommendation": "No clear interest."}],
                            [[]], [["1"]], [None])
    assert result["faithfulness"] is None and result["stated_share"] == 0.0 and result["citations_per_trace"] == 0
