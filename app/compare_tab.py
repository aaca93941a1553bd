"""The app's "Compare" and "Model" tabs.

Compare: the same turn (a user and a request) answered three ways side by side: thinking,
non-thinking and SASRec's top-K from the history under the same filter (the session's active
constraints once the message is understood, as thinkrec's trie gets them). Each item is marked when
another list has it too, and when it satisfies the active request. Nothing is saved to a session
(``Engine.preview``).

Model: the loaded checkpoint's latest eval table (``eval_<split>.json``, written by `thinkrec eval`
beside the checkpoint), its loss and RL curves, and the catalog's SID usage.

Both imports nothing heavy; the SASRec ranker comes from the CLI as a plain callable
``baseline(history, exclude, k, constraints) -> [item_id, ...]`` that ranks the whole catalog and
keeps only what ``constraints`` (``Constraints`` or None) admits (app/cli.py ``filtered_sasrec_ranker``).
"""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr

from engine.constraints import Constraints

MODES = ("thinking", "non-thinking", "SASRec")
HEADINGS = {"SASRec": "SASRec + the same filter"}


def side_by_side(engine, user_id: str | None, message: str, k: int = 10, baseline=None) -> dict:
    """{"request": RequestInfo dict, "lists": {mode: [card dict + "marks"]}, "levels": {...}}."""
    # A scratch session for the previews, removed before returning: the Compare tab saves nothing.
    session = engine.start_session(user_id=user_id)
    lists, levels, info = {}, {}, None
    try:
        for mode, thinking in (("thinking", True), ("non-thinking", False)):
            cards, info, found = engine.preview(session.id, message, thinking=thinking, k=k)
            lists[mode] = [c.model_dump() for c in cards]
            levels = found if thinking else levels
    finally:
        engine.sessions.delete(session.id)
    active = Constraints.model_validate(info.constraints) if info and info.constraints else None
    if baseline is not None and session.history:          # SASRec reads a history; a fresh user has none
        # What the engine's turn leaves out for this fresh session: the history, items turned down
        # and a "more like" anchor; the active constraints filter the rest.
        exclude = set(session.history)
        if active is not None:
            exclude |= set(active.turned_down) | ({active.like_item} if active.like_item else set())
        ids = baseline(session.history, exclude, k, active)
        found = {i.item_id: i for i in engine.catalog.items(ids)}
        lists["SASRec"] = [{"rank": n + 1, "item_id": i, "title": found[i].title, "year": found[i].year,
                            "categories": found[i].categories, "sid": found[i].sid} for n, i in enumerate(ids)]
    for mode, items in lists.items():
        others = {m: {i["item_id"] for i in lists[m]} for m in lists if m != mode}
        for item in items:
            item["also_in"] = [m for m, ids in others.items() if item["item_id"] in ids]
            item["satisfies"] = (active.allows(item["categories"], item["year"])
                                 if active is not None and active.is_hard() else None)
    return {"request": info.model_dump() if info else {}, "lists": lists, "levels": levels,
            "session_id": session.id}


def _table(items: list[dict]) -> str:
    if not items:
        return "_nothing to show_"
    lines = ["| # | title | ✓ | also in |", "|---|---|---|---|"]
    for i in items:
        title = f"{i['title']} ({i['year']})" if i.get("year") else i["title"]
        mark = {True: "✓", False: "✗", None: ""}[i["satisfies"]]
        lines.append(f"| {i['rank']} | {title} | {mark} | {', '.join(i['also_in'])} |")
    share = [i["satisfies"] for i in items if i["satisfies"] is not None]
    tail = f"\n\n**{sum(share)}/{len(share)} satisfy the request**" if share else ""
    return "\n".join(lines) + tail


def compare_tab(engine, users: list[str], baseline=None) -> None:
    def run(user: str, message: str, k: int):
        result = side_by_side(engine, None if user in (None, "", "fresh user") else user, message, int(k), baseline)
        request = result["request"]
        head = (f"**Request understood:** {request.get('understood') or 'no filter'} · "
                f"**active:** {request.get('active') or 'none'}" if request else "")
        tables = [_table(result["lists"].get(mode, [])) if mode in result["lists"]
                  else "_SASRec is not loaded (train it: `thinkrec train baseline`)._" for mode in MODES]
        levels = "\n\n".join(f"**{name.capitalize()}:** {text}" for name, text in result["levels"].items() if text)
        return [head, *tables, levels]

    with gr.Tab("Compare"):
        gr.Markdown("The same turn answered three ways. SASRec ranks from the history and gets the same "
                    "request filter as thinkrec. ✓: satisfies the active request; "
                    "“also in”: the other lists that hold the item. Nothing here is saved to a session.")
        with gr.Row():
            user = gr.Dropdown(["fresh user"] + users, value=users[0] if users else "fresh user",
                               label="User", elem_id="compare-user")
            message = gr.Textbox(label="Request", value="a comedy please", elem_id="compare-message", scale=3)
            k = gr.Slider(1, 20, value=10, step=1, label="K")
            go = gr.Button("Compare", variant="primary", elem_id="compare-go")
        head = gr.Markdown(elem_id="compare-request")
        with gr.Row():
            columns = []
            for mode in MODES:
                with gr.Column():
                    gr.Markdown(f"### {HEADINGS.get(mode, mode)}")
                    columns.append(gr.Markdown(elem_id=f"compare-{mode.lower()}"))
        levels = gr.Markdown(elem_id="compare-levels")
        go.click(run, [user, message, k], [head, *columns, levels])


def eval_tables(checkpoint: Path) -> str:
    """The latest eval of each split saved beside the checkpoint, as Markdown tables."""
    parts = []
    for path in sorted(Path(checkpoint).glob("eval_*.json")):
        report = json.loads(path.read_text())
        lines = [f"**{report['split']}** split, {report['num_users']} users, {report.get('date', '')}",
                 "", "| method | HR@10 | NDCG@10 | invalid |", "|---|---|---|---|"]
        for name, values in report["results"].items():
            lines.append(f"| {name} | {values.get('hr@10', 0):.4f} | {values.get('ndcg@10', 0):.4f} | "
                         f"{values.get('invalid_rate', 0):.3f} |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) or ("_No eval saved for this checkpoint yet: run `thinkrec eval --checkpoint "
                                  f"{checkpoint}` and it appears here._")


def model_tab(engine) -> None:
    checkpoint = Path(engine.checkpoint)
    with gr.Tab("Model"):
        gr.Markdown(f"**Checkpoint:** `{checkpoint}`")
        gr.Markdown(eval_tables(checkpoint), elem_id="model-eval")
        curves = [(checkpoint.parent / "pretrain" / "loss_curve.png", "pre-training loss"),
                  (checkpoint / "loss_curve.png", "SFT loss" if checkpoint.name != "pretrain" else "loss"),
                  (checkpoint / "rl_curves.png", "RL curves"), (checkpoint.parent / "rl" / "rl_curves.png", "RL curves"),
                  (Path(engine.data) / "sid_usage.png", "SID usage and prefix coherence")]
        shown = [(p, label) for p, label in curves if p.exists()]
        if not shown:
            gr.Markdown("_No training curves beside this checkpoint._")
        for path, label in dict((p, (p, label)) for p, label in shown).values():
            gr.Image(str(path), label=label, interactive=False)
