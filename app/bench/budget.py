"""``thinkrec bench-budget``: what the reasoning budget buys. For each budget (off, short, full, or
token counts) it measures the two things a demo on slow hardware trades against each other:

- accuracy: leave-one-out HR/NDCG on a split (valid by default, so the test split stays unseen),
  through the same ``thinkrec eval`` code; "off" is the non-thinking row;
- latency: whole chat turns through the engine, one at a time, each for a different dataset user
  (so the Think-Ahead cache never answers), p50/p95 seconds and the reasoning tokens written.

A budget caps what the model writes freely in levels 1-2 (engine/recommender.py); level 3, which
the items follow, is always written whole, so a turn's reasoning can run past a small cap; the
report gives the tokens actually written.

It writes a JSON report, a Markdown table and ``<json>.png``: NDCG@10 against p50 turn latency.

    thinkrec bench-budget --data artifacts/ml-100k --checkpoint checkpoints/ml-100k-tiny/sft \\
        --split valid --max-users 300 --budgets off,short,128,full --turns 20 --json results/budget.json
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm


@dataclass
class BudgetArgs:
    data: str = "artifacts/ml-100k"     # dataset artifact folder
    checkpoint: str = "checkpoints/ml-100k-tiny/sft"  # the checkpoint to measure
    split: str = "valid"                # accuracy on this split (valid keeps test unseen)
    max_users: int = 300                # users of the split for accuracy (0: all)
    budgets: str = "off,short,128,full,auto"  # budget names (engine.engine.BUDGETS) or token counts
    turns: int = 20                     # chat turns per budget for latency
    message: str = "what should I watch next?"  # the latency turns' message (neutral, like the eval)
    seed: int = 0
    json: str | None = None             # write the report here (plus .md and .png beside it)


def parse_budgets(spec: str) -> list[tuple[str, int]]:
    """``"off,short,128"`` -> [("off", 0), ("short", 1), ("128", 128)] ("short": each turn's shortest complete reasoning), in order, no repeats."""
    from engine.engine import budget_tokens

    budgets: list[tuple[str, int]] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        tokens = budget_tokens(int(part) if part.isdigit() else part)
        # "auto" reasons at the full budget where worth it: a point of its own, not a repeat of "full".
        if part == "auto" and part not in [n for n, _ in budgets]:
            budgets.append((part, tokens))
        elif part != "auto" and tokens not in [t for n, t in budgets if n != "auto"]:
            budgets.append((part, tokens))
    if not budgets:
        raise ValueError("--budgets is empty: give names (off, short, full) or token counts, comma-separated")
    return budgets


def measure_latency(engine, users: list[str], budgets: list[tuple[str, int]], turns: int, message: str) -> dict:
    """Per budget: p50/p95 of whole turns and the mean reasoning tokens, one turn at a time, each
    for a user no earlier turn used (no Think-Ahead replay)."""
    from app.bench.turns import percentile
    from engine.events import ErrorEvent, TraceEvent

    if len(users) < turns * len(budgets) + 1:
        turns = max(1, (len(users) - 1) // len(budgets))
    warm = engine.start_session(user_id=users[-1])
    list(engine.turn(warm.id, message, thinking=True, k=10))          # one-off costs out of the way
    report, position = {}, 0
    for name, tokens in budgets:
        seconds, written = [], []
        for _ in tqdm(range(turns), desc=f"latency @{name}", leave=False):
            session = engine.start_session(user_id=users[position])
            position += 1
            started = time.perf_counter()
            for event in engine.turn(session.id, message, thinking=tokens > 0, k=10,
                                     budget=name if name == "auto" else tokens):
                if isinstance(event, ErrorEvent):
                    raise RuntimeError(f"the engine refused a latency turn: {event.message}")
                if isinstance(event, TraceEvent):
                    written.append(event.trace.reasoning_tokens)
            seconds.append(time.perf_counter() - started)
        report[name] = {"tokens": tokens, "turns": len(seconds), "p50_s": round(statistics.median(seconds), 3),
                        "p95_s": round(percentile(seconds, 0.95), 3),
                        "mean_reasoning_tokens": round(statistics.fmean(written), 1) if written else 0.0}
    return report


def run_budget_curve(args: BudgetArgs) -> dict:
    from engine.engine import BUDGETS, Engine
    from training.evaluate import EvalArgs
    from training.evaluate import run as run_eval

    budgets = parse_budgets(args.budgets)
    thinking = sorted({t for n, t in budgets if t > 0})
    adaptive = any(n == "auto" for n, _ in budgets)
    methods = (["thinkrec"] if adaptive or any(t == 0 for _, t in budgets) else []) \
        + (["thinkrec-think"] if thinking else [])
    accuracy = run_eval(EvalArgs(data=args.data, checkpoint=args.checkpoint, split=args.split,
                                 max_users=args.max_users, methods=",".join(methods), seed=args.seed,
                                 max_reasoning_tokens=thinking[-1] if thinking else BUDGETS["full"],
                                 reasoning_budgets=",".join(str(t) for t in thinking)))
    results = accuracy["results"]

    def row_of(name: str, tokens: int) -> dict:
        if name == "auto":
            return results["thinkrec-auto"]
        if tokens == 0:
            return results["thinkrec"]
        return results.get(f"thinkrec-think @{tokens}", results.get("thinkrec-think"))

    with tempfile.TemporaryDirectory() as scratch:
        engine = Engine(args.data, args.checkpoint, sessions_url=f"sqlite:///{scratch}/budget.db", batching=False)
        try:
            latency = measure_latency(engine, list(engine.user_histories), budgets, args.turns, args.message)
        finally:
            engine.close()
    points = []
    for name, tokens in budgets:
        row = row_of(name, tokens)
        points.append({"budget": name, "tokens": tokens, "hr@10": row["hr@10"], "ndcg@10": row["ndcg@10"],
                       "invalid_rate": row["invalid_rate"],
                       "eval_mean_reasoning_tokens": round(row.get("mean_reasoning_tokens", 0.0), 1),
                       "eval_users_per_s": row["users_per_s"], **{f"turn_{k}": v for k, v in latency[name].items()
                                                                 if k != "tokens"}})
    report = {"split": accuracy["split"], "num_users": accuracy["num_users"], "date": time.strftime("%Y-%m-%d %H:%M"),
              "dataset_fingerprint": accuracy["dataset_fingerprint"], "args": asdict(args), "points": points}
    if args.json:
        write_budget_report(report, Path(args.json))
    print(budget_table(report))
    return report


def budget_table(report: dict) -> str:
    lines = [f"reasoning budget on `{report['split']}`, {report['num_users']} users (accuracy); "
             "turn latency one turn at a time", "",
             "| budget | tokens cap | reasoning tokens written | HR@10 | NDCG@10 | invalid | turn p50 s | turn p95 s |"
             " eval users/s |", "|---" * 9 + "|"]
    for p in report["points"]:
        cap = "each turn's shortest" if p["budget"] == "short" else p["tokens"]
        lines.append(f"| {p['budget']} | {cap} | {p['turn_mean_reasoning_tokens']:.0f} | {p['hr@10']:.4f} | "
                     f"{p['ndcg@10']:.4f} | {p['invalid_rate']:.3f} | {p['turn_p50_s']:.3f} | {p['turn_p95_s']:.3f} |"
                     f" {p['eval_users_per_s']:.1f} |")
    return "\n".join(lines)


def write_budget_report(report: dict, path: Path) -> None:
    from training.plots import _pyplot

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    path.with_suffix(".md").write_text(budget_table(report) + "\n")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    # The fixed budgets form the curve (in latency order); "auto" picks per turn, so it is a point
    # of its own, labelled below so it cannot sit on a neighbour's label.
    fixed = sorted((p for p in report["points"] if p["budget"] != "auto"), key=lambda p: p["turn_p50_s"])
    ax.plot([p["turn_p50_s"] for p in fixed], [p["ndcg@10"] for p in fixed], marker="o", label="fixed budget")
    adaptive = [p for p in report["points"] if p["budget"] == "auto"]
    if adaptive:
        ax.plot([p["turn_p50_s"] for p in adaptive], [p["ndcg@10"] for p in adaptive], marker="D", linestyle="",
                color="tab:orange", label="auto (reasons under a request)")
        ax.legend(fontsize=8, loc="best")
    for p in report["points"]:
        below = p["budget"] == "auto"
        ax.annotate(f"{p['budget']} ({p['turn_mean_reasoning_tokens']:.0f} tok)", (p["turn_p50_s"], p["ndcg@10"]),
                    textcoords="offset points", xytext=(-10, -12) if below else (6, 4), fontsize=8,
                    ha="right" if below else "left")
    ax.margins(x=0.2, y=0.15)         # room for the labels
    ax.set_xlabel("p50 turn latency (s, one turn at a time)")
    ax.set_ylabel("NDCG@10")
    ax.set_title(f"Reasoning budget: accuracy vs latency ({report['split']}, {report['num_users']} users)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"), dpi=110)
    plt.close(fig)
