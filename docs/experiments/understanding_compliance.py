"""Everyday requests through the app's real `/recommend` API: compliance@10 with what each request
meant (the benchmark's intent, not the parser's reading), for dataset users and a fresh user.

Each movie request of training/benchmarks/understanding.jsonl whose intent names categories or
years is sent (after its earlier messages, in the same session) with thinking off. When the turn
asks a question instead, "show those" is sent and the answer scored. A neutral "what should I watch
next?" for the same users is the floor. ``--soft-weights`` re-runs the requests that only lean
(soft readings) at other soft weights, to measure what a leaning buys.

    python docs/experiments/understanding_compliance.py --users 1,2,3,4, --json results/understanding-compliance.json
"""

from __future__ import annotations

import argparse
import json
import socket
import time
from pathlib import Path

import numpy as np
from gradio_client import Client

from engine import understanding
from engine.engine import Engine
from training.understanding import BENCHMARK, _Domain, _intent_mask


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="artifacts/ml-100k")
    parser.add_argument("--checkpoint", default="checkpoints/ml-100k-tiny/sft")
    parser.add_argument("--users", default="1,2,3,4,", help="dataset users; an empty entry is a fresh user")
    parser.add_argument("--soft-weights", default="0,1,2")
    parser.add_argument("--json", default="results/understanding-compliance.json")
    args = parser.parse_args()
    from app.ui import serve

    engine = Engine(args.data, args.checkpoint)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    demo = serve(engine, port=port)
    client = Client(demo.local_url, verbose=False)
    domain = _Domain(Path(args.data))
    rows = [json.loads(line) for line in BENCHMARK.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["domain"] == "movies" and r["kind"] not in ("clarify", "none")
            and _intent_mask(domain, {k: v for k, v in r["expect"].items() if k != "content_items"}) is not None]
    users = args.users.split(",")

    def ask(row: dict, user: str) -> dict:
        session = ""
        for earlier in row.get("before", []):
            session = client.predict(earlier, user, False, session, api_name="/recommend")["session_id"]
        started = time.perf_counter()
        answer = client.predict(row["text"], user, False, session, api_name="/recommend")
        asked = answer.get("question")
        if asked:
            answer = client.predict("show those", user, False, answer["session_id"], api_name="/recommend")
        intent = _intent_mask(domain, {k: v for k, v in row["expect"].items() if k != "content_items"})
        items = [i["item_id"] for i in answer["items"]][:10]
        fit = [bool(intent[domain.facets.row_of[i]]) for i in items]
        return {"id": row["id"], "user": user, "kind": row["kind"], "text": row["text"], "asked": bool(asked),
                "compliance": float(np.mean(fit)) if fit else 0.0, "n": len(items),
                "soft": (answer.get("request") or {}).get("soft", ""), "seconds": time.perf_counter() - started}

    results = [ask(row, user) for row in rows for user in users]
    neutral = []
    for row in rows:
        for user in users:
            if not user:
                continue
            answer = client.predict("what should I watch next?", user, False, "", api_name="/recommend")
            intent = _intent_mask(domain, {k: v for k, v in row["expect"].items() if k != "content_items"})
            neutral.append(float(np.mean([bool(intent[domain.facets.row_of[i["item_id"]]]) for i in answer["items"][:10]])))
    report = {"requests": len(rows), "users": users, "turns": len(results),
              "compliance@10": round(float(np.mean([r["compliance"] for r in results])), 3),
              "all_fit": int(sum(r["compliance"] == 1.0 for r in results)),
              "asked": int(sum(r["asked"] for r in results)),
              "neutral_compliance@10": round(float(np.mean(neutral)), 3) if neutral else None,
              "by_kind": {k: round(float(np.mean([r["compliance"] for r in results if r["kind"] == k])), 3)
                          for k in sorted({r["kind"] for r in results})},
              "p50_s": round(float(np.median([r["seconds"] for r in results])), 3), "rows": results}
    soft_rows = [r for r in rows if any(x["soft"] and x["id"] == r["id"] for x in results)]
    report["soft_weights"] = {}
    for weight in [float(w) for w in args.soft_weights.split(",") if w]:
        understanding.SOFT_WEIGHT = weight
        scored = [ask(row, user) for row in soft_rows for user in users]
        report["soft_weights"][str(weight)] = {"rows": len(soft_rows),
                                               "compliance@10": round(float(np.mean([r["compliance"] for r in scored])), 3)}
        print("soft weight", weight, report["soft_weights"][str(weight)], flush=True)
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}, indent=1))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1))
    demo.close()
    engine.close()


if __name__ == "__main__":
    main()
