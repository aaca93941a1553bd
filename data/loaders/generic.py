"""Generic loader: any dataset exported as ``interactions.csv`` + ``items.jsonl`` (DESIGN.md §3).

    interactions.csv  header user_id,item_id,timestamp[,rating]; columns in any order, extra
                      columns ignored; timestamp is Unix seconds (or milliseconds when > 1e11)
                      or an ISO-8601 date/datetime (naive means UTC)
    items.jsonl       one object per line: item_id, title, optional description, categories
                      (or genres; a list, or one string split on '|'), brand, year; any other
                      scalar field is kept in ``extra`` as a string

Either file may be gzip-compressed (``.gz``).

    thinkrec data build --dataset generic --interactions interactions.csv --items items.jsonl
"""

from __future__ import annotations

import csv
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from data.loaders.common import UndecodableLine, accept_item, open_text_lines, parse_year, to_float
from data.records import DataFormatError, LoadReport, RawDataset, RawInteraction, RawItem

REQUIRED_COLUMNS = ("user_id", "item_id", "timestamp")
# Numeric timestamps above this are milliseconds: 1e11 seconds is the year 5138.
MILLISECONDS_ABOVE = 1e11
ITEM_FIELDS = ("item_id", "title", "description", "categories", "genres", "brand", "year")


def parse_timestamp(text: str) -> float | None:
    """Unix seconds from a number (seconds or milliseconds) or an ISO-8601 string; None if bad."""
    text = text.strip()
    number = to_float(text)
    if number is not None:
        if number < 0:
            return None
        return number / 1000.0 if number > MILLISECONDS_ABOVE else number
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _id(value: Any) -> str:
    """Item ids may be JSON numbers; 12 and 12.0 both become '12' to match the CSV text."""
    if isinstance(value, bool) or value is None or isinstance(value, (dict, list)):
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _categories(value: Any) -> list[str]:
    if isinstance(value, str):
        value = value.split("|")
    if not isinstance(value, list):
        return []
    out: list[str] = []
    for entry in value:
        text = str(entry).strip() if isinstance(entry, (str, int, float)) else ""
        if text and text not in out:
            out.append(text)
    return out


def _text(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(str(v).strip() for v in value if isinstance(v, (str, int, float))).strip()
    return str(value).strip() if isinstance(value, (str, int, float)) and not isinstance(value, bool) else ""


def parse_item(row: dict) -> RawItem:
    """One items.jsonl object as a RawItem (item_id and title may come back empty)."""
    year = row.get("year")
    extra = {key: str(value) for key, value in row.items()
             if key not in ITEM_FIELDS and isinstance(value, (str, int, float, bool))}
    return RawItem(
        item_id=_id(row.get("item_id")), title=_text(row.get("title")),
        year=parse_year(str(year)) if isinstance(year, (str, int)) and not isinstance(year, bool) else None,
        description=_text(row.get("description")),
        categories=_categories(row.get("categories", row.get("genres"))),
        brand=_text(row.get("brand")), extra=extra)


def load_items(path: Path, report: LoadReport) -> dict[str, RawItem]:
    file = path.name
    items: dict[str, RawItem] = {}
    for line_no, line in enumerate(open_text_lines(path), start=1):
        if not line.strip():
            continue
        report.read(file)
        where = f"line {line_no}"
        if isinstance(line, UndecodableLine):
            report.reject(file, "invalid UTF-8", where)
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict):
            report.reject(file, "invalid JSON", where)
            continue
        missing = next((key for key in ("item_id", "title") if key not in row), None)
        if missing:
            report.reject(file, f"missing field '{missing}'", where)
            continue
        accept_item(report, file, where, items, parse_item(row))
    return items


def load_interactions(path: Path, items: dict[str, RawItem], report: LoadReport) -> list[RawInteraction]:
    file = path.name
    lines = open_text_lines(path)
    first = next(lines, None)
    header = next(csv.reader([first]), None) if first is not None else None
    if not header:
        raise DataFormatError(f"{file}: empty file (expected header {','.join(REQUIRED_COLUMNS)}[,rating])")
    # A UTF-8 byte-order mark (spreadsheet exports) would otherwise hide the first column name.
    header = [name.strip().lstrip("\ufeff") for name in header]
    for column in REQUIRED_COLUMNS:
        if column not in header:
            raise DataFormatError(f"{file}: missing column '{column}' (header: {', '.join(header)})")
    index = {name: header.index(name) for name in (*REQUIRED_COLUMNS, "rating") if name in header}

    interactions: list[RawInteraction] = []
    # Line by line: an interaction has no free text, so a stray quote is one bad row, never a field
    # that runs on and swallows the rows after it.
    for line_no, line in enumerate(lines, start=2):
        if not line.strip():
            continue
        report.read(file)
        where = f"line {line_no}"
        if isinstance(line, UndecodableLine):
            report.reject(file, "invalid UTF-8", where)
            continue
        try:
            fields = next(csv.reader([line]))
        except csv.Error as error:          # e.g. a field over the csv module's size limit
            report.reject(file, f"unreadable CSV ({error})", where)
            continue
        if not any(f.strip() for f in fields):
            report.reject(file, "no fields", where)
            continue
        if len(fields) != len(header):
            report.reject(file, f"expected {len(header)} fields", where)
            continue
        user, item = fields[index["user_id"]].strip(), fields[index["item_id"]].strip()
        timestamp = parse_timestamp(fields[index["timestamp"]])
        rating_text = fields[index["rating"]].strip() if "rating" in index else ""
        rating = to_float(rating_text) if rating_text else None
        if timestamp is None:
            report.reject(file, "bad timestamp", where)
        elif rating_text and rating is None:
            report.reject(file, "bad rating", where)
        elif not user:
            report.reject(file, "empty user id", where)
        elif item not in items:
            report.reject(file, "unknown item id", where)
        else:
            interactions.append(RawInteraction(user, item, timestamp, rating))
    return interactions


def load_generic(interactions: Path, items: Path, name: str = "generic") -> RawDataset:
    """Generic interactions.csv + items.jsonl as a RawDataset; items first so that
    interactions with items missing from items.jsonl are rejected as "unknown item id"."""
    interactions, items = Path(interactions), Path(items)
    report = LoadReport()
    item_records = load_items(items, report)
    interaction_records = load_interactions(interactions, item_records, report)
    source = {"interactions": str(interactions), "items": str(items), "format": "generic"}
    return RawDataset(name, item_records, interaction_records, report=report, source=source)
