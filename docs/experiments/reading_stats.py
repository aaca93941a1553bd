"""What levels 1-2 say when the engine reads them from the data (issue 27), over every user of a
split, no model involved: how often users share one level-2 text, whether each trend statement
recounts true, which trends and names occur, and how long a reading takes.

    python docs/experiments/reading_stats.py --split test [--read-items 20]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter

from engine.interests import InterestReader, check_trends
from training.dataset_view import DatasetView


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="artifacts/ml-100k")
    parser.add_argument("--split", default="test")
    parser.add_argument("--read-items", type=int, default=400)
    args = parser.parse_args()
    view = DatasetView.load(args.data)
    reader = InterestReader(view.facts, view.embeddings, read_items=args.read_items)
    rows = {"valid": view.valid, "test": view.test}[args.split]
    evolutions, trends, eras, counts, seconds = Counter(), Counter(), Counter(), [], []
    statements = true = 0
    for row in rows:
        started = time.perf_counter()
        reading = reader.read(row["history"])
        seconds.append(time.perf_counter() - started)
        evolutions[reading.evolution] += 1
        read = row["history"][-args.read_items:] if args.read_items else row["history"]
        checked, right = check_trends(reading.derivation, reading.evolution, read, reader.items)
        statements, true = statements + checked, true + right
        counts.append(len(reading.interests))
        for it in reading.interests:
            trends[it.trend] += 1
            eras["named" if it.era else "not named"] += 1
    top = evolutions.most_common(1)[0][1]
    print(f"{args.split}: {len(rows)} users, read_items {args.read_items}")
    print(f"users sharing the most common level-2 text: {top} ({top / len(rows):.3f}); distinct texts {len(evolutions)}")
    print(f"trend statements {statements}, recount true {true / max(statements, 1):.4f}")
    print(f"interests per user: mean {statistics.fmean(counts):.2f}; trends {dict(trends.most_common())}")
    print(f"eras {dict(eras)}")
    ordered = sorted(seconds)
    print(f"reading time p50 {1000 * ordered[len(ordered) // 2]:.1f} ms, max {1000 * ordered[-1]:.1f} ms (one core)")


if __name__ == "__main__":
    main()
