"""From a loaded dataset to clean chronological user sequences and leave-one-out splits.

Steps, each counted in the report: optional minimum rating, repeated user-item pairs (the first
time counts), optional k-core filtering, per-user chronological order (ties keep file order, so
the result is deterministic), then leave-one-out: the last item is the test target, the one
before it the validation target, the rest is training history. Users with fewer than three
interactions cannot give all three splits; they are kept for training only and counted.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from data.records import RawDataset, RawItem


def natural_key(text: str) -> tuple:
    """Sort '2' before '10' for numeric ids, and mixed ids stably."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text) if part)


@dataclass
class UserSequence:
    user_id: str
    item_ids: list[str]
    timestamps: list[float]
    ratings: list[float | None]


@dataclass
class CleanData:
    items: list[RawItem]                  # catalog order: this is each item's row everywhere
    sequences: list[UserSequence]         # sorted by user id
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def num_interactions(self) -> int:
        return sum(len(s.item_ids) for s in self.sequences)


def _kcore(pairs: list[tuple[str, str]], k: int) -> tuple[set[str], set[str]]:
    """Users and items that survive iterative k-core filtering on user-item pairs."""
    users = {u for u, _ in pairs}
    items = {i for _, i in pairs}
    while True:
        user_count = Counter(u for u, i in pairs if u in users and i in items)
        item_count = Counter(i for u, i in pairs if u in users and i in items)
        keep_users = {u for u, c in user_count.items() if c >= k}
        keep_items = {i for i, c in item_count.items() if c >= k}
        if keep_users == users and keep_items == items:
            return users, items
        users, items = keep_users, keep_items


def clean(dataset: RawDataset, kcore: int = 0, min_rating: float | None = None) -> CleanData:
    stats: Counter = Counter()
    # Original position breaks timestamp ties, which makes the order reproducible.
    rows = list(enumerate(dataset.interactions))
    if min_rating is not None:
        kept = [(n, r) for n, r in rows if r.rating is None or r.rating >= min_rating]
        stats["below_min_rating"] = len(rows) - len(kept)
        rows = kept
    rows.sort(key=lambda nr: (nr[1].timestamp, nr[0]))

    seen_pairs: set[tuple[str, str]] = set()
    unique_rows = []
    for n, r in rows:
        if (r.user_id, r.item_id) in seen_pairs:
            stats["repeated_user_item"] += 1
            continue
        seen_pairs.add((r.user_id, r.item_id))
        unique_rows.append(r)

    if kcore > 1:
        users, items = _kcore([(r.user_id, r.item_id) for r in unique_rows], kcore)
        before = len(unique_rows)
        unique_rows = [r for r in unique_rows if r.user_id in users and r.item_id in items]
        stats["removed_by_kcore"] = before - len(unique_rows)

    by_user: dict[str, UserSequence] = defaultdict(lambda: UserSequence("", [], [], []))
    for r in unique_rows:
        seq = by_user[r.user_id]
        seq.user_id = r.user_id
        seq.item_ids.append(r.item_id)
        seq.timestamps.append(r.timestamp)
        seq.ratings.append(r.rating)
    sequences = [by_user[u] for u in sorted(by_user, key=natural_key)]

    used = {i for s in sequences for i in s.item_ids}
    stats["items_without_interactions"] = len(set(dataset.items) - used)
    stats["users_too_short_for_splits"] = sum(1 for s in sequences if len(s.item_ids) < 3)
    items = [dataset.items[i] for i in sorted(used, key=natural_key)]
    return CleanData(items, sequences, dict(stats))


def leave_one_out(data: CleanData) -> dict[str, list[dict]]:
    """Rows for splits/{train,valid,test}.jsonl (the target never appears in its history)."""
    splits: dict[str, list[dict]] = {"train": [], "valid": [], "test": []}
    for s in data.sequences:
        n = len(s.item_ids)
        cut = n - 2 if n >= 3 else n
        splits["train"].append({"user_id": s.user_id, "item_ids": s.item_ids[:cut],
                                "timestamps": s.timestamps[:cut], "ratings": s.ratings[:cut]})
        if n < 3:
            continue
        for name, target in (("valid", n - 2), ("test", n - 1)):
            splits[name].append({
                "user_id": s.user_id,
                "history": s.item_ids[:target], "timestamps": s.timestamps[:target],
                "ratings": s.ratings[:target],
                "target": s.item_ids[target], "target_timestamp": s.timestamps[target]})
    return splits


def write_splits(splits: dict[str, list[dict]], folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, rows in splits.items():
        path = folder / f"{name}.jsonl"
        with path.open("w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        paths[name] = path
    return paths


def read_split(path: Path) -> list[dict]:
    with Path(path).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
