"""Issue 25: what a non-thinking turn costs under each ranking, through the real Engine.

Rankings: the SID beams alone (the ranking before issue 25), beams + the item head (its favourites
join the beams), and exact ranking of every admissible item (the default under its budget). Two
requests: none ("what should I watch next?", the whole unseen catalog) and "a 90s comedy please"
(a few hundred items). p50 / p95 over ``--turns`` fresh sessions of dataset users, after a warm-up.

    python docs/experiments/turn_latency.py --data artifacts/ml-100k --checkpoint checkpoints/ml-100k-tiny/sft
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

from app.bench.turns import percentile


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="artifacts/ml-100k")
    parser.add_argument("--checkpoint", default="checkpoints/ml-100k-tiny/sft")
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--json", default="")
    args = parser.parse_args()

    from engine.engine import Engine

    scratch = tempfile.mkdtemp()
    engine = Engine(args.data, args.checkpoint, sessions_url=f"sqlite:///{scratch}/s.db")
    recommender = engine.recommender
    weight, budget = recommender.ranker.head_weight, recommender.ranker.exact_steps
    users = list(engine.user_histories)[:args.turns + 1]
    rows = []
    for name, head_weight, steps in [("SID beams only (before)", 0.0, 0), ("beams + item head", weight, 0),
                                     ("default (exact under the budget)", weight, budget)]:
        recommender.ranker.head_weight, recommender.ranker.exact_steps = head_weight, steps
        for message in ("what should I watch next?", "a 90s comedy please"):
            def turn(user):
                session = engine.start_session(user)
                started = time.perf_counter()
                events = list(engine.turn(session.id, message, thinking=False, k=10))
                trace = next(e.trace for e in events if e.type == "trace")
                return time.perf_counter() - started, trace.ranking.get("method", "beam")

            turn(users[-1])
            results = [turn(u) for u in users[:args.turns]]
            times = [t for t, _ in results]
            rows.append({"ranking": name, "request": message, "p50_s": round(statistics.median(times), 3),
                         "p95_s": round(percentile(times, 0.95), 3),
                         "exact_share": sum(m == "exact" for _, m in results) / len(results)})
            print(rows[-1])
    engine.close()
    print("| ranking | request | p50 | p95 | exact share |\n|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['ranking']} | {r['request']} | {r['p50_s']:.3f} s | {r['p95_s']:.3f} s | {r['exact_share']:.2f} |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
