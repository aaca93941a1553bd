"""Choose the encoder's confidence thresholds on the dev half of the understanding benchmark.

For each (hard z, soft z) pair, every dev request is parsed again (embeddings are cached, so a
pair costs little) and scored as ``thinkrec eval --understanding`` scores it. The held-out half
is reported at the module's values.

    python docs/experiments/understanding_thresholds.py --json results/understanding-thresholds.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from engine import understanding as u
from training.understanding import BENCHMARK, DOMAINS, _Domain, products_catalog, score_row, summarize

DEFAULTS = (u.HARD_Z, u.SOFT_Z)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", default="results/understanding-thresholds.json")
    args = parser.parse_args()
    rows = [json.loads(line) for line in BENCHMARK.read_text().splitlines() if line.strip()]
    domains = {"movies": _Domain(Path(DOMAINS["movies"])), "products": _Domain(products_catalog(Path(DOMAINS["products"])))}
    grid = []
    for hard in (2.6, 2.8, 3.0, 3.2, 3.5):
        for soft in (1.8, 2.0, 2.3, 2.6):
            if soft > hard:
                continue
            u.HARD_Z, u.SOFT_Z = hard, soft
            dev = summarize([score_row(domains[r["domain"]], r) for r in rows if _half(r) == "dev"])["all"]
            grid.append({"hard_z": hard, "soft_z": soft, **{k: dev[k] for k in ("recall", "recall_hard", "precision", "harmful")}})
            print(grid[-1], flush=True)
    # On this benchmark the grid is flat (within one dev row), so the module's values stay: among
    # equals, a higher hard threshold misreads less where it matters, and a soft one below ~2.3
    # leans on words that carry no wish ("hey", "tonight"). The held-out half is scored at them.
    best = {"hard_z": DEFAULTS[0], "soft_z": DEFAULTS[1]}
    u.HARD_Z, u.SOFT_Z = DEFAULTS
    held = summarize([score_row(domains[r["domain"]], r) for r in rows if _half(r) == "held-out"])["all"]
    report = {"grid_dev": grid, "chosen": best, "held_out": held}
    print("chosen", best, "held-out", held)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1))


def _half(row: dict) -> str:
    from training.understanding import half

    return half(row["id"])


if __name__ == "__main__":
    main()
