import random

import pytest

from engine.sid import (
    ITEM_BEGIN,
    ITEM_END,
    ItemGate,
    SIDTrie,
    all_sid_token_strings,
    parse_sid,
    sid_string,
    sid_tokens,
)

LEVELS, K = 3, 8


# --------------------------------------------------------------------------- helpers

def random_catalog(n: int = 300, seed: int = 0, as_ints: bool = False) -> dict:
    """item -> token path, n unique random 3-level code tuples over a codebook of 8."""
    rng = random.Random(seed)
    codes = set()
    while len(codes) < n:
        codes.add(tuple(rng.randrange(K) for _ in range(LEVELS)))
    codes = sorted(codes, key=lambda c: rng.random())
    if as_ints:
        # Token ids as a tokenizer would give them: one block of K ids per level.
        return {f"item{i}": tuple(1000 + level * K + code for level, code in enumerate(c))
                for i, c in enumerate(codes)}
    return {i: tuple(sid_tokens(c)) for i, c in enumerate(codes)}


def reachable(cursor) -> set:
    """Every item a walk guided only by allowed() can end in (exhaustive DFS from the cursor)."""
    found = set()

    def walk(cur):
        tokens = cur.allowed()
        if not tokens:
            # A walk with nowhere to go must be a finished item, never a dead end.
            assert cur.done(), f"dead end at prefix {cur.prefix}"
            found.add(cur.item)
            return
        assert not cur.done()
        for token in tokens:
            child = cur.clone()
            assert child.accept(token)
            walk(child)

    walk(cursor)
    return found


# --------------------------------------------------------------------------- formatting / parsing

@pytest.mark.parametrize("codes", [(0,), (12, 200, 33), (1, 2, 3, 4), (255, 0, 7)])
def test_sid_round_trip(codes):
    assert parse_sid(sid_string(codes)) == codes
    assert "".join(sid_tokens(codes)) == sid_string(codes)


def test_sid_tokens_format():
    assert sid_tokens((12, 200, 33)) == ["<a_12>", "<b_200>", "<c_33>"]
    assert sid_string((1, 2, 3, 4)) == "<a_1><b_2><c_3><d_4>"
    with pytest.raises(ValueError):
        sid_tokens((1, 2, 3, 4, 5))


def test_parse_sid_accepts_markers_and_spaces():
    assert parse_sid(f"{ITEM_BEGIN}<a_12><b_200><c_33>{ITEM_END}") == (12, 200, 33)
    assert parse_sid(f"  {ITEM_BEGIN} <a_1> <b_2> <c_3> {ITEM_END} ") == (1, 2, 3)
    assert parse_sid("<a_5> <b_6>") == (5, 6)


@pytest.mark.parametrize("text", ["<a_1><c_2>", "<b_1>", "hello", "<a_1>x", "", "x<a_1>", "<a_1><a_2>",
                                  "<a_-1>", "<e_1>", f"{ITEM_BEGIN}{ITEM_END}", "<a_1><b_2>>"])
def test_parse_sid_rejects_malformed(text):
    with pytest.raises(ValueError):
        parse_sid(text)


def test_all_sid_token_strings():
    tokens = all_sid_token_strings(LEVELS, K)
    assert len(tokens) == LEVELS * K == len(set(tokens))
    assert tokens[0] == "<a_0>" and tokens[-1] == f"<c_{K - 1}>"
    # Every token a real SID uses is in the vocabulary.
    for path in random_catalog(50).values():
        assert set(path) <= set(tokens)
    assert len(set(all_sid_token_strings(4, 256))) == 4 * 256


# --------------------------------------------------------------------------- completeness

@pytest.mark.parametrize("as_ints", [False, True])
def test_dfs_over_allowed_reaches_exactly_the_catalog(as_ints):
    catalog = random_catalog(300, seed=1, as_ints=as_ints)
    trie = SIDTrie(catalog.items())
    assert len(trie) == len(catalog)
    assert reachable(trie.cursor()) == set(catalog)
    for item, path in catalog.items():
        assert item in trie and trie.path(item) == path


@pytest.mark.parametrize("as_ints", [False, True])
def test_random_walks_end_in_catalog_items(as_ints):
    catalog = random_catalog(300, seed=2, as_ints=as_ints)
    trie = SIDTrie(catalog.items())
    rng = random.Random(3)
    cursor = trie.cursor()
    ended = set()
    for _ in range(500):
        cursor.reset()
        steps = 0
        while cursor.allowed():
            assert not cursor.done()
            assert cursor.accept(rng.choice(cursor.allowed()))
            steps += 1
        assert cursor.done()
        assert cursor.item in catalog
        assert tuple(cursor.prefix) == catalog[cursor.item] and steps == LEVELS
        ended.add(cursor.item)
    assert len(ended) > 100  # the walks really explored the catalog


