"""Human-readable summaries (rich tables) of a built dataset and of catalog results."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from data.manifest import Manifest

console = Console()


def print_summary(manifest: Manifest, folder: Path) -> None:
    sid = manifest.sid
    table = Table(title=f"{manifest.dataset} -> {folder}", show_header=False)
    table.add_row("users / items / interactions",
                  f"{manifest.num_users:,} / {manifest.num_items:,} / {manifest.num_interactions:,}")
    table.add_row("splits (train/valid/test rows)", " / ".join(f"{manifest.splits[n]:,}" for n in ("train", "valid", "test")))
    table.add_row("SID layout", f"{sid.levels} levels x {sid.codebook_size} codes ({sid.quantizer})")
    table.add_row("unique SIDs", f"{sid.num_unique:,} of {manifest.num_items:,}")
    table.add_row("collisions before -> after", f"{sid.collisions_before} -> {sid.collisions_after} "
                  f"({sid.reassigned} reassigned{', extra level added' if sid.extra_level else ''})")
    table.add_row("code utilization per level", "  ".join(f"{u:.0%}" for u in sid.utilization))
    table.add_row("usage evenness (perplexity/K)", "  ".join(f"{p:.2f}" for p in sid.perplexity))
    if sid.coherence:
        table.add_row("cosine within shared prefix", "  ".join(f"{c:.2f}" for c in sid.coherence)
                      + f"  (all pairs {sid.coherence_baseline:.2f})")
    report = manifest.load_report
    rejected = report.get("rejected", {})
    table.add_row("rows read", ", ".join(f"{k}: {v:,}" for k, v in report.get("rows_read", {}).items()))
    table.add_row("rows rejected", ", ".join(f"{k} ({v})" for k, v in rejected.items()) or "none")
    table.add_row("cleaning", ", ".join(f"{k}: {v}" for k, v in manifest.cleaning.items()) or "nothing removed")
    steps = report.get("step_seconds", {})
    table.add_row("build time", f"{manifest.build_seconds:.1f} s (" + ", ".join(f"{k} {v:.1f}s" for k, v in steps.items()) + ")")
    table.add_row("fingerprint", manifest.fingerprint)
    console.print(table)


def print_items(items, title: str, details: bool = False) -> None:
    table = Table(title=title)
    for column in ("#", "item_id", "title", "year", "categories", "SID", "score", "match"):
        table.add_column(column)
    for rank, item in enumerate(items, 1):
        score = "" if item.score is None else f"{item.score:.3f}"
        table.add_row(str(rank), item.item_id, item.title, str(item.year or ""), ", ".join(item.categories[:4]),
                      item.sid, score, item.match or "")
    console.print(table)
    if details and items and items[0].description:
        console.print(items[0].description)
