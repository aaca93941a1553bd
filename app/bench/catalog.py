"""Catalog-scale benchmark: how SIDs, the prefix trie, the FAISS index and constrained decoding
behave for a synthetic catalog of up to millions of items (random unit-norm "text embeddings").

    thinkrec bench-catalog --items 1000000 --json results/catalog_1m.json

Measures: SID build time (balanced residual k-means + uniqueness), trie build time and memory,
the cost of one ``TrieCursor.allowed()`` + ``accept()`` step (with a user's history excluded),
building a request's filter (a category holding ~30 % of the catalog, and that category in one
decade) and a filtered step against the unfiltered one,
FAISS index build and query time, and constrained versus unconstrained greedy decoding of the SID
steps with a model of the ``tiny`` preset (same number of forward passes; the difference is the
constraint's overhead).

The engine sits below training, so the model is built here from the ``tiny`` preset's shape written
out (:func:`bench_model_config`) rather than imported from training/presets.py;
tests/test_layers.py keeps the two configs equal.
"""

from __future__ import annotations

import gc
import random
import resource
import time
from dataclasses import asdict, dataclass


@dataclass
class CatalogBenchArgs:
    items: int = 1_000_000          # synthetic catalog size
    dim: int = 64                   # embedding dimension of the random item vectors
    levels: int = 3                 # SID levels
    index: str = "hnsw"             # FAISS index: flat, hnsw or ivf
    steps: int = 20_000             # trie steps timed
    history: int = 50               # items excluded per cursor (a user's history)
    decode_rows: int = 8            # rows decoded together in the decoding comparison
    decode_repeats: int = 20        # decoding runs timed (median reported)
    seed: int = 0
    json: str | None = None         # also write the report here


def _rss_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(args: CatalogBenchArgs, progress=print) -> dict:
    import numpy as np

    from data.index import build_index, gpu_available, to_gpu_if_available
    from data.quantize import codebook_size_for, make_unique, residual_kmeans
    from engine.sid import SIDTrie

    rng = np.random.default_rng(args.seed)
    report: dict = {"args": asdict(args)}
    vectors = rng.normal(size=(args.items, args.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)

    size = codebook_size_for(args.items, args.levels)
    started = time.perf_counter()
    quant = residual_kmeans(vectors, args.levels, size, seed=args.seed, niter=10,
                            progress=lambda level, total: progress(f"k-means level {level}/{total}"))
    unique = make_unique(quant, size)
    report["sid"] = {"seconds": round(time.perf_counter() - started, 1), "codebook_size": size,
                     "levels": int(unique.codes.shape[1]), "collisions_before": unique.collisions_before}
    progress(f"SIDs: {report['sid']}")

    # Token ids as a decoder sees them: level l, code c -> base + l * size + c.
    base = 4096
    paths = [(i, tuple(base + level * size + int(c) for level, c in enumerate(row)))
             for i, row in enumerate(unique.codes)]
    gc.collect()
    before = _rss_mb()
    started = time.perf_counter()
    trie = SIDTrie(paths)
    report["trie"] = {"seconds": round(time.perf_counter() - started, 1),
                      "memory_mb": round(_rss_mb() - before, 1), "depth": trie.depth_stats()}
    progress(f"trie: {report['trie']['seconds']} s, {report['trie']['memory_mb']} MB")

    # Per-step cost: a cursor with a history excluded walks a random item's path.
    walk = random.Random(args.seed)
    report["trie"]["step_us"] = _step_us(trie, args, walk, lambda: walk.randrange(args.items))
    started = time.perf_counter()
    for _ in range(1000):
        trie.cursor(exclude=walk.sample(range(args.items), args.history))
    report["trie"]["cursor_with_history_us"] = round((time.perf_counter() - started) / 1000 * 1e6, 1)
    progress(f"trie step: {report['trie']['step_us']} µs")

    report["filter"] = _filters(trie, args)
    progress(f"filters: {report['filter']}")

    started = time.perf_counter()
    index = build_index(vectors, args.index)
    build_s = time.perf_counter() - started
    on_gpu = gpu_available() and args.index != "hnsw"
    index = to_gpu_if_available(index)          # the catalog's own path: faiss-gpu when present
    queries = vectors[rng.integers(0, args.items, 256)]
    started = time.perf_counter()
    index.search(queries, 10)
    report["faiss"] = {"kind": args.index, "gpu": on_gpu, "build_seconds": round(build_s, 1),
                       "query_ms": round((time.perf_counter() - started) / len(queries) * 1e3, 3)}
    progress(f"faiss: {report['faiss']}")
    del index

    report["decoding"] = _decoding(trie, size, unique.codes.shape[1], base, args)
    progress(f"decoding: {report['decoding']}")
    report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return report


def _step_us(trie, args: CatalogBenchArgs, walk: random.Random, pick_target, restrict=None) -> float:
    """Mean cost of one ``allowed()`` + ``accept()`` step: cursors with a random history excluded
    (and ``restrict``) walk toward targets from ``pick_target``, ``args.steps`` steps in all."""
    total, calls = 0.0, 0
    while calls < args.steps:
        cursor = trie.cursor(exclude=walk.sample(range(args.items), args.history), restrict=restrict)
        for token in trie.path(pick_target()):
            t0 = time.perf_counter()
            options = cursor.allowed()
            cursor.accept(token if token in options else options[0])
            total += time.perf_counter() - t0
            calls += 1
    return round(total / calls * 1e6, 2)


def _synthetic_facets(items: int, seed: int):
    """Years 1950-2020 and 1-3 of 20 categories per item, Zipf-like, so the biggest category holds
    about 30 % of the catalog (a genre like Drama or a broad product category)."""
    import numpy as np

    from engine.constraints import Facets

    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, 21) ** 0.65
    weights /= weights.sum()
    counts = rng.integers(1, 4, items)
    firsts = rng.choice(20, size=(items, 3), p=weights)
    categories = [[f"cat{c}" for c in dict.fromkeys(row[:n].tolist())] for row, n in zip(firsts, counts)]
    years = rng.integers(1950, 2021, items).tolist()
    return Facets(list(range(items)), years, categories)


