"""``thinkrec eval --understanding``: how well everyday requests are understood, with no model.

Each benchmark row (training/benchmarks/understanding.jsonl) is a message, optionally after
earlier messages of the same chat, with what it meant: wanted and avoided categories, a year
range, a title liked or turned down, a content wish with items that fit it, a facet the catalog
lacks, a question that should be asked, or nothing at all. The request parser of the row's
catalog reads it (the same ``catalog_parser`` the engine uses), and the result is scored:

- **recall**: every part of the intent was captured (hard or soft); ``recall_hard`` counts only
  hard constraints, questions and notes;
- **precision**: of the items the hard constraints admit, the share that fits the intent;
- **harmful**: a hard constraint that keeps less than half of what was asked for (or any hard
  constraint when nothing was asked);
- **clarify rate**: rows where a question was asked, split by whether one was expected;
- **latency**: the parse, p50 and p95.

Rows are split in two halves by a hash of their id: ``dev`` (where thresholds may be chosen) and
``held-out`` (reported, never tuned on).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

BENCHMARK = Path(__file__).parent / "benchmarks" / "understanding.jsonl"
DOMAINS = {"movies": "artifacts/ml-100k", "products": "artifacts/products-bench"}


def half(row_id: str) -> str:
    return "dev" if int(hashlib.sha256(row_id.encode()).hexdigest(), 16) % 2 == 0 else "held-out"


def products_catalog(folder: Path) -> Path:
    """The benchmark's product-style catalog (training/benchmarks/products.py), built once."""
    from data.build import build
    from data.manifest import BuildConfig, Manifest
    from training.benchmarks.products import write_products

    if (folder / "manifest.json").exists():
        Manifest.load(folder)
        return folder
    raw = folder.parent / (folder.name + "-raw")
    interactions, items = write_products(raw)
    build(BuildConfig(dataset="generic", interactions=str(interactions), items=str(items)), folder)
    return folder


class _Domain:
    def __init__(self, folder: Path, meaning: bool = True):
        from data.catalog import Catalog
        from engine.constraints import Facets
        from engine.understanding import catalog_parser

        self.catalog = Catalog(folder)
        self.facets = Facets(*self.catalog.attribute_table())
        self.parser = catalog_parser(self.catalog, self.facets, meaning=meaning)
        ids, titles = self.catalog.id_title_table()
        self.title_ids: dict[str, list[str]] = {}
        for item_id, title in zip(ids, titles):
            self.title_ids.setdefault(title, []).append(item_id)
        popularity = np.array([i.popularity for i in self.catalog.by_rows(list(range(len(ids))))], dtype=float)
        self.by_popularity = [ids[r] for r in np.argsort(-popularity, kind="stable")]
        known = self.facets.years[self.facets.years > -10 ** 5]
        self.middle_year = int(np.median(known)) if len(known) else None
        # What "recent" and "old" admit at the least: the newest and oldest fifth of the catalog.
        self.recent_year = int(np.quantile(known, 0.8)) if len(known) else None
        self.old_year = int(np.quantile(known, 0.2)) if len(known) else None

    def last_answer(self, constraints, k: int = 10) -> list[str]:
        """Stands in for the model's answer to the earlier messages: the most popular admitted items."""
        mask = self.facets.mask(constraints)
        allowed = [i for i in self.by_popularity if mask[self.facets.row_of[i]]]
        return allowed[:k]


def _intent_mask(domain: _Domain, expect: dict) -> np.ndarray | None:
    """Items that fit what was asked (categories, years, content items); None when the intent
    names no such facet."""
    from engine.constraints import Constraints

    facets = domain.facets
    mask, any_facet = np.ones(len(facets), dtype=bool), False
    spec = Constraints(want=expect.get("want", []), avoid=expect.get("avoid", []),
                       year_min=expect.get("year_min"), year_max=expect.get("year_max"))
    if spec.want or spec.avoid or spec.year_min is not None or spec.year_max is not None:
        mask &= facets.mask(spec)
        any_facet = True
    if expect.get("years") in ("recent", "old") and domain.middle_year is not None:
        years = facets.years
        mask &= (years >= domain.recent_year) if expect["years"] == "recent" else ((years <= domain.old_year) & (years > -10 ** 5))
        any_facet = True
    if expect.get("content_items"):
        fit = np.zeros(len(facets), dtype=bool)
        for title in expect["content_items"]:
            for item in domain.title_ids.get(title, []):
                fit[facets.row_of[item]] = True
        mask &= fit
        any_facet = True
    return mask if any_facet else None


