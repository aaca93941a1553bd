"""Steering benchmark: does what a user asks for change the items?

    thinkrec eval --steering --data artifacts/ml-100k --checkpoint checkpoints/ml-100k-tiny/sft \
        --json results/steering.json

Sampled dataset users (their held-out target from ``--split``) and fresh users (no history) send
requests of each kind, thinking on and off, through the same code the app uses: the engine's
parser turns the words into a request, ``apply`` merges it into the active constraints, and
``Recommender.recommend`` (prompt, reasoning, filter, beam search) returns the items. Kinds:
genre, decade, genre+decade, avoid, more-like, and a two-turn refinement ("a <genre>", then
"no <genre>"). Each request is checked against what it *meant* (the generator's own constraint,
not the parser's reading), so a word the parser misses costs compliance.

Reports per kind and mode: compliance@10 (share of the top-10 satisfying the request) next to the
same users' neutral message ("what next?"), for more-like the share of items sharing a category
with the title, and for dataset users NDCG@10 of the held-out target with the request and with
the neutral message; requests for dataset users are built consistent with their target (its
category, its decade, a category it lacks), so the target satisfies them. Two-turn NDCG is of the
second answer, over users whose target the first answer did not already show.

Beside thinkrec's modes, the fair anchor: ``sasrec+filter`` and ``markov+filter`` rank the whole
catalog for the same users, keep what the same parsed request admits (the facets check thinkrec's
trie filter uses), drop the history and the same exclusions, and take the top 10
(``filtered_records``, training/filtered.py); their neutral row is the unfiltered ranking. Each
thinkrec row states its NDCG@10 over sasrec+filter's on the same consistent requests.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from engine.constraints import Constraints
from training.metrics import hit_ndcg

KINDS = ("genre", "decade", "genre+decade", "avoid", "more-like", "two-turn")
BASELINES = ("sasrec+filter", "markov+filter")     # rows beside thinkrec's modes (filtered_records)
HARD_KINDS = ("genre", "decade", "genre+decade", "avoid", "two-turn")


@dataclass
class Probe:
    """One request for one user: the words sent and what they mean."""
    kind: str
    texts: list[str]                     # one per turn; the last is measured
    meant: Constraints                   # what a correct reading requires of every item
    like_item: str | None = None


@dataclass
class UserCase:
    user: str
    history: list[str]
    target: str | None
    probes: list[Probe] = field(default_factory=list)


def _decade_words(decade: int) -> str:
    return f"the {decade}s" if decade < 1900 or decade >= 2000 else f"the {str(decade)[2:]}s"


class ProbeMaker:
    """Requests sized by the catalog: categories and decades with at least ``min_items`` items."""

    def __init__(self, facets, popular: list[str], titles: dict[str, str], k: int, seed: int):
        self.facets, self.popular, self.titles, self.rng = facets, popular, titles, random.Random(seed)
        # Categories and decades big enough to fill a top-K twice over (fewer on a tiny catalog).
        self.min_items = max(1, min(2 * k, len(facets) // 10))
        self.categories = [c for c in facets.vocabulary
                           if len(facets.members[c]) >= self.min_items and c.lower() not in ("unknown", "other")]
        decades = Counter(y // 10 * 10 for y in facets.years.tolist() if y > 0)
        self.decades = sorted(d for d, n in decades.items() if n >= self.min_items)

    def _cat(self, options: list[str]) -> str | None:
        options = [c for c in options if c in self.categories]
        return self.rng.choice(options) if options else None

    def probes(self, history: list[str], target: str | None) -> list[Probe]:
        facets, rng = self.facets, self.rng
        target_cats = facets.categories_of(target) if target else []
        target_year = facets.year_of(target) if target else None
        genre = self._cat(target_cats) if target else self._cat(self.categories)
        decade = target_year // 10 * 10 if target_year else (rng.choice(self.decades) if self.decades else None)
        if decade not in self.decades:
            decade = None
        recent = Counter(c for i in history[-10:] for c in facets.categories_of(i))
        lacking = [c for c, _ in recent.most_common() if c not in target_cats] or \
                  [c for c in self.categories if c not in target_cats]
        avoid = self._cat(lacking)
        out = []
        if genre:
            out.append(Probe("genre", [rng.choice(["a {g} please", "I'm in the mood for some {g}",
                                                    "any good {g} movies?"]).format(g=genre.lower())],
                             Constraints(want=[[genre]])))
        if decade:
            out.append(Probe("decade", [rng.choice(["something from {d}", "a movie from {d} please"]).format(
                d=_decade_words(decade))], Constraints(year_min=decade, year_max=decade + 9)))
        if genre and decade:
            out.append(Probe("genre+decade", [f"a {genre.lower()} from {_decade_words(decade)}"],
                             Constraints(want=[[genre]], year_min=decade, year_max=decade + 9)))
        if avoid:
            out.append(Probe("avoid", [rng.choice(["no {a} please", "nothing {a} tonight", "anything but {a}"]).format(
                a=avoid.lower())], Constraints(avoid=[avoid])))
        anchor = history[-1] if history else (rng.choice(self.popular[:50]) if self.popular else None)
        if anchor and facets.categories_of(anchor):
            out.append(Probe("more-like", [f"more like {self._title(anchor)}"],
                             Constraints(like_categories=facets.categories_of(anchor)), like_item=anchor))
        if genre and avoid and avoid != genre:
            out.append(Probe("two-turn", [f"a {genre.lower()} please", f"no {avoid.lower()}"],
                             Constraints(want=[[genre]], avoid=[avoid])))
        return out

    def _title(self, item_id: str) -> str:
        return self.titles.get(item_id, item_id)


def compliance(items: list[str], meant: Constraints, facets) -> float | None:
    if not items:
        return None
    return sum(meant.allows(facets.categories_of(i), facets.year_of(i)) for i in items) / len(items)


def _record(mode: str, case: UserCase, probe: Probe, state: Constraints, items: list[str], neutral: list[str],
            shown_earlier: list[str], facets, k: int) -> dict:
    """One answer scored: compliance with what the request meant, NDCG of the held-out target."""
    record = {"mode": mode, "kind": probe.kind, "user": case.user, "fresh": not case.history, "texts": probe.texts,
              "parsed": state.describe(), "items": items, "n_items": len(items),
              "compliance": compliance(items, probe.meant, facets),
              "neutral_compliance": compliance(neutral, probe.meant, facets)}
    if case.target is not None:
        record["ndcg"] = hit_ndcg([items], [case.target], (k,))[f"ndcg@{k}"]
        record["neutral_ndcg"] = hit_ndcg([neutral], [case.target], (k,))[f"ndcg@{k}"]
        record["target_satisfies"] = probe.meant.allows(facets.categories_of(case.target), facets.year_of(case.target))
        # A target the first turn of a two-turn request already showed is excluded from the
        # second: that user was served; the NDCG comparison leaves them out.
        record["target_shown_earlier"] = case.target in shown_earlier
    return record


def filtered_records(method: str, item_ids: list[str], scores: list, cases: list[UserCase], parser, facets,
                     k: int) -> list[dict]:
    """A baseline's rows: per user its full ranking (``scores[n]`` over ``item_ids``: an array, or a
    mapping of sort keys) restricted to what the parsed request admits, history and the same
    exclusions as thinkrec's answer removed (a two-turn request's second answer leaves out the
    baseline's own first answer), top-k. Its neutral answer is the unfiltered ranking."""
    from engine.request import apply
    from training.filtered import admissible_mask, facet_rows, filtered_top_k

    rows = facet_rows(facets, item_ids)

    def top(user_scores, history: list[str], constraints: Constraints | None, exclude: set[str]) -> list[str]:
        return filtered_top_k(user_scores, admissible_mask(facets, constraints, rows), set(history) | exclude,
                              k, item_ids)

    records = []
    for case, user_scores in zip(cases, scores):
        neutral = top(user_scores, case.history, None, set())
        for probe in case.probes:
            state, shown = Constraints(), []
            if len(probe.texts) > 1:
                state = apply(Constraints(), parser.parse(probe.texts[0]))
                shown = top(user_scores, case.history, state, set())
            state = apply(state, parser.parse(probe.texts[-1]), shown)
            exclude = set(shown) | ({probe.like_item} if probe.like_item else set())
            items = top(user_scores, case.history, state, exclude)
            records.append(_record(method, case, probe, state, items, neutral, shown, facets, k))
    return records


