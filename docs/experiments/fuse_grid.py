"""Experiment (issues 27/28): thinking mode's fused ranking at other view weights, from one pass.

Thinking mode ranks the union of the reasoned and the direct candidates by
``log p(i | history) + weight * log p(i | history, reasoning) - contrast * log p(i | reasoning alone)``
plus the transition prior, then level 3's floor (``Ranker.follow``). The weights date from issue 13,
when the model wrote the reasoning; the engine writes levels 1-2 now. One pass records each user's
candidates with their score under each view and the prior, then every (weight, contrast) pair is
ranked offline, so the grid costs one eval. Run from the repo root:

    python docs/experiments/fuse_grid.py --split valid --users 300 --json results/fuse_grid_valid.json
"""
from __future__ import annotations

import argparse
import json
import time

from engine.ranking import ThinkRank
from engine.recommender import open_recommender
from training.dataset_view import DatasetView
from training.metrics import hit_ndcg


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", default="checkpoints/ml-100k-tiny/sft")
    parser.add_argument("--data", default="artifacts/ml-100k")
    parser.add_argument("--split", default="valid")
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--weights", default="0,0.25,0.5,1,2")
    parser.add_argument("--contrasts", default="0,0.25,0.5,1")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    view = DatasetView.load(args.data)
    rows = {"valid": view.valid, "test": view.test}[args.split][:args.users or None]
    recommender, _ = open_recommender(args.checkpoint, args.data, view.codes)
    ranker = recommender.ranker
    captured = []                       # per batch: pools and each view's scores (weights taken out)
    original = ranker._score_pools

    def capture(pools, views, batch_size):
        """Each view scored alone (weight 1), kept; the fused ranking summed from those same rows, in
        the engine's order, so no view runs the model twice."""
        per_view = []
        for prompts, weight, with_head, known in views:
            ranked = original(pools, [(prompts, 1.0, with_head, known)], batch_size)
            per_view.append([{str(r.item_id): r.score for r in pool} for pool in ranked])
        captured.append((per_view, pools))
        fused = []
        for u, pool in enumerate(pools):
            totals = [0.0] * len(pool)
            for (_, weight, _, _), rows in zip(views, per_view):
                if weight:
                    totals = [t + weight * rows[u][str(i.item_id)] for t, i in zip(totals, pool)]
            fused.append(sorted((type(i)(i.item_id, t, i.token_ids) for i, t in zip(pool, totals)),
                                key=lambda i: -i.score))
        return fused

    ranker._score_pools = capture
    records, started = [], time.perf_counter()
    for start in range(0, len(rows), 32):
        chunk = rows[start:start + 32]
        histories = [r["history"] for r in chunk]
        captured.clear()
        # Served at (0.5, 0.5), so the pass records the reasoning-alone view too (the default, contrast
        # 0, does not run it); "as served" is then the grid's (0.5, 0.5) cell.
        answers = recommender.recommend(histories, k=10, num_beams=20, thinking=True,
                                        think_rank=ThinkRank(weight=0.5, contrast=0.5))
        per_view, pools = captured[-1]
        priors = ranker.priors(histories) or [{} for _ in chunk]
        for u, (row, answer) in enumerate(zip(chunk, answers)):
            records.append({"target": row["target"], "levels": answer.levels, "pool": pools[u],
                            "views": [v[u] for v in per_view],
                            "prior": {str(i.item_id): priors[u].get(str(i.item_id)) for i in pools[u]} if priors[u] else {},
                            "shown": [str(i.item_id) for i in answer.items]})
        print(f"{len(records)}/{len(rows)} users, {time.perf_counter() - started:.0f} s", flush=True)
    if args.json:
        import pickle

        with open(args.json + ".records.pkl", "wb") as handle:
            pickle.dump(records, handle)
    targets = [r["target"] for r in records]
    report = {"users": len(records), "split": args.split,
              "as_served": hit_ndcg([r["shown"] for r in records], targets, (10,))["ndcg@10"], "grid": []}
    for weight in [float(w) for w in args.weights.split(",")]:
        for contrast in [float(c) for c in args.contrasts.split(",")]:
            ranked = []
            for r in records:
                direct, reasoned = r["views"][0], r["views"][1]
                alone = r["views"][2] if len(r["views"]) > 2 else {}
                said = [r["prior"].get(str(i.item_id)) for i in r["pool"]]
                floor = min((x for x in said if x is not None), default=0.0)
                pool = []
                for item in r["pool"]:
                    key = str(item.item_id)
                    prior = r["prior"].get(key)
                    score = (direct[key] + weight * reasoned[key] - contrast * alone.get(key, 0.0)
                             + ranker.prior_weight * (floor if prior is None else prior))
                    pool.append(type(item)(item.item_id, score, item.token_ids))
                pool.sort(key=lambda i: -i.score)
                followed = ranker.follow(pool, r["levels"].get("recommendation", ""), ranker.follow_weight,
                                         ranker.follow_share, 10)[:10]
                ranked.append([str(i.item_id) for i in followed])
            ndcg = hit_ndcg(ranked, targets, (10,))["ndcg@10"]
            report["grid"].append({"weight": weight, "contrast": contrast, "ndcg@10": round(ndcg, 5)})
            print(f"weight {weight:<5} contrast {contrast:<5} NDCG@10 {ndcg:.4f}", flush=True)
    print(f"as served: {report['as_served']:.4f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=1)


if __name__ == "__main__":
    main()