def score_row(domain: _Domain, row: dict) -> dict:
    from engine.constraints import Constraints
    from engine.request import apply
    from engine.understanding import apply_answer, ask_first, resolve_answer

    constraints, last = Constraints(), []
    for earlier in row.get("before", []):
        request = domain.parser.parse(earlier, last_years=[y for y in map(domain.facets.year_of, last) if y],
                                      active=constraints)
        constraints = apply(constraints, request, last)
        asked = ask_first(request, constraints, int(domain.facets.mask(constraints).sum()), 10,
                          lambda c: int(domain.facets.mask(c).sum()))
        if asked:
            constraints = constraints.model_copy(update={"pending": asked})
        last = domain.last_answer(constraints)
    started = time.perf_counter()
    option = resolve_answer(constraints.pending, row["text"]) if constraints.pending else None
    if option is not None:
        from engine.request import Request

        request, after = Request(text=row["text"], answered=True), apply_answer(constraints, option)
    else:
        request = domain.parser.parse(row["text"], last_years=[y for y in map(domain.facets.year_of, last) if y],
                                      active=constraints)
        after = apply(constraints, request, last)
    seconds = time.perf_counter() - started
    available = int(domain.facets.mask(after).sum())
    asked = ask_first(request, after, available, 10, lambda c: int(domain.facets.mask(c).sum()))
    expect = row.get("expect", {})
    got: dict[str, bool] = {}
    hard_got: dict[str, bool] = {}

    def norm(title: str | None) -> str:
        return (title or "").strip().lower()
    for n, group in enumerate(expect.get("want", [])):
        hard = any(set(group) & set(g) for g in after.want) or bool(set(group) & set(after.like_categories))
        hard_got[f"want{n}"] = hard
        got[f"want{n}"] = hard or bool(set(group) & set(after.prefer))
    for category in expect.get("avoid", []):
        hard_got[f"avoid:{category}"] = category in after.avoid
        got[f"avoid:{category}"] = category in after.avoid or category in after.prefer_not
    if "year_min" in expect or "year_max" in expect or expect.get("years"):
        low, high = after.year_min, after.year_max
        if expect.get("years") == "recent":
            ok = low is not None and domain.middle_year is not None and low >= domain.middle_year
        elif expect.get("years") == "old":
            ok = high is not None and domain.middle_year is not None and high <= domain.middle_year
        else:
            want_low, want_high = expect.get("year_min"), expect.get("year_max")
            ok = (low is not None or high is not None) and _years_overlap(domain, (low, high), (want_low, want_high)) >= 0.5
        got["years"] = hard_got["years"] = ok
    if expect.get("like"):
        ok = norm(after.like_title) == norm(expect["like"]) or any(
            norm(o.get("title")) == norm(expect["like"]) for o in (asked or {}).get("options", []))
        got["like"] = hard_got["like"] = ok
    if expect.get("dislike"):
        ids = set(domain.title_ids.get(expect["dislike"], []))
        got["dislike"] = hard_got["dislike"] = bool(ids & set(after.turned_down)) or any(
            o.get("item_id") in ids for o in (asked or {}).get("options", []))
    if expect.get("content_items"):
        fit = {i for t in expect["content_items"] for i in domain.title_ids.get(t, [])}
        matched = set(after.among) | set(after.boost)
        hard_got["content"] = bool(fit & set(after.among))
        # Captured through the index's matches, or through categories read from the words that
        # lean toward (or admit) most of the items that fit.
        leaning = [i for i in fit if (after.want or after.prefer) and after.allows(domain.facets.categories_of(i), domain.facets.year_of(i))
                   and (not after.prefer or set(domain.facets.categories_of(i)) & set(after.prefer))]
        got["content"] = bool(fit & matched) or (len(leaning) >= 0.5 * len(fit) > 0)
    if expect.get("unknown"):
        got["unknown"] = hard_got["unknown"] = expect["unknown"] in request.unknown
    if expect.get("clarify"):
        got["clarify"] = hard_got["clarify"] = asked is not None
    hard_now = after.is_hard() and after.key() != constraints.key()
    if expect.get("nothing"):
        got["nothing"] = hard_got["nothing"] = not hard_now and asked is None
    intent = _intent_mask(domain, expect)
    admitted = domain.facets.mask(after) if after.is_hard() else None
    precision = harmful = None
    if admitted is not None and admitted.sum():
        if expect.get("nothing") and hard_now:
            precision, harmful = 0.0, True
        elif intent is not None:
            precision = float((admitted & intent).sum() / admitted.sum())
            harmful = bool(intent.sum()) and float((admitted & intent).sum() / intent.sum()) < 0.5
    return {"id": row["id"], "domain": row["domain"], "kind": row["kind"], "half": half(row["id"]), "text": row["text"],
            "recall": all(got.values()) if got else True, "recall_hard": all(hard_got.values()) if hard_got else True,
            "parts": got, "precision": precision, "harmful": harmful, "asked": asked is not None,
            "expected_question": bool(expect.get("clarify")), "seconds": seconds,
            "understood": request.understood(), "active": after.describe(), "soft": after.describe_soft(),
            "question": asked["question"] if asked else None}


