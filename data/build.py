"""Build a dataset artifact folder: raw data -> splits, embeddings, Semantic IDs, catalog, index.

    thinkrec data build --dataset ml-100k --out artifacts/ml-100k

A folder whose manifest records the same build config and whose files still match their hashes
is reused as it is (``--force`` rebuilds). Every step shows progress; the summary reports counts,
rejected rows, SID statistics and timings.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from data.catalog_db import sqlite_url, write_catalog
from data.clean import clean, leave_one_out, write_splits
from data.embed import embed_items, resolve_encoder
from data.quantize import mean_pairwise_cosine, prefix_coherence
from data.manifest import (CATALOG_DB, EMBEDDINGS, FAISS_INDEX, SIDS, SPLIT_NAMES, BuildConfig,
                           Manifest, SIDLayout, hash_files, verify_files)
from data.records import DataFormatError, RawDataset
from data.sid_text import sid_string
from data.text import item_text

console = Console(stderr=True)
USERS = "users.jsonl"
ARTIFACT_FILES = [CATALOG_DB, FAISS_INDEX, EMBEDDINGS, SIDS, USERS] + [f"splits/{n}.jsonl" for n in SPLIT_NAMES]


def cache_dir() -> Path:
    return Path(os.environ.get("THINKREC_CACHE", Path.home() / ".cache" / "thinkrec"))


def default_out(dataset: str) -> Path:
    return Path("artifacts") / dataset


def load_raw(config: BuildConfig) -> RawDataset:
    """Dispatch to the loader of ``config.dataset`` with the paths it needs."""
    def need(value: str | None, option: str) -> Path:
        if not value:
            raise DataFormatError(f"dataset '{config.dataset}' needs {option}")
        return Path(value)

    if config.dataset == "ml-100k":
        from data.loaders.movielens import load_ml100k
        return load_ml100k(Path(config.path) if config.path else None, cache_dir() / "downloads")
    if config.dataset == "ml-1m":
        from data.loaders.movielens import load_ml1m
        return load_ml1m(need(config.path, "--path ml-1m.zip"))
    if config.dataset == "amazon":
        from data.loaders.amazon import load_amazon
        return load_amazon(need(config.reviews, "--reviews FILE"), need(config.meta, "--meta FILE"))
    if config.dataset == "generic":
        from data.loaders.generic import load_generic
        return load_generic(need(config.interactions, "--interactions interactions.csv"),
                            need(config.items, "--items items.jsonl"))
    raise DataFormatError(f"unknown dataset '{config.dataset}' (ml-100k, ml-1m, amazon, generic)")


class _Steps:
    """One progress bar per build step, with its wall time recorded for the summary."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.seconds: dict[str, float] = {}

    @contextmanager
    def step(self, name: str, total: float | None = None):
        task = self.progress.add_task(name, total=total)
        start = time.perf_counter()

        def advance(done: float, total_now: float | None = None) -> None:
            self.progress.update(task, completed=done, total=total_now if total_now is not None else total)

        yield advance
        self.seconds[name] = round(time.perf_counter() - start, 2)
        total_now = self.progress._tasks[task].total or 1
        self.progress.update(task, completed=total_now, total=total_now)


def _quantize(config: BuildConfig, embeddings: np.ndarray, advance):
    from data.quantize import codebook_size_for, make_unique, residual_kmeans

    size = config.codebook_size or codebook_size_for(len(embeddings), config.levels)
    if config.quantizer == "rkmeans":
        quant = residual_kmeans(embeddings, config.levels, size, seed=config.seed, progress=advance)
    elif config.quantizer == "rqvae":
        from data.rqvae import train_rqvae
        quant = train_rqvae(embeddings, config.levels, size, seed=config.seed, epochs=config.rqvae_epochs,
                            progress=advance)
    else:
        raise ValueError(f"unknown quantizer '{config.quantizer}' (rkmeans, rqvae)")
    return size, make_unique(quant, size)