def _filters(trie, args: CatalogBenchArgs) -> dict:
    """Building a request's filter, and a filtered trie step against the unfiltered one."""
    from engine.constraints import Constraints

    started = time.perf_counter()
    facets = _synthetic_facets(args.items, args.seed)
    facets_s = time.perf_counter() - started
    started = time.perf_counter()
    node_paths = trie.node_paths(range(args.items))      # the bench's trie is keyed by row numbers
    paths_s = time.perf_counter() - started
    biggest = facets.vocabulary[0]
    report = {"facets_seconds": round(facets_s, 1), "node_paths_seconds": round(paths_s, 2)}
    walk = random.Random(args.seed)
    cases = {"genre": Constraints(want=[[biggest]]),
             "genre+decade": Constraints(want=[[biggest]], year_min=1990, year_max=1999),
             "none": None}
    for name, constraints in cases.items():
        restrict, build_ms, share = None, 0.0, 1.0
        if constraints is not None:
            started = time.perf_counter()
            mask = facets.mask(constraints)
            restrict = trie.restrict(node_paths, mask)
            build_ms = (time.perf_counter() - started) * 1e3
            share = float(mask.mean())
            allowed = mask.nonzero()[0][:100_000].tolist()
            assert restrict.size == int(mask.sum())
        pick = (lambda: walk.choice(allowed)) if restrict is not None else (lambda: walk.randrange(args.items))
        report[name] = {"share": round(share, 4), "build_ms": round(build_ms, 1),
                        "step_us": _step_us(trie, args, walk, pick, restrict)}
    for name in ("genre", "genre+decade"):
        report[name]["step_vs_unfiltered"] = round(report[name]["step_us"] / report["none"]["step_us"], 2)
    return report


def bench_model_config(vocab_size: int, pad_id: int = 0, eos_id: int = 1):
    """The ``Qwen3Config`` of training's ``tiny`` preset for ``vocab_size``: the size of model the
    app serves by default, so the constraint's overhead is measured against a realistic forward."""
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=vocab_size, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=2048,
        tie_word_embeddings=True, pad_token_id=pad_id, eos_token_id=eos_id, bos_token_id=None,
        rope_theta=10000.0, attention_dropout=0.0, use_cache=True)


def _decoding(trie, size: int, levels: int, base: int, args: CatalogBenchArgs) -> dict:
    """Greedy decoding of the SID steps, with and without the trie, same model and forward passes."""
    import statistics

    import torch
    from transformers import Qwen3ForCausalLM

    from engine.decoding import cache_of, with_cache

    torch.manual_seed(args.seed)
    model = Qwen3ForCausalLM(bench_model_config(base + levels * size + 8)).eval()
    prompt = torch.randint(2, base, (args.decode_rows, 128))
    walk = random.Random(args.seed)
    histories = [walk.sample(range(args.items), args.history) for _ in range(args.decode_rows)]

    @torch.no_grad()
    def decode(constrained: bool) -> float:
        started = time.perf_counter()
        out = model(input_ids=prompt, use_cache=True)
        cache, logits = cache_of(out), out.logits[:, -1]
        cursors = [trie.cursor(exclude=h) for h in histories] if constrained else None
        for level in range(levels):
            if constrained:
                mask = torch.full_like(logits, float("-inf"))
                for row, cursor in enumerate(cursors):
                    mask[row, torch.tensor(cursor.allowed())] = 0.0
                tokens = (logits + mask).argmax(-1)
                for row, cursor in enumerate(cursors):
                    cursor.accept(int(tokens[row]))
            else:   # the same level's tokens, any code: no catalog constraint
                lo = base + level * size
                tokens = logits[:, lo:lo + size].argmax(-1) + lo
            out = model(input_ids=tokens[:, None], **with_cache(model, cache), use_cache=True)
            cache, logits = cache_of(out), out.logits[:, -1]
        return time.perf_counter() - started

    decode(True), decode(False)   # warm-up
    free = statistics.median(decode(False) for _ in range(args.decode_repeats))
    constrained = statistics.median(decode(True) for _ in range(args.decode_repeats))
    return {"rows": args.decode_rows, "prompt_tokens": prompt.shape[1], "sid_steps": levels,
            "unconstrained_ms": round(free * 1e3, 2), "constrained_ms": round(constrained * 1e3, 2),
            "overhead_pct": round((constrained - free) / free * 100, 1)}


def main(args: CatalogBenchArgs) -> dict:
    """CLI entry: run, print the headline numbers, write the JSON report if asked."""
    import json
    from pathlib import Path

    report = run(args)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(f"{args.items:,} items: SIDs {report['sid']['seconds']} s, trie {report['trie']['seconds']} s / "
          f"{report['trie']['memory_mb']} MB, trie step {report['trie']['step_us']} µs, "
          f"filtered step ({report['filter']['genre']['share']:.0%} of items) {report['filter']['genre']['step_us']} µs "
          f"(filter built in {report['filter']['genre']['build_ms']} ms), "
          f"{report['faiss']['kind']} index {report['faiss']['build_seconds']} s / query {report['faiss']['query_ms']} ms, "
          f"constrained decoding overhead {report['decoding']['overhead_pct']} %")
    return report

