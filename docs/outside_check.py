"""Check the reasoning from outside, the way a user sees it: through a running app's ``recommend``
API (gradio_client), for sampled dataset users. Nothing of thinkrec is imported: the catalog and the
users' ratings are read from the dataset files the app was built from.

    thinkrec app &                                   # README command 1
    python docs/outside_check.py --url http://127.0.0.1:7860/ --users 20 --json results/outside-check.json

For each user, the titles the derivation and evolution levels show ("Title (year)") are matched to
the catalog; a citation is *ungrounded* when the user never rated that film. *Faithfulness* is the
share of the top-10 items carrying a category or the decade that level 3's "Next item:" states.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sqlite3
from pathlib import Path


def load_dataset(folder: Path) -> tuple[dict[str, dict], dict[str, set[str]]]:
    """Items (title, year, categories) from the catalog's SQLite file, and every user's rated
    items from the test split (its history plus its target: everything the user rated)."""
    with sqlite3.connect(folder / "catalog.db") as db:
        items = {str(item_id): {"title": title, "year": year, "categories": json.loads(categories)}
                 for item_id, title, year, categories in db.execute("SELECT item_id, title, year, categories FROM items")}
    rated: dict[str, set[str]] = {}
    for line in (folder / "splits" / "test.jsonl").read_text().splitlines():
        row = json.loads(line)
        rated[str(row["user_id"])] = {str(i) for i in row["history"]} | {str(row["target"])}
    return items, rated


def cited(text: str, labels: dict[str, str]) -> list[str]:
    """Catalog items whose "Title (year)" label appears in ``text`` as a whole citation."""
    found = []
    for item_id, label in labels.items():
        for match in re.finditer(re.escape(label), text):
            before = text[max(0, match.start() - 2):match.start()]
            if match.start() == 0 or before in (": ", ", ") or before.endswith(" ") and before[:1] in ":,":
                found.append(item_id)
                break
    return found


def stated(level3: str, categories: set[str]) -> tuple[set[str], int | None]:
    match = re.search(r"Next item:\s*(.+?)\.?\s*$", level3)
    if not match:
        return set(), None
    words = [w.strip() for w in match.group(1).split(",")]
    decade = next((int(w[:4]) for w in words if re.fullmatch(r"\d{4}s", w)), None)
    return {w for w in words if w in categories}, decade


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:7860/")
    parser.add_argument("--data", default="artifacts/ml-100k")
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--message", default="what should I watch next?")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    from gradio_client import Client

    items, rated = load_dataset(Path(args.data))
    labels = {i: f"{row['title']} ({row['year']})" if row.get("year") else row["title"] for i, row in items.items()}
    categories = {c for row in items.values() for c in row.get("categories", [])}
    users = random.Random(args.seed).sample(sorted(rated), args.users)
    client = Client(args.url, verbose=False)
    rows, total, outside, carrying, shown = [], 0, 0, 0, 0
    for user in users:
        answer = client.predict(args.message, user, True, "", api_name="/recommend")
        levels = answer["trace"]["levels"]
        citations = cited(levels.get("derivation", "") + " " + levels.get("evolution", ""), labels)
        # A label, not an id: the catalog may list one film twice (ML-100K does), and either id counts.
        seen_labels = {labels[i] for i in rated[user] if i in labels}
        ungrounded = [labels[i] for i in citations if labels[i] not in seen_labels]
        wanted, decade = stated(levels.get("recommendation", ""), categories)
        top = answer["items"][:10]
        fits = sum(bool(set(i["categories"]) & wanted) or (decade is not None and i["year"] and i["year"] // 10 * 10 == decade)
                   for i in top)
        total, outside, carrying, shown = total + len(citations), outside + len(ungrounded), carrying + fits, shown + len(top)
        rows.append({"user": user, "citations": len(citations), "ungrounded": ungrounded,
                     "faithfulness": fits / max(len(top), 1), "levels": levels})
        print(f"user {user}: {len(citations)} citations, {len(ungrounded)} ungrounded, "
              f"faithfulness {fits}/{len(top)}", flush=True)
    summary = {"users": len(users), "citations": total, "ungrounded": outside,
               "faithfulness": round(carrying / max(shown, 1), 3), "message": args.message, "url": args.url}
    print(json.dumps(summary))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"summary": summary, "users": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
