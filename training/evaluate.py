"""Full-catalog leave-one-out evaluation, every method side by side on the same split:
``popularity``, ``markov`` (transition counts), ``sasrec``, ``thinkrec`` (no reasoning, beam search over SID steps) and
``thinkrec-think`` (three-level reasoning first, then the same beam search).

    thinkrec eval --data artifacts/ml-100k --checkpoint checkpoints/ml-100k-tiny/sft --split test \
        --json results/test.json
    thinkrec eval --steering ...        # requests vs neutral messages (training/steering.py)

Writes OUT (JSON: {"split", "num_users", "results": {name: {"hr@K", "ndcg@K", "invalid_rate", ...}}}),
OUT with .md (a markdown table) and .png (a bar chart). History items are excluded from every
ranking. ``invalid_rate`` counts generated SIDs that are not catalog items (0 under the trie).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from training.labelled import parse_checkpoints
from training.metrics import hit_ndcg

KS = (1, 5, 10, 20)
METHODS = ("popularity", "markov", "sasrec", "thinkrec", "thinkrec-think", "thinkrec-reasoned", "thinkrec-race")
# Thinking rows: the app's thinking mode (--think-rank, default fused), and two fixed ablations of
# how its beams become a ranking: the reasoned beams alone, and OneReason's Race.
THINKING_ROWS = {"thinkrec-think": None, "thinkrec-reasoned": "reasoned", "thinkrec-race": "race"}


@dataclass
class EvalArgs:
    data: str = "artifacts/ml-100k"     # dataset artifact folder (thinkrec data build)
    checkpoint: str = "checkpoints/ml-100k-tiny/sft"  # checkpoint folder, or several side by side: sft=DIR,rl=DIR
    split: str = "test"                 # valid or test
    json: str | None = None             # write the report here (plus .md table and .png chart beside it)
    methods: str = "popularity,markov,sasrec,thinkrec,thinkrec-think,thinkrec-race"  # any of METHODS, comma-separated
    num_beams: int = 20                 # beam width over the SID steps (>= 20, the largest K)
    max_users: int = 0                  # 0: every user of the split
    batch_size: int = 16                # users decoded together
    max_reasoning_tokens: int = 320     # reasoning budget, every token counted (engine.reasoning.FULL_REASONING_TOKENS)
    sasrec: str | None = None           # a saved SASRec; trained (and saved beside the checkpoint) if missing
    sasrec_epochs: int = 200            # upper bound on SASRec epochs when it must be trained
    seed: int = 0                       # seed for data order, initialisation and sampling
    backend: str = "transformers"       # transformers (in process) or vllm (a thinkrec serve-model server)
    model_url: str | None = None        # the server's URL with --backend vllm (it must serve --checkpoint)
    follow_weight: float | None = None  # thinking rows: soft prior toward level 3's attributes (None: the recommender's default)
    follow_share: float | None = None   # thinking rows: floor on the top-10 share carrying level 3's attributes (None: default)
    follow_weights: str = ""            # e.g. 0,0.5,1,2: each thinking row again at these prior weights (same reasoning and beams)
    follow_shares: str = ""             # e.g. 0.8,0.9: each thinking row again with these floors (same reasoning and beams)
    think_rank: str = "fused"           # thinkrec-think: reasoned, race or fused (engine.recommender.ThinkRank)
    think_weight: float | None = None   # fused: weight of log p(item | history, reasoning) (None: ThinkRank's default)
    contrast: float | None = None       # fused: weight of - log p(item | reasoning alone), LICD (None: ThinkRank's default)
    recent_view: int = 0                # thinkrec rows: also rank from the latest N history items (0: one view)
    recent_weight: float = 0.5          # weight of that second view's log-probability
    head_weight: float | None = None    # thinkrec rows: weight of the item head's log-probability beside the SID path's (None: the recommender's default; 0: SID only)
    exact_steps: int | None = None      # thinkrec rows: forward-step budget of exact ranking (None: default; 0: always beam search)
    prior: str = ""                     # thinkrec rows: the decode-time prior: empty = the served one (the training split's transitions), none, sasrec or markov (the split's known sequences)
    prior_weight: float | None = None   # the prior's log-probability's weight beside thinkrec's score (None: the served weight, 0.5 for sasrec/markov)
    reasoning_budgets: str = ""         # e.g. 40,80,120,160: the thinking rows at each reasoning-token cap (a length curve)
    read_levels: bool = True            # thinking rows: the engine writes levels 1-2 from the long history (False: the model writes all three)
    lead_next: bool = True              # thinking rows: level 3 leads with the predicted next category (False: the model picks)
    read_items: int = 400               # the reader's budget: latest history items levels 1-2 read (0: all)
    history_items: int | None = None    # latest history items a prompt lists (None: as the checkpoint was trained; 0: all)
    steering: bool = False              # run the steering benchmark instead (requests vs neutral, training/steering.py)
    steering_users: int = 40            # --steering: sampled dataset users of the split
    steering_fresh: int = 10            # --steering: fresh users (no history)
    understanding: bool = False         # run the request-understanding benchmark instead (no model; training/understanding.py)
    understanding_file: str = ""        # --understanding: another benchmark file (default: training/benchmarks/understanding.jsonl)
    no_meaning: bool = False            # --understanding: the word-table parser alone (no sentence-encoder reading)


def _rows(view, split: str, max_users: int) -> list[dict]:
    rows = {"valid": view.valid, "test": view.test}[split]
    return rows[:max_users] if max_users else rows


def _stored_users(path: Path) -> int:
    """How many users the eval stored at ``path`` covers (0: none, or unreadable)."""
    try:
        return int(json.loads(path.read_text()).get("num_users", 0))
    except (OSError, ValueError, AttributeError):
        return 0


def check_args(args: EvalArgs) -> None:
    """The options a run would trip on late (after minutes of decoding), refused before it starts."""
    if args.split not in ("valid", "test"):
        raise ValueError(f"--split must be valid or test, not '{args.split}'")
    for name in ("max_users",):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be 0 (every user) or more, not {getattr(args, name)}")
    for name in ("batch_size", "num_beams"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(args, name)}")
    if not args.steering and not args.understanding and not [m for m in args.methods.split(",") if m.strip()]:
        raise ValueError("--methods names no method (choose from " + ", ".join(METHODS) + ")")
    if args.json and Path(args.json).is_dir():
        raise ValueError(f"--json {args.json} is a folder; give a file path for the report")


def _sasrec(view, args: EvalArgs):
    """SASRec beside the (first) checkpoint, or at ``--sasrec``; trained there when missing."""
    from training.sasrec import load_or_fit

    first = next(iter(parse_checkpoints(args.checkpoint).values()))
    path = Path(args.sasrec) if args.sasrec else Path(first).parent / "sasrec.pt"
    return load_or_fit(path, view, args.sasrec_epochs, args.seed)


def _score(ranked: list[list[str]], rows: list[dict], seconds: float, catalog: set[str], extra: dict | None = None) -> dict:
    metrics = hit_ndcg(ranked, [r["target"] for r in rows], KS)
    generated = sum(len(r) for r in ranked)
    invalid = sum(1 for r in ranked for item in r if item not in catalog)
    repeats = sum(len(r) - len(set(r)) for r in ranked)
    seen = sum(len(set(r) & set(row["history"])) for r, row in zip(ranked, rows))
    return {**{k: round(v, 5) for k, v in metrics.items()},
            "invalid_rate": invalid / max(generated, 1), "repeat_rate": repeats / max(generated, 1),
            "seen_rate": seen / max(generated, 1), "seconds": round(seconds, 1),
            "users_per_s": round(len(rows) / max(seconds, 1e-9), 2),
            "items_per_s": round(generated / max(seconds, 1e-9), 1), **(extra or {})}


def by_history_length(direct: list[list[str]], think: list[list[str]], rows: list[dict], known,
                      groups: int = 4) -> list[dict]:
    """NDCG@10 of the direct and the thinking answers per history-length group: the split's users in
    ``groups`` equal-sized groups by how many catalog items their history has (so the groups are
    sized by the data). Where thinking wins tells what the adaptive budget should reason on."""
    lengths = [sum(1 for i in row["history"] if i in known) for row in rows]
    order = sorted(range(len(rows)), key=lambda u: lengths[u])
    out = []
    for g in range(groups):
        users = order[g * len(order) // groups:(g + 1) * len(order) // groups]
        if not users:
            continue
        targets = [rows[u]["target"] for u in users]
        d = hit_ndcg([direct[u] for u in users], targets, (10,))["ndcg@10"]
        t = hit_ndcg([think[u] for u in users], targets, (10,))["ndcg@10"]
        out.append({"history_items": f"{lengths[users[0]]}-{lengths[users[-1]]}", "users": len(users),
                    "direct_ndcg@10": round(d, 5), "thinking_ndcg@10": round(t, 5)})
    return out


def teacher_prior(view, args: EvalArgs):
    """``histories -> [{item_id: log p}]`` from SASRec (log-softmax of its scores over the catalog) or
    the transition counts (votes smoothed by popularity, normalised): the decode-time prior."""
    import numpy as np

    if args.prior == "sasrec":
        model = _sasrec(view, args)

        def sasrec_prior(histories):
            scores = model.catalog_scores([list(h) for h in histories])
            scores = scores - scores.max(axis=1, keepdims=True)
            logp = scores - np.log(np.exp(scores).sum(axis=1, keepdims=True))
            return [dict(zip(model.item_ids, row.tolist())) for row in logp]

        return sasrec_prior
    if args.prior == "markov":
        from training.transitions import TransitionRecommender, known_sequences

        counts = TransitionRecommender().fit(known_sequences(view, args.split))

        def markov_prior(histories):
            return [counts.log_prior(history, len(view.items)) for history in histories]

        return markov_prior
    raise ValueError(f"unknown prior '{args.prior}' (choose sasrec or markov)")


def _recommend_with_progress(recommender, histories: list, desc: str, reasoning=None, **options):
    """``recommender.recommend`` over the users in chunks of whole batches, with a progress bar
    (a thinking row on every user of a split takes minutes on a CPU)."""
    from tqdm.auto import tqdm

    chunk = max(1, options.get("batch_size", 16)) * 4
    answers = []
    with tqdm(total=len(histories), desc=desc, unit="user", leave=False, dynamic_ncols=True) as bar:
        for start in range(0, len(histories), chunk):
            part = histories[start:start + chunk]
            answers += recommender.recommend(part, reasoning=None if reasoning is None else reasoning[start:start + chunk],
                                             **options)
            bar.update(len(part))
    return answers


def run(args: EvalArgs) -> dict:
    check_args(args)
    if args.understanding:
        from training.understanding import run_understanding

        return run_understanding(args)
    import torch

    from engine.recommender import open_recommender
    from training.dataset_view import DatasetView
    from training.popularity import PopularityRecommender

    if args.steering:
        from training.steering import run_steering

        return run_steering(args)
    torch.manual_seed(args.seed)
    view = DatasetView.load(args.data)
    rows = _rows(view, args.split, args.max_users)
    histories = [r["history"] for r in rows]
    catalog = set(view.items)
    k = max(KS)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)} (choose from {', '.join(METHODS)})")
    results = {}
    if "popularity" in methods:
        started = time.perf_counter()
        # Before the test target the model may know everything up to the valid target.
        extra = [r["target"] for r in view.valid] if args.split == "test" else []
        ranked = PopularityRecommender().fit(view.train, extra).recommend_batch(histories, k)
        results["popularity"] = _score(ranked, rows, time.perf_counter() - started, catalog)
    if "markov" in methods:
        from training.transitions import TransitionRecommender, known_sequences

        started = time.perf_counter()
        ranked = TransitionRecommender().fit(known_sequences(view, args.split)).recommend_batch(histories, k)
        results["markov"] = _score(ranked, rows, time.perf_counter() - started, catalog)
    if "sasrec" in methods:
        model = _sasrec(view, args)
        started = time.perf_counter()
        ranked = model.recommend_batch(histories, k)
        results["sasrec"] = _score(ranked, rows, time.perf_counter() - started, catalog)
    thinking_modes = [(m, m in THINKING_ROWS) for m in ("thinkrec",) + tuple(THINKING_ROWS) if m in methods]
    checkpoints = parse_checkpoints(args.checkpoint) if thinking_modes else {}
    if args.backend == "vllm" and checkpoints and (not args.model_url or len(checkpoints) > 1):
        raise ValueError("--backend vllm needs --model-url and one checkpoint (the one the server serves)")
    if checkpoints:
        from training.reasoning_metrics import scorer_for

        scorer = scorer_for(view)
    from engine.ranking import ThinkRank

    default_rank = ThinkRank(args.think_rank,
                             ThinkRank.weight if args.think_weight is None else args.think_weight,
                             ThinkRank.contrast if args.contrast is None else args.contrast)
    budgets = [int(b) for b in args.reasoning_budgets.split(",") if b.strip()] or [args.max_reasoning_tokens]
    runs = [(method, thinking, budget) for method, thinking in thinking_modes
            for budget in (budgets if thinking else [args.max_reasoning_tokens])]
    for label, checkpoint in checkpoints.items():
        recommender, meta = open_recommender(checkpoint, args.data, view.codes, args.backend, args.model_url,
                                             history_items=args.history_items)
        planner, ranker = recommender.planner, recommender.ranker
        planner.read_levels = args.read_levels and planner.reader is not None
        planner.lead_next = args.lead_next
        if planner.reader is not None:
            planner.reader.read_items = args.read_items
        ranker.recent_view, ranker.recent_weight = args.recent_view, args.recent_weight
        if args.head_weight is not None and ranker.head is not None:
            ranker.head_weight = args.head_weight
        if args.exact_steps is not None:
            ranker.exact_steps = args.exact_steps
        if args.prior == "none":
            ranker.prior, ranker.prior_weight, ranker.prior_name = None, 0.0, ""
        elif args.prior:
            ranker.prior, ranker.prior_name = teacher_prior(view, args), args.prior
            ranker.prior_weight = 0.5 if args.prior_weight is None else args.prior_weight
        elif args.prior_weight is not None:
            ranker.prior_weight = args.prior_weight
        # Thinking rows differ only in how beams become a ranking: the first row at a budget
        # generates the reasoning, later rows reuse it (their users/s then leave reasoning out).
        reasoned: dict[int, list[list[int]]] = {}
        rankings: dict[str, list[list[str]]] = {}
        for method, thinking, budget in runs:
            name = f"{method} [{label}]" if label else method
            if thinking and len(budgets) > 1:
                name += f" @{budget}"
            rank = ThinkRank(THINKING_ROWS[method]) if THINKING_ROWS.get(method) else default_rank
            started = time.perf_counter()
            answers = _recommend_with_progress(recommender, histories, name,
                                               reasoning=reasoned.get(budget) if thinking else None,
                                               k=k, num_beams=max(args.num_beams, k), thinking=thinking,
                                               max_reasoning_tokens=budget, batch_size=args.batch_size,
                                               follow_weight=args.follow_weight, follow_share=args.follow_share,
                                               shown=10, think_rank=rank)
            seconds = time.perf_counter() - started
            ranked = [[str(i.item_id) for i in a.items] for a in answers]
            extra = {"checkpoint": checkpoint, "stage": meta.stage, "backend": args.backend,
                     "prior": ranker.prior_name if ranker.prior is not None else "none", "prior_weight": ranker.prior_weight,
                     "head_weight": ranker.head_weight, "exact_steps": ranker.exact_steps,
                     "exact_share": sum(a.ranking.get("method") == "exact" for a in answers) / max(len(answers), 1)}
            if thinking:
                extra["think_rank"] = {"mode": rank.mode, "weight": rank.weight, "contrast": rank.contrast}
                extra["max_reasoning_tokens"] = budget
                extra["reasoning_reused"] = budget in reasoned
                reasoned.setdefault(budget, [a.reasoning_ids for a in answers])
            if thinking:
                from engine.prompt import well_formed
                extra["well_formed_rate"] = sum(well_formed(a.reasoning + "</think>") for a in answers) / max(len(answers), 1)
                extra["mean_reasoning_tokens"] = sum(a.reasoning_tokens for a in answers) / max(len(answers), 1)
                extra["example_reasoning"] = answers[0].levels if answers else {}
                # The levels' quality as numbers: grounding, faithfulness, level-3 accuracy.
                extra["reasoning"] = scorer.score([a.levels for a in answers], histories, ranked,
                                                  [r["target"] for r in rows], read_items=args.read_items)
                extra["read_levels"], extra["lead_next"] = planner.read_levels, planner.lead_next
            results[name] = _score(ranked, rows, seconds, catalog, extra)
            rankings[method] = (name, ranked)
            variants = [("follow", float(w), 0.0) for w in args.follow_weights.split(",") if w.strip()]
            variants += [("share", 0.0, float(w)) for w in args.follow_shares.split(",") if w.strip()]
            for kind, weight, share in (variants if thinking else []):
                # Following level 3 only re-ranks the candidates this row already has: no decoding again.
                followed = [[str(i.item_id) for i in ranker.follow(a.candidates, a.levels.get("recommendation", ""),
                                                                        weight, share, 10)[:k]] for a in answers]
                reasoning = scorer.score([a.levels for a in answers], histories, followed, [r["target"] for r in rows])
                results[f"{name} {kind}={weight or share:g}"] = _score(
                    followed, rows, seconds, catalog,
                    {**extra, "follow_weight": weight, "follow_share": share, "reasoning": reasoning})
        if "thinkrec" in rankings and "thinkrec-think" in rankings:
            # The adaptive budget ("auto"): each user's thinking answer (the last budget's) where the
            # engine would reason (an active request; an eval row has none), the direct one
            # elsewhere. No decoding.
            (direct_name, direct), (think_name, think) = rankings["thinkrec"], rankings["thinkrec-think"]
            worth = [recommender.worth_reasoning(None) for _ in histories]
            share = sum(worth) / len(worth)
            seconds = share * results[think_name]["seconds"] + (1 - share) * results[direct_name]["seconds"]
            results[f"thinkrec-auto [{label}]" if label else "thinkrec-auto"] = _score(
                [t if w else d for w, t, d in zip(worth, think, direct)], rows, seconds, catalog,
                {"thinking_share": round(share, 4)})
            results[think_name]["by_history"] = by_history_length(direct, think, rows, recommender.planner.known)
    report = {"split": args.split, "num_users": len(rows), "num_items": len(catalog),
              "dataset_fingerprint": view.manifest.fingerprint, "args": asdict(args), "results": results}
    report["date"] = time.strftime("%Y-%m-%d %H:%M")
    if args.json:
        write_report(report, Path(args.json))
    # The checkpoint keeps its latest eval of each split beside it: the app's Model tab shows it. A run
    # on fewer users (--max-users) never replaces an eval of more.
    for folder in checkpoints.values():
        stored = Path(folder) / f"eval_{args.split}.json"
        if Path(folder).is_dir() and _stored_users(stored) <= len(rows):
            stored.write_text(json.dumps(report, indent=2) + "\n")
        elif Path(folder).is_dir():
            print(f"{stored} covers {_stored_users(stored)} users, this run {len(rows)}: left as it is")
    print(markdown_table(report))
    return report


def markdown_table(report: dict) -> str:
    columns = [f"{m}@{k}" for k in KS for m in ("hr", "ndcg")] + ["invalid_rate", "users_per_s"]
    lines = [f"split `{report['split']}`, {report['num_users']} users, {report['num_items']} items, "
             "full-catalog ranking, history excluded", "",
             "| method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, values in report["results"].items():
        cells = [f"{values[c]:.4f}" if c != "users_per_s" else f"{values[c]:.1f}" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    thinking = {name: v["reasoning"] for name, v in report["results"].items() if v.get("reasoning")}
    if thinking:
        keys = ["ungrounded_share", "traces_with_ungrounded", "distinct_interests", "trend_truth",
                "top_evolution_share", "faithfulness", "faithfulness_categories", "level3_category_accuracy",
                "baseline_category_accuracy", "level3_category_hit", "baseline_category_hit",
                "level3_decade_accuracy", "baseline_decade_accuracy"]
        lines += ["", "Reasoning (thinking rows): citations outside the history, repeats, interests, faithfulness "
                      "(top-10 carrying a level-3 attribute), trend truth, the share of the most common level-2 text, "
                      "level-3 accuracy against the true next item beside the last-10 baseline", "",
                  "| method | mean tokens | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
        for name, values in thinking.items():
            tokens = report["results"][name].get("mean_reasoning_tokens", 0)
            lines.append(f"| {name} | {tokens:.0f} | " + " | ".join("–" if values[k] is None else f"{values[k]}"
                                                                    for k in keys) + " |")
    for name, values in report["results"].items():
        if values.get("by_history"):
            lines += ["", f"{name} against the direct row, by history length (equal-sized user groups)", "",
                      "| history items | users | direct NDCG@10 | thinking NDCG@10 |", "|---|---|---|---|"]
            lines += [f"| {g['history_items']} | {g['users']} | {g['direct_ndcg@10']:.4f} | {g['thinking_ndcg@10']:.4f} |"
                      for g in values["by_history"]]
    return "\n".join(lines)


def write_report(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    path.with_suffix(".md").write_text(markdown_table(report) + "\n")
    names = list(report["results"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, metric in zip(axes, ("hr", "ndcg")):
        width = 0.8 / max(len(names), 1)
        for i, name in enumerate(names):
            values = [report["results"][name][f"{metric}@{k}"] for k in KS]
            ax.bar([x + i * width for x in range(len(KS))], values, width, label=name)
        ax.set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(KS))], [f"@{k}" for k in KS])
        ax.set_title(f"{metric.upper()} ({report['split']}, {report['num_users']} users)")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"), dpi=110)
    plt.close(fig)
    curves: dict[str, list[tuple[float, float]]] = {}
    for name, values in report["results"].items():
        if " @" in name:
            curves.setdefault(name.split(" @")[0], []).append((values["mean_reasoning_tokens"], values["ndcg@10"]))
    if curves:
        # Accuracy against reasoning length: one line per thinking row, the non-thinking rows flat.
        fig, ax = plt.subplots(figsize=(6, 3.8))
        for name, points in curves.items():
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
        for name, values in report["results"].items():
            if "mean_reasoning_tokens" not in values:
                ax.axhline(values["ndcg@10"], linestyle="--", linewidth=1, color="gray")
                ax.annotate(name, (0, values["ndcg@10"]), fontsize=7, color="gray")
        ax.set_xlabel("mean reasoning tokens")
        ax.set_ylabel("NDCG@10")
        ax.set_title(f"Accuracy vs reasoning length ({report['split']}, {report['num_users']} users)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path.with_name(path.stem + "_length.png"), dpi=110)
        plt.close(fig)
