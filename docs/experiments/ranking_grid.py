"""Issue 25's ranking grid: how to weigh the SID path, the item head and a decode-time prior.

Exact ranking scores every admissible item once, and its parts add up linearly, so one pass per
user gives every weighting: log p(SID path), log p_head(item), SASRec's and the transition
counts' log-probabilities over the catalog (history masked, no request). Choose on valid, report
test with the chosen weights through `thinkrec eval`.

    python docs/experiments/ranking_grid.py --data artifacts/ml-100k --checkpoint checkpoints/ml-100k-tiny/sft \
        --split valid --json results/ranking_grid_valid.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="artifacts/ml-100k")
    parser.add_argument("--checkpoint", default="checkpoints/ml-100k-tiny/sft")
    parser.add_argument("--split", default="valid")
    parser.add_argument("--max-users", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json", default="")
    args = parser.parse_args()

    from engine.decoding import admissible_tree, score_trees
    from engine.recommender import open_recommender
    from training.dataset_view import DatasetView
    from training.evaluate import EvalArgs, teacher_prior

    view = DatasetView.load(args.data)
    rows = {"valid": view.valid, "test": view.test}[args.split]
    rows = rows[:args.max_users] if args.max_users else rows
    recommender, _ = open_recommender(args.checkpoint, args.data, view.codes)
    item_ids = list(view.codes)
    column = {item: n for n, item in enumerate(item_ids)}
    users = len(rows)
    sid = np.full((users, len(item_ids)), -np.inf, dtype=np.float64)
    head = np.full_like(sid, -np.inf)
    started = time.perf_counter()
    for start in tqdm(range(0, users, args.batch_size), desc="exact scores"):
        chunk = rows[start:start + args.batch_size]
        prompts = [recommender.prompt_ids(r["history"]) for r in chunk]
        trees = [admissible_tree(recommender.trie, set(r["history"]), None, 10**9) for r in chunk]
        for u, (tree, (s, h)) in enumerate(zip(trees, score_trees(recommender.model, prompts, trees,
                                                                  recommender.tokenizer.pad_id, recommender.ranker.head,
                                                                  parts=True))):
            cols = [column[str(i)] for i in tree.items]
            sid[start + u, cols] = s
            head[start + u, cols] = h
    seconds = time.perf_counter() - started
    eval_args = EvalArgs(data=args.data, checkpoint=args.checkpoint, split=args.split)
    priors = {}
    for name in ("sasrec", "markov"):
        eval_args.prior = name
        maps = teacher_prior(view, eval_args)([r["history"] for r in rows])
        priors[name] = np.array([[m.get(i, -50.0) for i in item_ids] for m in maps])
    targets = np.array([column[r["target"]] for r in rows])

    def ndcg(scores: np.ndarray, k: int = 10) -> float:
        masked = np.where(np.isfinite(sid), scores, -np.inf)        # the history is never recommended
        target = masked[np.arange(users), targets]
        rank = (masked > target[:, None]).sum(axis=1)
        return float(np.mean(np.where(rank < k, 1.0 / np.log2(rank + 2), 0.0)))

    results = []

    def add(name, **weights):
        scores = weights.get("sid", 0) * sid + weights.get("head", 0) * head
        for prior in ("sasrec", "markov"):
            if weights.get(prior):
                scores = scores + weights[prior] * priors[prior]
        results.append({"ranking": name, **weights, "ndcg@10": round(ndcg(scores), 4)})

    add("SID only (exact)", sid=1)
    add("head only", head=1)
    add("sasrec alone", sasrec=1)
    add("markov alone", markov=1)
    for w in (0.25, 0.5, 1, 1.5, 2, 3, 4):
        add(f"SID + {w} head", sid=1, head=w)
    for w in (1, 2):
        for lam in (0.25, 0.5, 1):
            add(f"SID + {w} head + {lam} sasrec prior", sid=1, head=w, sasrec=lam)
            add(f"SID + {w} head + {lam} markov prior", sid=1, head=w, markov=lam)
    for lam in (0.5, 1):
        add(f"SID + {lam} sasrec prior", sid=1, sasrec=lam)
    report = {"split": args.split, "users": users, "checkpoint": args.checkpoint, "date": time.strftime("%Y-%m-%d %H:%M"),
              "exact_seconds": round(seconds, 1), "results": results}
    print("| ranking | NDCG@10 |\n|---|---:|")
    for r in results:
        print(f"| {r['ranking']} | {r['ndcg@10']:.4f} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    assert math.isfinite(results[0]["ndcg@10"])


if __name__ == "__main__":
    main()