def test_walk_by_known_path_finds_item():
    catalog = random_catalog(100, seed=4)
    trie = SIDTrie(catalog.items())
    cursor = trie.cursor()
    for item, path in catalog.items():
        cursor.reset()
        for token in path:
            assert not cursor.done() and cursor.item is None
            assert token in cursor.allowed()
            assert cursor.accept(token)
        assert cursor.done() and cursor.item == item


def test_mixed_depth_paths():
    # Paths of different lengths (an extra level under one prefix only) are fine if none is a prefix.
    catalog = {"x": ("<a_0>", "<b_0>"), "y": ("<a_1>", "<b_0>", "<c_0>"), "z": ("<a_1>", "<b_0>", "<c_1>")}
    trie = SIDTrie(catalog.items())
    assert reachable(trie.cursor()) == {"x", "y", "z"}


# --------------------------------------------------------------------------- dead prefixes

def test_token_outside_allowed_kills_cursor():
    catalog = {"i0": ("<a_0>", "<b_0>"), "i1": ("<a_0>", "<b_1>"), "i2": ("<a_1>", "<b_0>")}
    trie = SIDTrie(catalog.items())
    cursor = trie.cursor()
    assert sorted(cursor.allowed()) == ["<a_0>", "<a_1>"]
    assert cursor.accept("<a_1>")
    assert cursor.allowed() == ["<b_0>"]
    # "<b_1>" exists at another prefix and in the vocabulary, but not under <a_1>.
    assert cursor.accept("<b_1>") is False
    assert cursor.allowed() == []
    assert cursor.done() is False and cursor.item is None
    # Once dead, even a token that would have been valid is refused.
    assert cursor.accept("<b_0>") is False
    assert cursor.allowed() == [] and not cursor.done()
    cursor.reset()
    assert not cursor.dead and cursor.prefix == []
    assert sorted(cursor.allowed()) == ["<a_0>", "<a_1>"]
    assert cursor.accept("<a_1>") and cursor.accept("<b_0>")
    assert cursor.done() and cursor.item == "i2"


def test_unknown_first_token_kills_cursor():
    trie = SIDTrie(random_catalog(20).items())
    cursor = trie.cursor()
    assert cursor.accept("hello") is False
    assert cursor.allowed() == [] and not cursor.done()
    assert cursor.accept("<b_0>") is False  # a level-2 token at the root


def test_leaf_allows_nothing_and_accepting_more_kills():
    catalog = {"i0": ("<a_0>", "<b_0>"), "i1": ("<a_0>", "<b_1>")}
    trie = SIDTrie(catalog.items())
    cursor = trie.cursor()
    assert cursor.accept("<a_0>") and cursor.accept("<b_1>")
    assert cursor.done() and cursor.item == "i1"
    assert cursor.allowed() == []
    assert cursor.accept("<c_0>") is False
    assert not cursor.done() and cursor.item is None


# --------------------------------------------------------------------------- exclusions

def test_excluding_items_removes_exactly_them():
    catalog = random_catalog(300, seed=5)
    trie = SIDTrie(catalog.items())
    rng = random.Random(6)
    excluded = set(rng.sample(sorted(catalog), 60))
    assert reachable(trie.cursor(exclude=excluded)) == set(catalog) - excluded
    # Same via exclude() on an existing cursor.
    cursor = trie.cursor()
    for item in excluded:
        cursor.exclude(item)
    assert reachable(cursor) == set(catalog) - excluded
    # Exclusions are per cursor: a fresh cursor still reaches everything.
    assert reachable(trie.cursor()) == set(catalog)


def test_excluded_item_cannot_be_accepted():
    catalog = {"i0": ("<a_0>", "<b_0>"), "i1": ("<a_0>", "<b_1>")}
    cursor = SIDTrie(catalog.items()).cursor(exclude=["i1"])
    assert cursor.accept("<a_0>")
    assert cursor.allowed() == ["<b_0>"]
    assert cursor.accept("<b_1>") is False
    assert cursor.allowed() == [] and not cursor.done()


