"""Amazon (2018, 2023) and generic loaders on tiny fixture files built in tmp_path."""

from __future__ import annotations

import gzip
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from data.loaders.amazon import load_amazon
from data.loaders.generic import load_generic, parse_timestamp
from data.records import DataFormatError


def write_lines(path: Path, lines: list[str]) -> Path:
    text = "\n".join(lines) + "\n"
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def jsonl(path: Path, rows: list) -> Path:
    return write_lines(path, [row if isinstance(row, str) else json.dumps(row) for row in rows])


META_2018 = [
    {"asin": "A1", "title": "<b>Great</b>   Movie &amp; Co", "brand": "by\n  Acme",
     "category": ["Movies & TV", " <span>Drama</span> ", "", "Drama"],
     "description": ["<p>First part.</p>", "Second   part."], "price": "$12.99", "date": "June 5, 2014",
     "main_cat": "Movies & TV"},
    {"asin": "A2", "title": "Plain", "description": "x" * 3000},
]
REVIEWS_2018 = [
    {"reviewerID": "U1", "asin": "A1", "unixReviewTime": 1400000000, "overall": 5.0},
    {"reviewerID": "U2", "asin": "A2", "unixReviewTime": 1400000500},
]

META_2023 = [
    {"parent_asin": "P1", "title": "Widget <i>Pro</i>", "store": "WidgetCo", "main_category": "Tools",
     "categories": ["Hand Tools", "Wrenches"], "description": ["A <br/>widget."], "price": 9.5,
     "details": {"Date First Available": "March 11, 2019", "Color": "red"}},
    {"parent_asin": "P2", "title": "Gadget", "main_category": "Tools", "categories": ["Tools", "Gadgets"],
     "price": None, "details": {}},
]
REVIEWS_2023 = [
    {"user_id": "U1", "asin": "CHILD-1", "parent_asin": "P1", "timestamp": 1588615855070, "rating": 4.0},
    {"user_id": "U2", "asin": "P2", "timestamp": 1600000000000, "rating": 3},
]


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_amazon_2018_items_and_reviews(tmp_path, suffix):
    reviews = jsonl(tmp_path / f"reviews.json{suffix}", REVIEWS_2018)
    meta = jsonl(tmp_path / f"meta.json{suffix}", META_2018)
    data = load_amazon(reviews, meta, name="beauty")

    assert data.name == "beauty"
    assert data.source == {"reviews": str(reviews), "meta": str(meta), "format": "amazon-2018"}
    item = data.items["A1"]
    assert item.title == "Great Movie & Co"
    assert item.brand == "Acme"
    assert item.categories == ["Movies & TV", "Drama"]
    assert item.description == "First part. Second part."
    assert item.year == 2014
    assert item.extra == {"price": "$12.99", "main_category": "Movies & TV"}
    assert len(data.items["A2"].description) == 1000
    assert [(i.user_id, i.item_id, i.timestamp, i.rating) for i in data.interactions] == [
        ("U1", "A1", 1400000000.0, 5.0), ("U2", "A2", 1400000500.0, None)]
    assert data.report.total_rejected == 0


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_amazon_2023_parent_asin_and_milliseconds(tmp_path, suffix):
    reviews = jsonl(tmp_path / f"Tools.jsonl{suffix}", REVIEWS_2023)
    meta = jsonl(tmp_path / f"meta_Tools.jsonl{suffix}", META_2023)
    data = load_amazon(reviews, meta)

    assert data.source["format"] == "amazon-2023"
    widget = data.items["P1"]
    assert widget.title == "Widget Pro"
    assert widget.brand == "WidgetCo"
    assert widget.categories == ["Tools", "Hand Tools", "Wrenches"]
    assert widget.description == "A widget."
    assert widget.year == 2019
    assert widget.extra == {"price": "9.5", "store": "WidgetCo", "main_category": "Tools"}
    # main_category already in the list is not repeated; a null price is left out.
    assert data.items["P2"].categories == ["Tools", "Gadgets"]
    assert "price" not in data.items["P2"].extra
    first, second = data.interactions
    assert (first.item_id, first.timestamp, first.rating) == ("P1", 1588615855.07, 4.0)
    assert (second.item_id, second.timestamp) == ("P2", 1600000000.0)  # asin used without parent_asin


