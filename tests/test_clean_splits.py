"""Cleaning and leave-one-out splits: chronological order, what goes where, what is counted."""

from __future__ import annotations

from data.clean import clean, leave_one_out, natural_key
from data.records import RawDataset, RawInteraction, RawItem


def make_dataset(rows) -> RawDataset:
    items = {i: RawItem(i, f"Item {i}") for _, i, _ in rows}
    items["unused"] = RawItem("unused", "Never watched")
    return RawDataset("toy", items, [RawInteraction(u, i, t, 4.0) for u, i, t in rows])


ROWS = [  # user, item, timestamp: deliberately out of order, with a tie and a repeat
    ("u2", "a", 5), ("u1", "c", 30), ("u1", "a", 10), ("u1", "b", 20), ("u1", "d", 20),
    ("u1", "e", 40), ("u1", "a", 50), ("u2", "b", 6), ("u10", "c", 1),
]


def test_sequences_are_chronological_and_ties_keep_file_order():
    data = clean(make_dataset(ROWS))
    by_user = {s.user_id: s for s in data.sequences}
    assert by_user["u1"].item_ids == ["a", "b", "d", "c", "e"]     # b before d: same time, file order
    assert by_user["u1"].timestamps == sorted(by_user["u1"].timestamps)
    assert [s.user_id for s in data.sequences] == ["u1", "u2", "u10"]   # natural id order
    assert data.stats["repeated_user_item"] == 1                       # u1 watched a twice
    assert data.stats["items_without_interactions"] == 1
    assert data.stats["users_too_short_for_splits"] == 2


def test_leave_one_out_targets_and_histories():
    data = clean(make_dataset(ROWS))
    splits = leave_one_out(data)
    test = {r["user_id"]: r for r in splits["test"]}
    valid = {r["user_id"]: r for r in splits["valid"]}
    train = {r["user_id"]: r for r in splits["train"]}
    assert test["u1"]["target"] == "e" and test["u1"]["history"] == ["a", "b", "d", "c"]
    assert valid["u1"]["target"] == "c" and valid["u1"]["history"] == ["a", "b", "d"]
    assert train["u1"]["item_ids"] == ["a", "b", "d"]
    # Users too short for three splits stay in training only.
    assert set(test) == set(valid) == {"u1"}
    assert train["u2"]["item_ids"] == ["a", "b"] and train["u10"]["item_ids"] == ["c"]
    for row in splits["test"] + splits["valid"]:
        assert row["target"] not in row["history"]
        assert row["target_timestamp"] >= max(row["timestamps"])


def test_kcore_and_min_rating_are_counted():
    rows = [(f"u{u}", f"i{i}", u * 10 + i) for u in range(4) for i in range(3)] + [("u9", "i9", 1)]
    dataset = make_dataset(rows)
    dataset.interactions[0].rating = 1.0
    data = clean(dataset, kcore=3, min_rating=2.0)
    assert data.stats["below_min_rating"] == 1
    assert data.stats["removed_by_kcore"] == 1 + 2     # u9's single row, then u0 fell below 3
    assert {s.user_id for s in data.sequences} == {"u1", "u2", "u3"}


def test_cleaning_is_deterministic():
    first, second = clean(make_dataset(ROWS)), clean(make_dataset(ROWS))
    assert leave_one_out(first) == leave_one_out(second)
    assert [i.item_id for i in first.items] == [i.item_id for i in second.items]


def test_natural_key_orders_numbers_numerically():
    assert sorted(["10", "2", "1", "b", "a10", "a9"], key=natural_key) == ["1", "2", "10", "a9", "a10", "b"]
