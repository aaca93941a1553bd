"""Small helpers shared by the loaders: opening text inside zips, folders or gzip files,
splitting a MovieLens-style "Title (1995)" and parsing numbers with a clear reject reason."""

from __future__ import annotations

import gzip
import re
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from data.records import DataFormatError, LoadReport, RawItem

_TITLE_YEAR = re.compile(r"^(?P<title>.*?)\s*\((?P<year>\d{4})(?:-\d{2,4})?\)\s*$")


_TRAILING_ARTICLE = re.compile(r"^(?P<body>.+), (?P<article>The|A|An|Les|La|Le|L'|Il|Das|Die|Der|El)(?P<rest> \(.*\))?$")


def natural_title(title: str) -> str:
    """'Usual Suspects, The' -> 'The Usual Suspects' (MovieLens files sort titles by article)."""
    match = _TRAILING_ARTICLE.match(title.strip())
    if not match:
        return title.strip()
    article = match.group("article")
    joiner = "" if article.endswith("'") else " "
    return f"{article}{joiner}{match.group('body')}{match.group('rest') or ''}"


def split_title_year(raw_title: str) -> tuple[str, int | None]:
    """'Usual Suspects, The (1995)' -> ('The Usual Suspects', 1995); no year -> (title, None)."""
    match = _TITLE_YEAR.match(raw_title.strip())
    if not match:
        return natural_title(raw_title), None
    return natural_title(match.group("title")), int(match.group("year"))


def parse_year(text: str) -> int | None:
    text = (text or "").strip()
    match = re.search(r"(1[89]\d\d|20\d\d)", text)
    return int(match.group(1)) if match else None


class Bundle:
    """A zip file (or wheel) or a folder, read by member name suffix.

    MovieLens archives nest their files one folder down (``ml-1m/ratings.dat``) and the RecBole
    wheel nests them deeper; looking files up by suffix hides that.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise DataFormatError(f"{self.path}: no such file or folder")
        self._zip = zipfile.ZipFile(self.path) if self.path.is_file() else None

    def names(self) -> list[str]:
        if self._zip is not None:
            return self._zip.namelist()
        return [str(p.relative_to(self.path)) for p in self.path.rglob("*") if p.is_file()]

    def find(self, suffix: str, required: bool = True) -> str | None:
        matches = sorted(n for n in self.names() if n == suffix or n.endswith("/" + suffix))
        if not matches:
            if required:
                raise DataFormatError(f"{self.path}: no file named '{suffix}' inside")
            return None
        return min(matches, key=len)

    def read_text(self, name: str, encoding: str = "utf-8") -> str:
        raw = self._zip.read(name) if self._zip is not None else (self.path / name).read_bytes()
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            # MovieLens files are Latin-1 in places; keep every row rather than fail.
            return raw.decode("latin-1")


class UndecodableLine(str):
    """A line that is not valid UTF-8, as text with replacement characters. Readers reject it ("invalid
    UTF-8"): read as it is, two ids that differ only in their undecodable bytes would become one."""


def open_text_lines(path: str | Path) -> Iterator[str]:
    """Lines of a plain or gzip-compressed text file, newline stripped; a line that is not UTF-8
    comes as an :class:`UndecodableLine`."""
    path = Path(path)
    if not path.exists():
        raise DataFormatError(f"{path}: no such file")
    if path.is_dir():
        raise DataFormatError(f"{path}: a folder, not a file")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            for raw in handle:
                raw = raw.rstrip(b"\n\r")
                try:
                    yield raw.decode("utf-8")
                except UnicodeDecodeError:
                    yield UndecodableLine(raw.decode("utf-8", errors="replace"))
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise DataFormatError(f"{path}: not a whole gzip file ({error or type(error).__name__})") from None


def to_float(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if value == value and abs(value) != float("inf") else None


def accept_item(report: LoadReport, file: str, where: str, items: dict[str, RawItem], item: RawItem) -> bool:
    """Add ``item`` unless its id is empty or repeated or its title is empty (then count why)."""
    if not item.item_id:
        report.reject(file, "empty item id", where)
    elif item.item_id in items:
        report.reject(file, "duplicate item id", where)
    elif not item.title:
        report.reject(file, "empty title", where)
    else:
        items[item.item_id] = item
        return True
    return False