def test_amazon_malformed_lines_are_counted_and_good_rows_kept(tmp_path):
    meta = jsonl(tmp_path / "meta.jsonl", META_2023 + [
        "{not json",
        {"title": "no id", "main_category": "Tools"},
        {"parent_asin": "P1", "title": "again"},
        {"parent_asin": "P3", "title": "  <b> </b> "},
        "",
    ])
    reviews = jsonl(tmp_path / "reviews.jsonl", REVIEWS_2023 + [
        "[1, 2]",
        {"asin": "P1", "parent_asin": "P1", "timestamp": 1, "rating": 1},
        {"user_id": "U3", "parent_asin": "P1", "timestamp": "soon", "rating": 1},
        {"user_id": "U3", "parent_asin": "P1", "timestamp": 1600000000000, "rating": "great"},
        {"user_id": "U3", "parent_asin": "P3", "timestamp": 1600000000000, "rating": 2},
        {"user_id": "U4", "parent_asin": "P2", "timestamp": 1600000000000},
    ])
    data = load_amazon(reviews, meta)
    report = data.report

    assert sorted(data.items) == ["P1", "P2"]
    assert data.items["P1"].title == "Widget Pro"  # the first row wins over the duplicate
    assert [(i.user_id, i.rating) for i in data.interactions] == [("U1", 4.0), ("U2", 3.0), ("U4", None)]
    assert report.rows_read == {"meta.jsonl": 6, "reviews.jsonl": 8}
    assert report.rejected == {
        "meta.jsonl: invalid JSON": 1,
        "meta.jsonl: missing field 'parent_asin'": 1,
        "meta.jsonl: duplicate item id": 1,
        "meta.jsonl: empty title": 1,
        "reviews.jsonl: invalid JSON": 1,
        "reviews.jsonl: missing field 'user_id'": 1,
        "reviews.jsonl: bad timestamp": 1,
        "reviews.jsonl: bad rating": 1,
        "reviews.jsonl: unknown item id": 1,
    }
    assert report.examples["meta.jsonl: invalid JSON"] == ["line 3"]
    assert report.examples["reviews.jsonl: unknown item id"] == ["line 7"]


def test_amazon_python_literal_meta_is_a_note_not_a_rejection(tmp_path):
    meta = write_lines(tmp_path / "meta.json", [
        "{'asin': 'A1', 'title': 'Old style', 'categories': [['Books', 'Fiction'], ['Books', 'Classics']]}",
        json.dumps({"asin": "A2", "title": "New style"}),
    ])
    reviews = jsonl(tmp_path / "reviews.json", [
        {"reviewerID": "U1", "asin": "A1", "unixReviewTime": 1000, "overall": 2}])
    data = load_amazon(reviews, meta)

    assert data.items["A1"].categories == ["Books", "Fiction", "Classics"]
    assert data.report.total_rejected == 0
    assert len(data.report.notes) == 1 and "meta.json: 1 lines" in data.report.notes[0]
    assert data.interactions[0].timestamp == 1000.0


@pytest.mark.parametrize("which", ["reviews", "meta"])
def test_amazon_first_row_without_id_is_a_format_error(tmp_path, which):
    reviews = jsonl(tmp_path / "reviews.jsonl", REVIEWS_2023)
    meta = jsonl(tmp_path / "meta.jsonl", META_2023)
    jsonl(tmp_path / f"{which}.jsonl", [{"user": "U1", "product": "P1", "time": 5}])
    with pytest.raises(DataFormatError, match=rf"{which}\.jsonl: missing column 'asin' \(or 'parent_asin'\)"):
        load_amazon(reviews, meta)


def test_amazon_missing_file_is_a_format_error(tmp_path):
    meta = jsonl(tmp_path / "meta.jsonl", META_2023)
    with pytest.raises(DataFormatError, match="nothere.jsonl"):
        load_amazon(tmp_path / "nothere.jsonl", meta)


ITEMS = [
    {"item_id": 1, "title": "One", "genres": "Action|Comedy", "year": 1995, "url": "http://x", "score": 4.5},
    {"item_id": "2", "title": "Two", "categories": ["Books", "Poetry"], "description": "Nice.",
     "brand": "Pub", "year": "released 2001-02-03", "tags": ["ignored"]},
    {"item_id": 3.0, "title": "Three"},
]


def test_generic_shuffled_columns_iso_and_numeric_timestamps(tmp_path):
    items = jsonl(tmp_path / "items.jsonl", ITEMS)
    interactions = write_lines(tmp_path / "interactions.csv", [
        "rating,timestamp,source,item_id,user_id",
        "5,1600000000,web,1,u1",
        ",2020-01-02,app,2,u1",
        "3.5,2020-01-02T03:04:05+02:00,app,3,u2",
        "4,1600000000123,web,2,u2",
    ])
    data = load_generic(interactions, items, name="shop")

    assert data.source == {"interactions": str(interactions), "items": str(items), "format": "generic"}
    one, two = data.items["1"], data.items["2"]
    assert (one.categories, one.year, one.extra) == (["Action", "Comedy"], 1995, {"url": "http://x", "score": "4.5"})
    assert (two.categories, two.year, two.brand, two.description) == (["Books", "Poetry"], 2001, "Pub", "Nice.")
    assert "3" in data.items
    day = datetime(2020, 1, 2, tzinfo=timezone.utc).timestamp()
    assert [(i.user_id, i.item_id, i.timestamp, i.rating) for i in data.interactions] == [
        ("u1", "1", 1600000000.0, 5.0),
        ("u1", "2", day, None),
        ("u2", "3", day + 3 * 3600 + 4 * 60 + 5 - 2 * 3600, 3.5),
        ("u2", "2", 1600000000.123, 4.0),
    ]
    assert data.report.total_rejected == 0


