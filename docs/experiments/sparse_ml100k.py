"""A sparser dataset for robustness checks (issue 14): ML-100K thinned to a share of each user's
ratings, written in the generic format (interactions.csv + items.jsonl) so it goes through the
generic loader like a user's own data would.

    python docs/experiments/sparse_ml100k.py --keep 0.15 --out results/sparse-ml100k
    thinkrec data build --dataset generic --interactions results/sparse-ml100k/interactions.csv \
        --items results/sparse-ml100k/items.jsonl --kcore 5 --out artifacts/sparse-text
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from data.build import cache_dir
from data.loaders.movielens import load_ml100k


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--keep", type=float, default=0.15, help="share of each user's ratings kept")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/sparse-ml100k")
    args = parser.parse_args()
    raw = load_ml100k(None, cache_dir() / "downloads")
    rng = random.Random(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    kept = [r for r in raw.interactions if rng.random() < args.keep]
    with (out / "interactions.csv").open("w") as handle:
        handle.write("user_id,item_id,timestamp,rating\n")
        for r in kept:
            handle.write(f"{r.user_id},{r.item_id},{int(r.timestamp)},{r.rating if r.rating is not None else ''}\n")
    with (out / "items.jsonl").open("w") as handle:
        for item in raw.items.values():
            handle.write(json.dumps({"item_id": item.item_id, "title": item.title, "year": item.year,
                                     "categories": item.categories, "description": item.description}) + "\n")
    print(f"{len(kept)} of {len(raw.interactions)} interactions -> {out}")


if __name__ == "__main__":
    main()