def test_excluding_whole_prefix_removes_it_from_parent():
    catalog = random_catalog(300, seed=7)
    trie = SIDTrie(catalog.items())
    first = catalog[0][0]
    second = catalog[0][1]
    under_first = {i for i, p in catalog.items() if p[0] == first}
    under_second = {i for i, p in catalog.items() if p[:2] == (first, second)}
    assert len(under_second) >= 1 and len(under_first) > len(under_second)

    # Everything under (first, second): second disappears under first, first stays at the root.
    cursor = trie.cursor(exclude=under_second)
    assert first in cursor.allowed()
    assert cursor.accept(first)
    assert second not in cursor.allowed() and cursor.allowed()
    assert cursor.accept(second) is False

    # Everything under first: first disappears from the root, the other roots stay.
    cursor = trie.cursor(exclude=under_first)
    roots = trie.cursor().allowed()
    assert sorted(cursor.allowed()) == sorted(t for t in roots if t != first)
    assert reachable(cursor) == set(catalog) - under_first


def test_excluding_everything_allows_nothing():
    catalog = random_catalog(50, seed=8)
    trie = SIDTrie(catalog.items())
    cursor = trie.cursor()
    items = sorted(catalog)
    for item in items[:-1]:
        cursor.exclude(item)
    assert reachable(cursor) == {items[-1]}
    cursor.exclude(items[-1])
    assert cursor.allowed() == []
    assert not cursor.done()
    assert cursor.accept(catalog[items[-1]][0]) is False


def test_unknown_exclusions_are_ignored():
    catalog = random_catalog(40, seed=9)
    trie = SIDTrie(catalog.items())
    cursor = trie.cursor(exclude=["nope", 10_000, None, ("<a_0>",)])
    assert cursor.allowed() == trie.cursor().allowed()
    assert reachable(cursor) == set(catalog)


def test_excluding_twice_does_not_double_count():
    catalog = {"i0": ("<a_0>", "<b_0>"), "i1": ("<a_0>", "<b_1>"), "i2": ("<a_1>", "<b_0>")}
    trie = SIDTrie(catalog.items())
    cursor = trie.cursor(exclude=["i0", "i0"])
    cursor.exclude("i0")
    # <a_0> holds two items, one excluded (once, however often asked): i1 is still reachable.
    assert sorted(cursor.allowed()) == ["<a_0>", "<a_1>"]
    assert reachable(cursor) == {"i1", "i2"}
    assert cursor.accept("<a_0>") and cursor.allowed() == ["<b_1>"]


def test_clone_is_independent_position_but_shares_exclusions():
    catalog = {"i0": ("<a_0>", "<b_0>"), "i1": ("<a_0>", "<b_1>"),
               "i2": ("<a_1>", "<b_0>"), "i3": ("<a_1>", "<b_1>")}
    trie = SIDTrie(catalog.items())
    cursor = trie.cursor()
    assert cursor.accept("<a_0>")
    fork = cursor.clone()
    assert fork.prefix == ["<a_0>"] and fork.allowed() == cursor.allowed()

    # Moving the fork does not move the original.
    assert fork.accept("<b_1>") and fork.item == "i1"
    assert cursor.prefix == ["<a_0>"] and not cursor.done()
    assert sorted(cursor.allowed()) == ["<b_0>", "<b_1>"]

    # Killing the fork does not kill the original, and vice versa.
    other = cursor.clone()
    assert other.accept("<b_9>") is False
    assert cursor.allowed() and not cursor.dead
    cursor.reset()
    assert fork.item == "i1" and other.dead

    # Exclusions are shared both ways (they belong to the request, not to one beam).
    fork2 = cursor.clone()
    fork2.exclude("i0")
    assert cursor.accept("<a_0>") and cursor.allowed() == ["<b_1>"]
    cursor.exclude("i3")
    assert fork2.accept("<a_1>") and fork2.allowed() == ["<b_0>"]


# --------------------------------------------------------------------------- construction errors

def test_duplicate_item_rejected():
    with pytest.raises(ValueError):
        SIDTrie([("x", ("<a_0>", "<b_0>")), ("x", ("<a_1>", "<b_0>"))])


def test_shared_path_rejected():
    with pytest.raises(ValueError):
        SIDTrie([("x", ("<a_0>", "<b_0>")), ("y", ("<a_0>", "<b_0>"))])


@pytest.mark.parametrize("order", [0, 1])
def test_prefix_path_rejected(order):
    paths = [("short", ("<a_0>", "<b_0>")), ("long", ("<a_0>", "<b_0>", "<c_0>"))]
    if order:
        paths.reverse()
    with pytest.raises(ValueError):
        SIDTrie(paths)


def test_empty_path_rejected():
    with pytest.raises(ValueError):
        SIDTrie([("x", ())])
    with pytest.raises(ValueError):
        SIDTrie([("y", ("<a_0>",)), ("x", [])])


# --------------------------------------------------------------------------- lookup / stats