def run_steering(args) -> dict:
    import torch

    from engine.prompt import DEFAULT_ASK, earlier_assistant_turn
    from engine.recommender import open_recommender
    from engine.request import apply
    from engine.tokenizer import Message
    from training.dataset_view import DatasetView
    from training.labelled import parse_checkpoints

    torch.manual_seed(args.seed)
    view = DatasetView.load(args.data)
    facets = view.facets
    rows = {"valid": view.valid, "test": view.test}[args.split]
    rng = random.Random(args.seed)
    sampled = rng.sample(rows, min(args.steering_users, len(rows)))
    popular = sorted(view.items, key=lambda i: -view.items[i].popularity)
    k = 10
    maker = ProbeMaker(facets, popular, {i: item.title for i, item in view.items.items()}, k, args.seed)
    cases = [UserCase(r["user_id"], list(r["history"]), r["target"]) for r in sampled]
    cases += [UserCase(f"fresh-{n}", [], None) for n in range(args.steering_fresh)]
    for case in cases:
        case.probes = maker.probes(case.history, case.target)

    from data.catalog import Catalog

    catalog = Catalog(args.data)
    from engine.understanding import catalog_parser

    parser = catalog_parser(catalog, facets)          # the engine's own parser, meaning included
    checkpoint = next(iter(parse_checkpoints(args.checkpoint).values()))
    recommender, meta = open_recommender(checkpoint, args.data, view.codes, args.backend, args.model_url,
                                         facets=facets)

    def answer(histories, texts, earlier, excludes, constraints, thinking):
        return recommender.recommend(histories, k=k, num_beams=max(args.num_beams, k), thinking=thinking,
                                     user_texts=texts, earlier_turns=earlier, exclude=excludes,
                                     constraints=constraints, max_reasoning_tokens=args.max_reasoning_tokens,
                                     batch_size=args.batch_size)

    from training.reasoning_metrics import scorer_for

    scorer = scorer_for(view)
    records = []
    started = time.perf_counter()
    modes = [("no-think", False), ("think", True)]
    for mode, thinking in modes:
        # The neutral message for every user: the yardstick for each of their requests.
        neutral = answer([c.history for c in cases], [DEFAULT_ASK] * len(cases), None, None, None, thinking)
        neutral_items = {c.user: [str(i.item_id) for i in a.items] for c, a in zip(cases, neutral)}
        jobs = [(c, p) for c in cases for p in c.probes]
        # Turn 1 of two-turn probes: its answer becomes the earlier exchange of turn 2.
        first_turns = {}
        firsts = [(c, p) for c, p in jobs if len(p.texts) > 1]
        if firsts:
            states = [apply(Constraints(), parser.parse(p.texts[0])) for _, p in firsts]
            outs = answer([c.history for c, _ in firsts], [p.texts[0] for _, p in firsts], None, None, states, thinking)
            for (c, p), state, out in zip(firsts, states, outs):
                first_turns[(c.user, p.kind)] = (state, [str(i.item_id) for i in out.items])
        histories, texts, earlier, excludes, states = [], [], [], [], []
        for c, p in jobs:
            state, shown = first_turns.get((c.user, p.kind), (Constraints(), []))
            histories.append(c.history)
            texts.append(p.texts[-1])
            codes = [recommender.sid_codes[i] for i in shown[:3] if i in recommender.sid_codes]
            earlier.append([Message("user", p.texts[0], trusted=False), earlier_assistant_turn(codes)] if shown else [])
            excludes.append(set(shown) | ({p.like_item} if p.like_item else set()))
            states.append(apply(state, parser.parse(p.texts[-1]), shown))
        outs = answer(histories, texts, earlier, excludes, states, thinking)
        for (c, p), state, out in zip(jobs, states, outs):
            shown = first_turns.get((c.user, p.kind), (None, []))[1]
            records.append(_record(mode, c, p, state, [str(i.item_id) for i in out.items], neutral_items[c.user],
                                   shown, facets, k))
            # Level 3 against the active request (issue 27: goal 0).
            records[-1]["contradiction"] = scorer.contradiction(out.levels, state) if thinking else None
    seconds = time.perf_counter() - started

    # The fair anchor: each baseline's full ranking under the same parsed constraints (training/filtered.py).
    from training.sasrec import load_or_fit
    from training.transitions import TransitionRecommender, known_sequences

    sasrec = load_or_fit(Path(args.sasrec) if args.sasrec else Path(checkpoint).parent / "sasrec.pt", view,
                         args.sasrec_epochs, args.seed)
    markov = TransitionRecommender().fit(known_sequences(view, args.split))
    catalog_ids = list(view.items)
    user_histories = [c.history for c in cases]
    records += filtered_records("sasrec+filter", sasrec.item_ids, sasrec.catalog_scores(user_histories), cases,
                                parser, facets, k)
    records += filtered_records("markov+filter", catalog_ids,
                                [markov.catalog_scores(h, catalog_ids) for h in user_histories], cases, parser,
                                facets, k)
    summary = summarize(records)
    report = {"split": args.split, "dataset_users": len(sampled), "fresh_users": args.steering_fresh,
              "checkpoint": checkpoint, "stage": meta.stage, "seconds": round(seconds, 1),
              "vs_sasrec_filter": {mode: ndcg_ratio(records, mode, "sasrec+filter") for mode, _ in modes},
              "contradiction_rate": _mean([float(r["contradiction"]) for r in records
                                           if r.get("contradiction") is not None]),
              "requests_checked": sum(r.get("contradiction") is not None for r in records),
              "summary": summary, "records": records}
    if args.json:
        write_steering(report, Path(args.json))
    print(steering_table(report))
    return report


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(sum(values) / len(values), 4) if values else None


