"""Latency of one ranking turn: exact ranking of the whole admissible catalog against beam search,
for synthetic catalogs of several sizes, with the ``tiny`` preset's model and an item head.

    thinkrec bench-exact --items 1682,10000,100000 --json results/exact_bench.json

Each size gets SIDs of the shape the data build gives it (``codebook_size_for``: a power of two
with ~16x headroom) at random, a history of ``history`` excluded items, and a prompt of
``prompt_tokens``. Timed per turn (median of ``repeats``): walking the admissible tree, scoring
every admissible item (score_trees), and beam search with ``num_beams`` over the SID steps plus
the head re-scoring of its beams (what rank_items does above the budget). Also reported: the
forward steps exact ranking needs, whether the default budget admits it, and the item head's
memory at that size and at 10^6 items.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass


@dataclass
class ExactBenchArgs:
    items: str = "1682,10000,100000"   # catalog sizes, comma-separated
    levels: int = 3                     # SID levels
    prompt_tokens: int = 150            # prompt length (a 20-item history in the serving layout is ~150)
    history: int = 50                   # items excluded (the user's history)
    num_beams: int = 20                 # beam width of the comparison
    repeats: int = 3                    # turns timed per size (median reported)
    exact_limit: int = 200_000          # skip timing exact ranking above this many forward steps
    seed: int = 0
    json: str | None = None             # also write the report here


def _synthetic_trie(items: int, levels: int, rng: random.Random, base: int):
    from data.quantize import codebook_size_for
    from engine.sid import SIDTrie

    size = codebook_size_for(items, levels)
    paths = set()
    while len(paths) < items:
        paths.add(tuple(base + level * size + rng.randrange(size) for level in range(levels)))
    ids = [str(n) for n in range(items)]
    return SIDTrie(zip(ids, sorted(paths))), ids, size


def run(args: ExactBenchArgs, progress=print) -> dict:
    import torch

    with torch.no_grad():           # locally: a library call must not switch autograd off for its caller
        return _run(args, progress)


def _run(args: ExactBenchArgs, progress) -> dict:
    import torch
    from transformers import Qwen3ForCausalLM

    from engine.decoding import admissible_tree, beam_search_items, score_paths, score_trees
    from engine.item_head import ItemHead, attach
    from engine.ranking import EXACT_FACTOR
    from app.bench.catalog import bench_model_config

    rows = []
    base = 16
    for items in [int(n) for n in args.items.split(",") if n.strip()]:
        rng = random.Random(args.seed)
        trie, ids, size = _synthetic_trie(items, args.levels, rng, base)
        torch.manual_seed(args.seed)
        model = Qwen3ForCausalLM(bench_model_config(base + args.levels * size + 8)).eval()
        head = ItemHead(ids, model.config.hidden_size)
        attach(model, head)
        prompt = [rng.randrange(2, base) for _ in range(args.prompt_tokens)]
        exclude = set(rng.sample(ids, min(args.history, items)))

        def timed(fn):
            times = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                value = fn()
                times.append(time.perf_counter() - started)
            return statistics.median(times) * 1e3, value

        walk_ms, tree = timed(lambda: admissible_tree(trie, exclude, None, args.exact_limit))
        row = {"items": items, "codebook_size": size, "exact_steps": tree.steps if tree else None,
               "default_budget": (budget := EXACT_FACTOR * args.num_beams * (args.levels - 1)),
               "exact_by_default": tree is not None and tree.steps <= budget,
               "tree_walk_ms": round(walk_ms, 1),
               "head_mb": round(ItemHead.nbytes(items, model.config.hidden_size) / 2**20, 1),
               "head_mb_at_1e6": round(ItemHead.nbytes(10**6, model.config.hidden_size) / 2**20, 1)}
        if tree is not None:
            score_ms, _ = timed(lambda: score_trees(model, [prompt], [tree], 0, head, 1.0))
            row["exact_ms"] = round(walk_ms + score_ms, 1)

        def beams():
            found = beam_search_items(model, [prompt], trie, [exclude], 0, k=args.num_beams, num_beams=args.num_beams)
            paths = [[list(b.token_ids) for b in found[0]]]
            return score_paths(model, [prompt], paths, 0, head=head, head_weight=1.0,
                               items=[[b.item_id for b in found[0]]])

        beam_ms, _ = timed(beams)
        row["beam_ms"] = round(beam_ms, 1)
        progress(row)
        rows.append(row)
    report = {"args": vars(args), "date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows}
    if args.json:
        import json
        from pathlib import Path

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


def markdown(report: dict) -> str:
    lines = ["| items | codebook | exact steps | exact by default | exact turn (ms) | beam turn (ms) | head MB | head MB at 10^6 |",
             "|---:|---:|---:|---|---:|---:|---:|---:|"]
    for r in report["rows"]:
        lines.append(f"| {r['items']:,} | {r['codebook_size']} | {r['exact_steps'] or '>limit'} | "
                     f"{'yes' if r['exact_by_default'] else 'no (beam)'} | {r.get('exact_ms', '-')} | {r['beam_ms']} | "
                     f"{r['head_mb']} | {r['head_mb_at_1e6']} |")
    return "\n".join(lines)


def main(args: ExactBenchArgs) -> dict:
    report = run(args)
    print(markdown(report))
    return report