def _years_overlap(domain: _Domain, got: tuple, want: tuple) -> float:
    """Share of the intended years' items that the parsed range keeps, times the share of the
    parsed range's items that were intended (an F-like overlap over the catalog's items)."""
    years = domain.facets.years
    known = years > -10 ** 5

    def inside(span):
        low, high = span
        mask = known.copy()
        if low is not None:
            mask &= years >= low
        if high is not None:
            mask &= years <= high
        return mask
    a, b = inside(got), inside(want)
    both = (a & b).sum()
    if not a.sum() or not b.sum():
        return 0.0
    return float(2 * both / (a.sum() + b.sum()))


def summarize(rows: list[dict]) -> dict:
    def block(subset: list[dict]) -> dict:
        if not subset:
            return {}
        precision = [r["precision"] for r in subset if r["precision"] is not None]
        expected = [r for r in subset if r["expected_question"]]
        unexpected = [r for r in subset if not r["expected_question"]]
        seconds = np.array([r["seconds"] for r in subset]) * 1000
        return {"n": len(subset), "recall": round(float(np.mean([r["recall"] for r in subset])), 3),
                "recall_hard": round(float(np.mean([r["recall_hard"] for r in subset])), 3),
                "precision": round(float(np.mean(precision)), 3) if precision else None,
                "harmful": int(sum(bool(r["harmful"]) for r in subset)),
                "asked_when_expected": round(float(np.mean([r["asked"] for r in expected])), 3) if expected else None,
                "asked_otherwise": round(float(np.mean([r["asked"] for r in unexpected])), 3) if unexpected else None,
                "p50_ms": round(float(np.percentile(seconds, 50)), 1), "p95_ms": round(float(np.percentile(seconds, 95)), 1)}
    out = {"all": block(rows)}
    for key in ("half", "domain", "kind"):
        for value in sorted({r[key] for r in rows}):
            out[f"{key}={value}"] = block([r for r in rows if r[key] == value])
    return out


def markdown(summary: dict) -> str:
    lines = ["| rows | n | recall | recall (hard only) | precision | harmful | asked when expected | asked otherwise | p50 ms | p95 ms |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, b in summary.items():
        if b:
            lines.append(f"| {name} | {b['n']} | {b['recall']} | {b['recall_hard']} | {b['precision']} | {b['harmful']} | "
                         f"{b['asked_when_expected']} | {b['asked_otherwise']} | {b['p50_ms']} | {b['p95_ms']} |")
    return "\n".join(lines)


def run_understanding(args) -> dict:
    from tqdm import tqdm

    rows = [json.loads(line) for line in Path(getattr(args, "understanding_file", "") or BENCHMARK).read_text().splitlines()
            if line.strip()]
    meaning = not getattr(args, "no_meaning", False)
    domains: dict[str, _Domain] = {}
    scored = []
    for row in tqdm(rows, desc="understanding", unit="request"):
        if row["domain"] not in domains:
            folder = Path(args.data) if row["domain"] == "movies" and args.data else Path(DOMAINS[row["domain"]])
            if row["domain"] == "products":
                folder = products_catalog(Path(DOMAINS["products"]))
            domains[row["domain"]] = _Domain(folder, meaning=meaning)
            domains[row["domain"]].parser.parse("warm up the encoder")
        scored.append(score_row(domains[row["domain"]], row))
    summary = summarize(scored)
    report = {"summary": summary, "rows": scored, "meaning": meaning, "benchmark": str(BENCHMARK)}
    print(markdown(summary))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))
        Path(args.json).with_suffix(".md").write_text(markdown(summary) + "\n")
    return report
