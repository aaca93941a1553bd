"""How well can the next item's category be named without a model? (issue 27, level 3)

For every user of a split, each rule names one category and scores a hit when the held-out item
carries it. The shipped rule is the engine's own ``engine.interests.next_categories`` (the window's
shares plus where the transition counts of the training split lead); the others are the issue's
no-learning baseline and its neighbours.

    python docs/experiments/next_category.py --data artifacts/ml-100k
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from data.catalog import Catalog  # noqa: E402
from engine.interests import next_categories  # noqa: E402
from engine.recommender import interest_reader  # noqa: E402
from training.dataset_view import DatasetView  # noqa: E402
from training.sasrec import SASRecModel  # noqa: E402

import torch  # noqa: E402


def first(counter: Counter) -> str | None:
    return max(counter, key=lambda c: counter[c]) if counter else None


def sasrec_categories(sasrec, rows, categories, window_weight: float = 0.0, temperature: float = 1.0) -> list[str | None]:
    """Per row, the category with the most probability under SASRec's softmax over unseen items,
    plus ``window_weight`` times its share of the last 10 items."""
    histories = [[i for i in row["history"] if i in categories] for row in rows]
    scores = torch.from_numpy(sasrec.catalog_scores(histories)) / temperature
    names = sorted({c for cs in categories.values() for c in cs})
    column = {c: k for k, c in enumerate(names)}
    member = torch.zeros(len(sasrec.item_ids), len(names))
    for r, item in enumerate(sasrec.item_ids):
        for c in categories.get(item, []):
            member[r, column[c]] = 1.0
    out = []
    for row, history in enumerate(histories):
        s = scores[row].clone()
        seen = [sasrec.item_row[i] - 1 for i in history if i in sasrec.item_row]
        if seen:
            s[seen] = -math.inf
        mass = torch.softmax(s, dim=0) @ member
        for item in history[-10:]:
            for c in categories[item]:
                mass[column[c]] += window_weight / len(history[-10:])
        out.append(names[int(mass.argmax())] if histories[row] else None)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="artifacts/ml-100k")
    parser.add_argument("--sasrec", default="checkpoints/ml-100k-tiny/sasrec.pt",
                        help="a SASRec checkpoint: adds the rule 'the category its item distribution favours'")
    args = parser.parse_args()
    view = DatasetView.load(args.data)
    reader = interest_reader(Catalog(args.data), view.codes)
    categories = {i: list(item.categories) for i, item in view.items.items()}
    sasrec = SASRecModel.load(args.sasrec, device="cpu") if args.sasrec and Path(args.sasrec).exists() else None
    for split in ("valid", "test"):
        hits: dict[str, list[float]] = {}
        rows = getattr(view, split)
        ranked = sasrec_categories(sasrec, rows, categories) if sasrec is not None else None
        blended = sasrec_categories(sasrec, rows, categories, window_weight=0.5) if sasrec is not None else None
        for n, row in enumerate(rows):
            history = [i for i in row["history"] if i in categories]
            target = categories.get(row["target"])
            if not history or not target:
                continue
            window = Counter()
            for item in history[-10:][::-1]:          # ties: the more recent first
                window.update(categories[item])
            votes = Counter()
            counted = reader.transitions.scores(history) if reader.transitions else Counter()
            for item, vote in counted.items():
                if item not in history and item in categories:
                    votes.update({c: vote for c in categories[item]})
            named = {"last 10 (baseline)": first(window),
                     "whole history": first(Counter(c for i in history for c in categories[i])),
                     "always the commonest category": view.vocabulary[0],
                     "where the transitions lead": first(votes) or first(window),
                     "next_categories (shipped)": (next_categories(reader.items, reader.transitions, history) or [None])[0]}
            if ranked is not None:
                named["SASRec's item distribution"] = ranked[n]
                named["SASRec + 0.5 x last-10 shares"] = blended[n]
            for rule, category in named.items():
                hits.setdefault(rule, []).append(float(category in target))
        print(f"\n{split} ({len(next(iter(hits.values())))} users)")
        for rule, values in hits.items():
            print(f"  {rule:32s} {sum(values) / len(values):.4f}")


if __name__ == "__main__":
    main()
