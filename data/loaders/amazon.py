"""Amazon Reviews loader: the 2018 (McAuley lab, Ni et al.) and 2023 (Hou et al.) releases.

Both releases ship two JSON-lines files per category, plain or gzip-compressed: reviews
(one interaction per line) and metadata (one product per line). Which release a line belongs
to is decided per line from its fields, so either file can be from either release:

    2018 reviews: reviewerID, asin, unixReviewTime (seconds), overall
    2018 meta:    asin, title, brand, category, description, price, date
    2023 reviews: user_id, parent_asin (or asin), timestamp (milliseconds), rating
    2023 meta:    parent_asin, title, store, main_category, categories, description, price, details

Some older (2014-style) metadata files hold Python literals instead of JSON; those lines are
read with ``ast.literal_eval`` and counted in a note. Both files are streamed line by line.

    thinkrec data build --dataset amazon --reviews Movies_and_TV.jsonl.gz --meta meta_Movies_and_TV.jsonl.gz
"""

from __future__ import annotations

import ast
import html
import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data.loaders.common import UndecodableLine, accept_item, open_text_lines, parse_year, to_float
from data.records import DataFormatError, LoadReport, RawDataset, RawInteraction, RawItem

MAX_DESCRIPTION_CHARS = 1000
# 2018 meta fields like `date` and `price` sometimes hold scraped page fragments; a real
# date or price is short, so longer values are ignored rather than mined for digits.
MAX_SHORT_FIELD_CHARS = 40
ID_FIELDS = ("parent_asin", "asin")
# 2023 `details` keys that carry a release date, checked in this order.
DATE_DETAIL_KEYS = ("Date First Available", "Release date", "Publication date", "Original Release Date")

_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")


def clean_text(value: Any) -> str:
    """HTML tags removed, entities decoded, whitespace collapsed; non-strings become ''."""
    if not isinstance(value, str):
        return ""
    return _SPACE.sub(" ", html.unescape(_TAG.sub(" ", value))).strip()


def _text_list(value: Any) -> list[str]:
    """A field that may be a string, a list of strings or (2014 meta) a list of lists."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return []
    out: list[str] = []
    for entry in value:
        for text in (entry if isinstance(entry, list) else [entry]):
            cleaned = clean_text(text)
            if cleaned and cleaned not in out:
                out.append(cleaned)
    return out


def _id(value: Any) -> str:
    return "" if value is None or isinstance(value, (dict, list)) else str(value).strip()


def _json_rows(path: Path, report: LoadReport, literal_lines: Counter) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each line; bad lines are rejected, the first row is checked.

    A first line without any product id means the wrong file (or a different layout) was
    passed, which would otherwise surface as every single row rejected.
    """
    file = path.name
    checked = False
    for line_no, line in enumerate(open_text_lines(path), start=1):
        if not line.strip():
            continue
        report.read(file)
        if isinstance(line, UndecodableLine):
            report.reject(file, "invalid UTF-8", f"line {line_no}")
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = _python_literal(line)
            if row is not None:
                literal_lines[file] += 1
        first_line, checked = not checked, True
        if not isinstance(row, dict):
            report.reject(file, "invalid JSON", f"line {line_no}")
            continue
        if first_line and not any(key in row for key in ID_FIELDS):
            raise DataFormatError(f"{file}: missing column 'asin' (or 'parent_asin') "
                                  f"in the first row (fields: {', '.join(sorted(map(str, row)))})")
        yield line_no, row


def _python_literal(line: str) -> dict | None:
    if not line.lstrip().startswith("{"):
        return None
    try:
        value = ast.literal_eval(line)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _year_from_details(details: Any) -> int | None:
    if not isinstance(details, dict):
        return None
    for key in DATE_DETAIL_KEYS:
        text = clean_text(details.get(key))
        if text and len(text) <= MAX_SHORT_FIELD_CHARS and parse_year(text):
            return parse_year(text)
    return None


def _price(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:g}" if value == value else ""
    text = clean_text(value)
    return text if text and text != "None" and len(text) <= MAX_SHORT_FIELD_CHARS else ""


def parse_meta_row(row: dict) -> tuple[str, RawItem]:
    """(release, item) from one metadata object of either release. The id may be ''."""
    is_2023 = "parent_asin" in row or "main_category" in row
    if is_2023:
        item_id = _id(row.get("parent_asin")) or _id(row.get("asin"))
        brand = clean_text(row.get("store"))
        main_category = clean_text(row.get("main_category"))
        categories = _text_list(row.get("categories"))
        if main_category and main_category not in categories:
            categories.insert(0, main_category)
        year = _year_from_details(row.get("details"))
    else:
        item_id = _id(row.get("asin"))
        brand = clean_text(row.get("brand"))
        if brand.lower().startswith("by "):  # 2018 scrapes keep the "by <brand>" byline
            brand = brand[3:].strip()
        main_category = clean_text(row.get("main_cat"))
        categories = _text_list(row.get("category", row.get("categories")))
        date = clean_text(row.get("date"))
        year = parse_year(date) if len(date) <= MAX_SHORT_FIELD_CHARS else None

    description = " ".join(_text_list(row.get("description")))[:MAX_DESCRIPTION_CHARS].rstrip()
    extra = {"price": _price(row.get("price")), "store": brand if is_2023 else "",
             "main_category": main_category}
    item = RawItem(item_id=item_id, title=clean_text(row.get("title")), year=year,
                   description=description, categories=categories, brand=brand,
                   extra={key: value for key, value in extra.items() if value})
    return ("amazon-2023" if is_2023 else "amazon-2018"), item