def _consistent(record: dict) -> bool:
    """A dataset user's request their target satisfies, and not already served by a first turn."""
    return bool(record.get("target_satisfies")) and not record.get("target_shown_earlier")


def ndcg_ratio(records: list[dict], mode: str, against: str, kind: str | None = None) -> float | None:
    """Mean NDCG@10 of ``mode`` over that of ``against`` on the same consistent requests (a user and
    kind both count as consistent), pooled over kinds unless ``kind`` is given."""
    def by_request(name):
        return {(r["user"], r["kind"]): r["ndcg"] for r in records
                if r["mode"] == name and (kind is None or r["kind"] == kind) and _consistent(r)}

    ours, theirs = by_request(mode), by_request(against)
    pairs = ours.keys() & theirs.keys()
    base = sum(theirs[p] for p in pairs)
    return round(sum(ours[p] for p in pairs) / base, 3) if pairs and base > 0 else None


def summarize(records: list[dict]) -> list[dict]:
    rows = []
    for mode in dict.fromkeys(r["mode"] for r in records):
        for kind in KINDS:
            group = [r for r in records if r["mode"] == mode and r["kind"] == kind]
            if not group:
                continue
            consistent = [r for r in group if _consistent(r)]
            rows.append({"mode": mode, "kind": kind, "n": len(group),
                         "compliance": _mean(r["compliance"] for r in group),
                         "neutral_compliance": _mean(r["neutral_compliance"] for r in group),
                         "fresh_compliance": _mean(r["compliance"] for r in group if r["fresh"]),
                         "short_lists": sum(r["n_items"] < 10 for r in group),
                         "ndcg": _mean(r["ndcg"] for r in consistent),
                         "neutral_ndcg": _mean(r["neutral_ndcg"] for r in consistent),
                         "ndcg_users": len(consistent),
                         "vs_sasrec_filter": (None if mode in BASELINES
                                              else ndcg_ratio(records, mode, "sasrec+filter", kind))})
    return rows