def test_lookup():
    catalog = random_catalog(200, seed=10)
    trie = SIDTrie(catalog.items())
    for item, path in catalog.items():
        assert trie.lookup(path) == item
        assert trie.lookup(list(path)) == item
        assert trie.lookup(path[:2]) is None
        assert trie.lookup(path[:1]) is None
    assert trie.lookup(()) is None
    assert trie.lookup(("<a_99>", "<b_0>", "<c_0>")) is None
    assert trie.lookup(("<a_0>", "<b_0>", "<c_0>", "<d_0>")) is None
    missing = next(tuple(sid_tokens((a, b, c))) for a in range(K) for b in range(K) for c in range(K)
                   if tuple(sid_tokens((a, b, c))) not in set(catalog.values()))
    assert trie.lookup(missing) is None


def test_depth_stats_consistent_with_data():
    catalog = random_catalog(200, seed=11)
    trie = SIDTrie(catalog.items())
    stats = trie.depth_stats()
    assert [s["depth"] for s in stats] == list(range(LEVELS))
    prefixes = [{p[:d] for p in catalog.values()} for d in range(LEVELS + 1)]
    for d, s in enumerate(stats):
        assert s["nodes"] == len(prefixes[d])
        # Every node above the leaves has children; branching sums to the next level's nodes.
        assert s["mean_branching"] * s["nodes"] == pytest.approx(len(prefixes[d + 1]))
        children = {}
        for p in prefixes[d + 1]:
            children[p[:d]] = children.get(p[:d], 0) + 1
        assert s["max_branching"] == max(children.values())
    assert stats[0]["nodes"] == 1
    assert stats[-1]["mean_branching"] * stats[-1]["nodes"] == pytest.approx(len(catalog))


def test_depth_stats_small_exact():
    trie = SIDTrie([("x", (0, 0)), ("y", (0, 1)), ("z", (1, 0))])
    assert trie.depth_stats() == [
        {"depth": 0, "nodes": 1, "mean_branching": 2.0, "max_branching": 2},
        {"depth": 1, "nodes": 2, "mean_branching": 1.5, "max_branching": 2},
    ]


# -- filters: the items a request allows -------------------------------------------------------
def _random_trie(seed: int, items: int = 400):
    import random

    rng = random.Random(seed)
    paths = {}
    while len(paths) < items:
        path = (rng.randrange(8), rng.randrange(8), rng.randrange(8))
        paths.setdefault(path, f"i{len(paths)}")
    return SIDTrie((item, path) for path, item in paths.items()), rng


def _walk_all(cursor):
    """Every item a cursor can end in (exhaustive walk over allowed tokens)."""
    found, stack = set(), [cursor]
    while stack:
        c = stack.pop()
        if c.done():
            found.add(c.item)
            continue
        for token in c.allowed():
            child = c.clone()
            assert child.accept(token)
            stack.append(child)
    return found


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_filtered_cursor_ends_only_in_allowed_unexcluded_items(seed):
    import numpy as np

    trie, rng = _random_trie(seed)
    items = trie.items
    mask = np.array([rng.random() < 0.3 for _ in items])
    allowed = {i for i, m in zip(items, mask) if m}
    excluded = set(rng.sample(items, 60))
    restrict = trie.restrict(trie.node_paths(items), mask)
    assert restrict.size == len(allowed)
    cursor = trie.cursor(exclude=excluded, restrict=restrict)
    assert _walk_all(cursor) == allowed - excluded
    assert cursor.remaining() == len(allowed - excluded)
    # The same filter built from an item list, and from a shuffled item order.
    order = list(items)
    rng.shuffle(order)
    shuffled = trie.restrict(trie.node_paths(order), np.array([i in allowed for i in order]))
    assert shuffled.counts == restrict.counts
    # restrict_to keeps sparse counts (only the nodes on the items' paths): the same filter.
    listed = trie.restrict_to(allowed)
    assert [listed.counts[n] for n in range(trie.num_nodes)] == restrict.counts
    assert listed.size == restrict.size and _walk_all(trie.cursor(exclude=excluded, restrict=listed)) == allowed - excluded
    assert trie.restrict_to([*allowed, "no such item"]).size == len(allowed)   # unknown items are ignored


def test_an_empty_filter_allows_nothing_and_never_falls_back():
    import numpy as np

    trie, _ = _random_trie(3)
    nothing = trie.restrict(trie.node_paths(trie.items), np.zeros(len(trie), dtype=bool))
    cursor = trie.cursor(restrict=nothing)
    assert cursor.allowed() == [] and cursor.remaining() == 0
    gate = ItemGate(trie, "<begin>", "<end>", restrict=nothing)
    gate.advance("<begin>")
    assert gate.allowed() == ["<end>"]          # only closing: counted as an error, not a free item