def build(config: BuildConfig, out: Path, force: bool = False) -> Manifest:
    out = Path(out)
    if not force and (out / "manifest.json").exists():
        try:
            existing = Manifest.load(out)
        except Exception:  # unreadable manifest: rebuild below
            existing = None
        complete = existing is not None and set(ARTIFACT_FILES) <= set(existing.files)
        if complete and existing.config == config and not verify_files(out, existing):
            console.print(f"[green]Reusing[/] {out} (same build config, files match their hashes; --force rebuilds)")
            return existing

    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    columns = (SpinnerColumn(), TextColumn("{task.description:<28}"), BarColumn(),
               MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        steps = _Steps(progress)
        with steps.step("load raw data"):
            raw = load_raw(config)
        with steps.step("clean + leave-one-out"):
            data = clean(raw, kcore=config.kcore, min_rating=config.min_rating)
            if not data.items:
                raise DataFormatError("no interactions left after cleaning; check the input and filters")
            splits = leave_one_out(data)
            write_splits(splits, out / "splits")
            with (out / USERS).open("w", encoding="utf-8") as handle:
                for seq in data.sequences:
                    attributes = raw.users.get(seq.user_id, {})
                    handle.write(json.dumps({"user_id": seq.user_id, **attributes}, ensure_ascii=False) + "\n")
        texts = [item_text(item, raw.category_label) for item in data.items]
        with steps.step("embed item text", total=len(texts)) as advance:
            embeddings, cache_hit = embed_items(texts, config.encoder, cache_dir(), progress=advance)
            np.save(out / EMBEDDINGS, embeddings)
        sid_steps = config.rqvae_epochs if config.quantizer == "rqvae" else config.levels
        quantized = embeddings
        if config.sid_source == "text+cf":
            from data.quantize import collaborative_embeddings, fuse_for_sids
            # Items watched together share SID prefixes; search and the index stay on the text.
            quantized = fuse_for_sids(embeddings, collaborative_embeddings(
                [item.item_id for item in data.items], [row["item_ids"] for row in splits["train"]], seed=config.seed))
        elif config.sid_source != "text":
            raise DataFormatError(f"unknown --sid-source '{config.sid_source}' (text, text+cf)")
        with steps.step(f"semantic IDs ({config.quantizer})", total=sid_steps) as advance:
            codebook_size, unique = _quantize(config, quantized, advance)
        sids = [sid_string(codes) for codes in unique.codes]
        (out / SIDS).write_text(json.dumps({
            "levels": int(unique.codes.shape[1]), "codebook_size": codebook_size,
            "items": [{"item_id": item.item_id, "sid": sid, "codes": [int(c) for c in codes]}
                      for item, sid, codes in zip(data.items, sids, unique.codes)]}, ensure_ascii=False) + "\n")
        with steps.step("SQL catalog", total=1) as advance:
            popularity = {}
            for row in splits["train"]:
                for item_id in row["item_ids"]:
                    popularity[item_id] = popularity.get(item_id, 0) + 1
            category_key = "genre" if raw.category_label == "Genres" else "category"
            catalog_url = config.catalog_url or sqlite_url(out / CATALOG_DB)
            write_catalog(catalog_url, data.items, texts, sids, unique.codes,
                          [popularity.get(item.item_id, 0) for item in data.items], category_key,
                          {"dataset": raw.name, "category_key": category_key})
            advance(1)
        with steps.step("FAISS index", total=1) as advance:
            from data.index import build_index, save_index
            save_index(build_index(embeddings, config.index, seed=config.seed), out / FAISS_INDEX)
            advance(1)

    from importlib.metadata import PackageNotFoundError, version
    try:
        thinkrec_version = version("thinkrec")
    except PackageNotFoundError:
        thinkrec_version = "0+unknown"
    manifest = Manifest(
        thinkrec_version=thinkrec_version, dataset=raw.name, source=raw.source,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        build_seconds=round(time.perf_counter() - started, 2), config=config,
        num_users=len(data.sequences), num_items=len(data.items), num_interactions=data.num_interactions,
        splits={name: len(rows) for name, rows in splits.items()},
        sid=SIDLayout(levels=int(unique.codes.shape[1]), codebook_size=codebook_size,
                      num_unique=len(set(sids)), collisions_before=unique.collisions_before,
                      collisions_after=len(sids) - len(set(sids)), reassigned=unique.reassigned,
                      extra_level=unique.extra_level,
                      utilization=[round(u, 4) for u in unique.utilization],
                      perplexity=[round(p, 4) for p in unique.perplexity], quantizer=config.quantizer,
                      coherence=[round(c, 4) for c in prefix_coherence(embeddings, unique.codes)],
                      coherence_baseline=round(mean_pairwise_cosine(embeddings), 4)),
        embedding={"model": config.encoder, "path": str(resolve_encoder(config.encoder)),
                   "dim": int(embeddings.shape[1]), "cache_hit": int(cache_hit)},
        catalog_url=config.catalog_url, category_key=category_key,
        load_report=raw.report.as_dict() | {"step_seconds": steps.seconds},
        cleaning=data.stats, files=hash_files(out, ARTIFACT_FILES))
    manifest.save(out)
    from data.plots import plot_sid_usage
    plot_sid_usage(unique.codes, codebook_size, manifest.sid.coherence, manifest.sid.coherence_baseline,
                   out / "sid_usage.png", title=f"{raw.name}: {manifest.num_items:,} items, SID {manifest.sid.levels}x{codebook_size}")
    return manifest