def steering_table(report: dict) -> str:
    def fmt(v):
        return "–" if v is None else f"{v:.3f}"

    lines = [f"split `{report['split']}`, {report['dataset_users']} dataset users + {report['fresh_users']} fresh users, "
             "top-10, compliance = share of items satisfying what the request meant; "
             "`sasrec+filter` / `markov+filter`: the baseline's full ranking under the same parsed request "
             "(neutral: unfiltered); NDCG ÷ sasrec+filter on the same consistent requests", "",
             "| mode | kind | n | compliance@10 | neutral | fresh users | lists < 10 | NDCG@10 (request) | NDCG@10 (neutral) "
             "| ÷ sasrec+filter |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["summary"]:
        lines.append(f"| {r['mode']} | {r['kind']} | {r['n']} | {fmt(r['compliance'])} | {fmt(r['neutral_compliance'])} | "
                     f"{fmt(r['fresh_compliance'])} | {r['short_lists']} | {fmt(r['ndcg'])} | {fmt(r['neutral_ndcg'])} | "
                     f"{fmt(r.get('vs_sasrec_filter'))} |")
    ratios = report.get("vs_sasrec_filter") or {}
    if ratios:
        lines += ["", "NDCG@10 of thinkrec ÷ sasrec+filter, all consistent requests: "
                  + ", ".join(f"{mode} {fmt(ratio)}" for mode, ratio in ratios.items())]
    if report.get("requests_checked"):
        lines += ["", f"Level 3 contradicting the active request (think mode): {fmt(report['contradiction_rate'])} "
                      f"of {report['requests_checked']} requests"]
    return "\n".join(lines)


def write_steering(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    path.with_suffix(".md").write_text(steering_table(report) + "\n")
    modes = list(dict.fromkeys(r["mode"] for r in report["summary"]))
    fig, axes = plt.subplots(1, len(modes), figsize=(5.5 * len(modes), 3.6), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        rows = [r for r in report["summary"] if r["mode"] == mode]
        xs = range(len(rows))
        ax.bar([x - 0.2 for x in xs], [r["compliance"] or 0 for r in rows], 0.4, label="with the request")
        ax.bar([x + 0.2 for x in xs], [r["neutral_compliance"] or 0 for r in rows], 0.4, label="neutral message")
        ax.set_xticks(list(xs), [r["kind"] for r in rows], rotation=20, fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"compliance@10, {mode}")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"), dpi=110)
    plt.close(fig)