def test_generic_without_rating_column(tmp_path):
    items = jsonl(tmp_path / "items.jsonl", ITEMS)
    interactions = write_lines(tmp_path / "interactions.csv.gz", ["user_id,item_id,timestamp", "u1,1,10", "u1,2,20"])
    data = load_generic(interactions, items)
    assert [(i.item_id, i.timestamp, i.rating) for i in data.interactions] == [("1", 10.0, None), ("2", 20.0, None)]


def test_generic_malformed_rows_are_counted(tmp_path):
    items = jsonl(tmp_path / "items.jsonl", ITEMS + [
        "not json", {"title": "no id"}, {"item_id": "9"}, {"item_id": "1", "title": "dup"}, {"item_id": "8", "title": ""},
    ])
    interactions = write_lines(tmp_path / "interactions.csv", [
        "user_id,item_id,timestamp,rating",
        "u1,1,100,4",
        "u1,2,100",
        "u1,2,yesterday,4",
        "u1,2,100,five",
        ",2,100,4",
        "u1,77,100,4",
        "u2,3,200,",
    ])
    data = load_generic(interactions, items)
    report = data.report

    assert sorted(data.items) == ["1", "2", "3"] and data.items["1"].title == "One"
    assert [(i.user_id, i.item_id) for i in data.interactions] == [("u1", "1"), ("u2", "3")]
    assert report.rows_read == {"items.jsonl": 8, "interactions.csv": 7}
    assert report.rejected == {
        "items.jsonl: invalid JSON": 1,
        "items.jsonl: missing field 'item_id'": 1,
        "items.jsonl: missing field 'title'": 1,
        "items.jsonl: duplicate item id": 1,
        "items.jsonl: empty title": 1,
        "interactions.csv: expected 4 fields": 1,
        "interactions.csv: bad timestamp": 1,
        "interactions.csv: bad rating": 1,
        "interactions.csv: empty user id": 1,
        "interactions.csv: unknown item id": 1,
    }
    assert report.examples["interactions.csv: bad timestamp"] == ["line 4"]


@pytest.mark.parametrize("column", ["user_id", "item_id", "timestamp"])
def test_generic_missing_column_is_a_format_error(tmp_path, column):
    items = jsonl(tmp_path / "items.jsonl", ITEMS)
    header = ",".join(c for c in ["user_id", "item_id", "timestamp", "rating"] if c != column)
    interactions = write_lines(tmp_path / "interactions.csv", [header, "a,b,c"])
    with pytest.raises(DataFormatError, match=rf"interactions\.csv: missing column '{column}'"):
        load_generic(interactions, items)


def test_parse_timestamp_edge_cases():
    assert parse_timestamp("1e9") == 1e9
    assert parse_timestamp("2021-06-01T00:00:00Z") == datetime(2021, 6, 1, tzinfo=timezone.utc).timestamp()
    assert parse_timestamp("-5") is None
    assert parse_timestamp("") is None
    assert parse_timestamp("2021-13-01") is None


def test_parse_timestamp_naive_means_utc_whatever_the_local_zone(monkeypatch):
    import time

    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        assert parse_timestamp("2020-01-02") == datetime(2020, 1, 2, tzinfo=timezone.utc).timestamp()
    finally:
        monkeypatch.undo()
        time.tzset()


def test_generic_a_stray_quote_or_bad_bytes_reject_their_own_line_only(tmp_path):
    """A stray quote is one bad row, not a field that swallows the rows after it; a line that is not
    UTF-8 is rejected as such instead of being read with replacement characters (which would merge
    two users whose ids differ only in those bytes); a field over the csv limit is one bad row."""
    items = jsonl(tmp_path / "items.jsonl", ITEMS)
    path = tmp_path / "interactions.csv"
    rows = [b"user_id,item_id,timestamp", b"u1,1,100", b'u1,"2,200', b"u2,2,300", b"caf\xe9,1,400", b"caf\xe8,2,500",
            b"u3,1," + b"9" * 200_000, b"u3,3,600"]
    path.write_bytes(b"\n".join(rows) + b"\n")
    data = load_generic(path, items)
    assert [(i.user_id, i.item_id) for i in data.interactions] == [("u1", "1"), ("u2", "2"), ("u3", "3")]
    assert data.report.rows_read["interactions.csv"] == 7
    assert data.report.rejected["interactions.csv: invalid UTF-8"] == 2
    assert data.report.rejected["interactions.csv: expected 3 fields"] == 1
    assert data.report.total_rejected == 4


def test_a_truncated_gzip_is_a_format_error_that_names_the_file(tmp_path):
    items = jsonl(tmp_path / "items.jsonl", ITEMS)
    whole = write_lines(tmp_path / "whole.csv.gz", ["user_id,item_id,timestamp"] + [f"u{n},1,{n}" for n in range(2000)])
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(whole.read_bytes()[: len(whole.read_bytes()) // 2])
    with pytest.raises(DataFormatError, match=r"cut\.csv\.gz: not a whole gzip file"):
        load_generic(cut, items)