def parse_review_row(row: dict) -> tuple[str, dict[str, Any], str | None]:
    """(release, fields, missing field name or None) for one review object of either release.

    fields holds the raw user, item, timestamp (in seconds when numeric) and rating values.
    """
    is_2018 = "reviewerID" in row or "unixReviewTime" in row or (
        "user_id" not in row and "timestamp" not in row and "parent_asin" not in row)
    if is_2018:
        names = {"user": "reviewerID", "item": "asin", "time": "unixReviewTime", "rating": "overall"}
        item_value = row.get("asin")
    else:
        names = {"user": "user_id", "item": "parent_asin", "time": "timestamp", "rating": "rating"}
        item_value = row.get("parent_asin") or row.get("asin")
    if row.get(names["user"]) is None:
        return "", {}, names["user"]
    if item_value is None:
        return "", {}, names["item"]
    if row.get(names["time"]) is None:
        return "", {}, names["time"]
    timestamp = to_float(row[names["time"]]) if not isinstance(row[names["time"]], bool) else None
    if timestamp is not None and not is_2018:
        timestamp /= 1000.0  # 2023 timestamps are Unix milliseconds
    fields = {"user": _id(row[names["user"]]), "item": _id(item_value),
              "timestamp": timestamp, "rating": row.get(names["rating"])}
    return ("amazon-2018" if is_2018 else "amazon-2023"), fields, None


def _load_items(meta: Path, report: LoadReport, literal_lines: Counter, releases: Counter) -> dict[str, RawItem]:
    file = meta.name
    items: dict[str, RawItem] = {}
    for line_no, row in _json_rows(meta, report, literal_lines):
        release, item = parse_meta_row(row)
        where = f"line {line_no}"
        if not item.item_id:
            report.reject(file, "missing field 'parent_asin'" if release == "amazon-2023"
                          else "missing field 'asin'", where)
        elif accept_item(report, file, where, items, item):
            releases[release] += 1
    return items


def _load_interactions(reviews: Path, items: dict[str, RawItem], report: LoadReport,
                       literal_lines: Counter, releases: Counter) -> list[RawInteraction]:
    file = reviews.name
    interactions: list[RawInteraction] = []
    for line_no, row in _json_rows(reviews, report, literal_lines):
        release, fields, missing = parse_review_row(row)
        where = f"line {line_no}"
        if missing:
            report.reject(file, f"missing field '{missing}'", where)
            continue
        raw_rating = fields["rating"]
        rating = None if raw_rating is None else to_float(raw_rating)
        if isinstance(raw_rating, bool):
            rating = None
        if fields["timestamp"] is None or fields["timestamp"] < 0:
            report.reject(file, "bad timestamp", where)
        elif raw_rating is not None and rating is None:
            report.reject(file, "bad rating", where)
        elif not fields["user"]:
            report.reject(file, "empty user id", where)
        elif fields["item"] not in items:
            report.reject(file, "unknown item id", where)
        else:
            interactions.append(RawInteraction(fields["user"], fields["item"], fields["timestamp"], rating))
            releases[release] += 1
    return interactions


def load_amazon(reviews: Path, meta: Path, name: str = "amazon") -> RawDataset:
    """Amazon 2018 or 2023 reviews + metadata (JSON lines, plain or .gz) as a RawDataset.

    Metadata is read first so that reviews of products without usable metadata (no title)
    can be rejected as "unknown item id" instead of producing anonymous items.
    """
    reviews, meta = Path(reviews), Path(meta)
    report = LoadReport()
    literal_lines: Counter = Counter()
    item_releases: Counter = Counter()
    review_releases: Counter = Counter()
    items = _load_items(meta, report, literal_lines, item_releases)
    interactions = _load_interactions(reviews, items, report, literal_lines, review_releases)

    for file, count in sorted(literal_lines.items()):
        report.note(f"{file}: {count} lines were Python literals (2014-style), read with ast.literal_eval")
    if len(review_releases) > 1 or len(item_releases) > 1:
        report.note(f"mixed Amazon releases: reviews {dict(review_releases)}, meta {dict(item_releases)}")
    releases = review_releases or item_releases
    release = releases.most_common(1)[0][0] if releases else "amazon-2018"
    source = {"reviews": str(reviews), "meta": str(meta), "format": release}
    return RawDataset(name, items, interactions, report=report, source=source)
