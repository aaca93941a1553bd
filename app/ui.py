"""The Gradio app: chat that steers recommendations with visible three-level reasoning, item cards
with like / dislike, a trace inspector and a catalog browser. It renders engine events; all model
work happens in engine/, and the engine arrives built: this module imports only
``engine.events``, so the UI never loads torch.

    thinkrec app --data artifacts/ml-100k --checkpoint checkpoints/ml-100k-tiny/sft --port 7860

API: ``recommend(message, user_id, thinking, session_id)`` -> {"reply", "reasoning": {level: text}, "items": [...],
"trace", "notices", "session_id", "request"}. Pass the returned ``session_id`` back to continue the conversation
(its constraints stay active); leave it empty to start a new session as ``user_id`` (empty: a fresh user).
``feedback(session_id, item_id, kind)`` with kind "like" or "dislike" -> {"session_id", "history", "history_size",
"excluded"}.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import gradio as gr

from app.compare_tab import compare_tab, model_tab
from app.demo_tab import demo_tab
from app.integrations.openai_api import openai_routes
from engine.events import ReasoningDelta, TurnResult, collect, describe_ranking, said
from app.trace_export import FORMATS, build_export, catalog_lookup, export_session

LEVEL_TITLES = {"derivation": "1 · Derivation — interests in the history",
                "evolution": "2 · Evolution — how they move in time",
                "recommendation": "3 · Recommendation — what to serve now"}
ITEM_COLUMNS = ["rank", "title", "year", "categories", "SID", "score"]


def _item_rows(items: list[dict]) -> list[list]:
    return [[i["rank"], i["title"], i["year"] or "", ", ".join(i["categories"][:4]), i["sid"], i["score"]] for i in items]


def _choices(items: list[dict]) -> list[tuple[str, str]]:
    return [(f"{i['rank']}. {i['title']}", i["item_id"]) for i in items]


def _checked(value, name: str, kinds: tuple, wanted: str, empty=None):
    """An API argument as its kind (None stands for ``empty``), or a Gradio error that says what
    the argument must be: these functions are reachable from any client, with any JSON value."""
    if value is None:
        return empty
    if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
        raise gr.Error(f"{name} must be {wanted}, not {type(value).__name__} ({str(value)[:40]!r})")
    return value


def build_app(engine, dataset_users: list[str], baseline=None) -> gr.Blocks:
    """The app's Blocks. ``baseline(history, exclude, k, constraints) -> [item_id]``: a ranker to
    compare against in the Compare tab, under the request's filter (the CLI passes SASRec)."""
    def history_markdown(session_id: str | None) -> str:
        if not session_id:
            return "_No session yet._"
        session = engine.sessions.get(session_id)
        if not session.history:
            return "**Fresh user** — no history yet; ask for something or like items to build one."
        recent = engine.catalog.items(session.history[-8:])
        titles = ", ".join(f"{i.title} ({i.year})" if i.year else i.title for i in reversed(recent))
        return f"**History:** {len(session.history)} items. Most recent: {titles}"

    def start(user_choice: str):
        user_id = None if user_choice in (None, "", "fresh user") else user_choice
        session = engine.start_session(user_id=user_id)
        return session.id, [], history_markdown(session.id), [], gr.update(choices=[], value=None), {}

    def respond(message: str, chat: list, session_id: str | None, thinking: bool, k: int, num_beams: int,
                budget: str = "full"):
        if not session_id:
            session_id = engine.start_session().id
        chat = list(chat or []) + [gr.ChatMessage(role="user", content=message or "(no text: what next?)")]
        result = TurnResult()

        def render(status: str):
            messages = list(chat)
            if result.levels:
                messages.append(gr.ChatMessage(role="assistant", content="Three levels, coarse to fine.",
                                               metadata={"title": "Reasoning", "id": "reasoning", "status": status}))
                for name, text in result.levels.items():
                    messages.append(gr.ChatMessage(role="assistant", content=text or "…",
                                                   metadata={"title": LEVEL_TITLES[name], "parent_id": "reasoning",
                                                             "status": status}))
            active = result.trace.request.active if result.trace else ""     # what stays active after this turn
            if result.reply or result.told:
                lines = [result.reply] + ([f"**Active request:** {active}"] if active else []) + [
                    f"{c.rank}. **{c.title}**" + (f" ({c.year})" if c.year else "") for c in result.items] + [
                    f"_{n}_" for n in result.told]
                messages.append(gr.ChatMessage(role="assistant", content="\n\n".join(line for line in lines if line)))
            return messages

        for event in engine.turn(session_id, message, thinking=thinking, k=int(k), num_beams=int(num_beams),
                                 budget=budget or "full"):
            result.add(event)
            if isinstance(event, ReasoningDelta):
                yield render("pending"), session_id, gr.skip(), gr.skip(), gr.skip(), gr.skip(), ""
        items, trace = result.item_dicts(), result.trace.model_dump() if result.trace else {}
        yield (render("done"), session_id, history_markdown(session_id), _item_rows(items),
               gr.update(choices=_choices(items), value=items[0]["item_id"] if items else None), trace, "")

    def feedback(kind: str, item_id: str | None, session_id: str | None):
        if not session_id or not item_id:
            return history_markdown(session_id), "Pick an item first."
        engine.feedback(session_id, item_id, kind)
        title = engine.catalog.item(item_id).title
        verb = "Added to your history" if kind == "like" else "Won't recommend again this session"
        return history_markdown(session_id), f"{verb}: **{title}**. Send another message to see the effect."

    def trace_summary(trace: dict) -> str:
        if not trace:
            return "_No turn yet._"
        latency = ", ".join(f"{k} {v:.0f} ms" for k, v in trace["latency_ms"].items())
        return (f"**Turn** `{trace['turn_id'][:8]}` · thinking {'on' if trace['thinking'] else 'off'} · "
                f"Think-Ahead cache {'**hit**' if trace['cache_hit'] else 'miss'} · prompt {trace['prompt_tokens']} "
                f"tokens · reasoning {trace['reasoning_tokens']} tokens · K {trace['k']}, beams {trace['num_beams']} · "
                f"backend {trace.get('backend', 'transformers')}\n\n"
                f"**Ranking:** {describe_ranking(trace.get('ranking') or {})}\n\n"
                f"**Latency:** {latency}\n\n"
                + request_summary(trace.get("request") or {})
                + "\n\n".join(f"**{LEVEL_TITLES[name]}:** {text}" for name, text in trace.get("levels", {}).items() if text))

    def request_summary(request: dict) -> str:
        if not request:
            return ""
        lines = [f"**Request understood:** {request.get('understood') or 'no filter'}",
                 f"**Active constraints:** {request.get('active') or 'none'}"
                 + (f" · {request['available']:,} items satisfy them" if request.get("available") is not None else "")]
        lines += [f"**Read by meaning:** {reading}" for reading in request.get("readings", [])]
        if request.get("soft"):
            lines.append(f"**Soft (re-ranks, excludes nothing):** {request['soft']}")
        if request.get("unknown"):
            lines.append("**Not in this catalog:** " + ", ".join(request["unknown"]))
        if request.get("question"):
            lines.append(f"**Asked instead of answering:** {request['question']}")
        if request.get("unparsed"):
            lines.append("**Not used as a filter (left to the model):** " + ", ".join(request["unparsed"]))
        lines += [f"_{note}_" for note in request.get("notes", [])]
        return "\n\n".join(lines) + "\n\n"

    def beam_rows(trace: dict) -> list[list]:
        return [[n + 1, b["title"], b["sid"], b["score"]] for n, b in enumerate(trace.get("beams", []))]

    # One folder for this app's exports, removed at exit; a session's file is rewritten on each click.
    export_dir = Path(tempfile.mkdtemp(prefix="thinkrec-traces-"))
    atexit.register(shutil.rmtree, export_dir, ignore_errors=True)

    def export_trace(session_id: str | None, fmt: str) -> str:
        """The session with every stored turn's trace as one file (md, json or self-contained html)."""
        if not session_id:
            raise gr.Error("Start a session and send a message first.")
        text = export_session(engine.sessions.get(session_id), fmt, lookup=catalog_lookup(engine.catalog))
        path = export_dir / f"thinkrec-session-{session_id}.{fmt}"
        path.write_text(text, encoding="utf-8")
        return str(path)

    def stored_turns(session_id: str | None):
        """The session's stored turns that have a trace, newest selected."""
        turns = build_export(engine.sessions.get(session_id)).turns if session_id else []
        choices = [(f"Turn {t.number}: {(t.user_text or '(no text)')[:60]}", str(t.number)) for t in turns if t.trace]
        return gr.update(choices=choices, value=choices[-1][1] if choices else None)

    def show_stored(session_id: str | None, number: str | None):
        turns = build_export(engine.sessions.get(session_id)).turns if session_id and number else []
        trace = next((t.trace.model_dump() for t in turns if str(t.number) == str(number) and t.trace), {})
        return trace_summary(trace), beam_rows(trace), trace

    def search(query: str):
        query = _checked(query, "query", (str,), "text", "")
        if not query.strip():
            return []
        try:
            results = [engine.catalog.by_sid(query)] if query.strip().startswith("<") else engine.catalog.search(query, k=20)
        except (KeyError, ValueError) as error:
            raise gr.Error(said(error)) from None
        return [[i.item_id, i.title, i.year or "", ", ".join(i.categories), i.sid, i.popularity,
                 "" if i.score is None else round(i.score, 3), i.match or "sid"] for i in results]

    def recommend(message: str, user_id: str, thinking: bool, session_id: str = "", budget: str = "full") -> dict:
        """One recommendation turn: in session `session_id` when given (its constraints stay
        active), else in a new session as dataset user `user_id` (empty: a fresh user)."""
        message = _checked(message, "message", (str,), "text", "")
        user_id = _checked(user_id, "user_id", (str, int), "a dataset user id", "")
        thinking = _checked(thinking, "thinking", (bool,), "true or false", True)
        session_id = _checked(session_id, "session_id", (str,), "a session id", "")
        budget = _checked(budget, "budget", (str, int), "short, full, auto, off or a token count", "full")
        if not session_id:
            try:
                session_id = engine.start_session(user_id=str(user_id) if user_id != "" else None).id
            except KeyError as error:              # an unknown user: say which, not "an error occurred"
                raise gr.Error(said(error)) from None
        result = collect(engine.turn(session_id, message, thinking=bool(thinking), budget=budget or "full"))
        return {"reply": result.reply, "reasoning": result.reasoning,
                "items": [{"item_id": c.item_id, "title": c.title, "year": c.year, "categories": c.categories,
                           "sid": c.sid, "score": c.score} for c in result.items],
                "trace": result.trace.model_dump() if result.trace else None, "notices": result.told,
                "session_id": session_id, "request": result.trace.request.model_dump() if result.trace else None,
                # Set when the turn asked instead of answering; answer it with the same session_id.
                "question": result.trace.request.question if result.trace else None}

    def give_feedback(session_id: str, item_id: str, kind: str) -> dict:
        """Record "like" (the item joins the session's history) or "dislike" (never recommended
        again in this session). Returns the session's history and excluded items after it."""
        session_id = _checked(session_id, "session_id", (str,), "a session id", "")
        item_id = _checked(item_id, "item_id", (str, int), "an item id", "")
        kind = _checked(kind, "kind", (str,), '"like" or "dislike"', "")
        try:
            session = engine.feedback(session_id, str(item_id), kind)
        except (KeyError, ValueError) as error:    # unknown session, item or kind: say which
            raise gr.Error(said(error)) from None
        return {"session_id": session.id, "history": session.history[-20:], "history_size": len(session.history),
                "excluded": session.excluded}

    with gr.Blocks(title="thinkrec") as demo:
        session_state = gr.State(None)
        trace_state = gr.State({})
        gr.Markdown("# thinkrec\nChat to steer recommendations; open the reasoning to see why.")
        with gr.Tab("Chat"):
            with gr.Row():
                user_picker = gr.Dropdown(["fresh user"] + dataset_users, value="fresh user", label="Start as user",
                                          elem_id="user-picker", allow_custom_value=False)
                start_button = gr.Button("Start session", elem_id="start-session")
                thinking = gr.Checkbox(value=True, label="Thinking", elem_id="thinking")
                budget = gr.Radio(["short", "full", "auto"], value="full", label="Reasoning budget", elem_id="budget")
                k = gr.Slider(1, 20, value=10, step=1, label="Items (K)")
                beams = gr.Slider(1, 50, value=20, step=1, label="Beam width")
            history = gr.Markdown("_No session yet._", elem_id="history")
            chatbot = gr.Chatbot(label="Conversation", height=460, elem_id="chat")
            with gr.Row():
                message = gr.Textbox(placeholder="e.g. a 90s comedy, no horror please", show_label=False,
                                     elem_id="message", scale=5)
                send = gr.Button("Send", variant="primary", elem_id="send", scale=1)
            items_table = gr.Dataframe(headers=ITEM_COLUMNS, label="Recommended items", elem_id="items",
                                       interactive=False)
            with gr.Row():
                item_choice = gr.Dropdown([], label="Item", elem_id="item-choice")
                like = gr.Button("Like", elem_id="like")
                dislike = gr.Button("Not interested", elem_id="dislike")
            feedback_note = gr.Markdown(elem_id="feedback-note")
        with gr.Tab("Trace") as trace_tab:
            stored_turn = gr.Dropdown([], label="Stored turn of this session (the last one shows after each turn)",
                                      elem_id="trace-turn", interactive=True)
            trace_text = gr.Markdown("_No turn yet._", elem_id="trace-summary")
            beam_table = gr.Dataframe(headers=["#", "title", "SID", "score"], label="Beam candidates", interactive=False)
            trace_json = gr.JSON(label="Full trace (prompt, beams, latency)")
            with gr.Row():
                export_format = gr.Radio(list(FORMATS), value="html", label="Export format", elem_id="export-format")
                export_button = gr.Button("Export session", elem_id="export-session")
            export_file = gr.File(label="Exported session (every turn's trace; html opens offline)",
                                  elem_id="trace-file", interactive=False)
        with gr.Tab("Catalog"):
            query = gr.Textbox(label="Search by title, free text or SID", elem_id="catalog-query")
            results = gr.Dataframe(headers=["item_id", "title", "year", "categories", "SID", "popularity", "score",
                                            "match"], interactive=False)
            stats = engine.catalog.manifest.sid
            gr.Markdown(f"**SID layout:** {stats.levels} levels × {stats.codebook_size} codes · "
                        f"{stats.num_unique:,} unique SIDs · utilization "
                        + " / ".join(f"{u:.0%}" for u in stats.utilization))
            plot = engine.data / "sid_usage.png"
            if plot.exists():
                gr.Image(str(plot), label="SID code usage and prefix coherence", interactive=False)

        demo_tab(engine)
        compare_tab(engine, dataset_users[:50], baseline)
        model_tab(engine)

        outputs = [chatbot, session_state, history, items_table, item_choice, trace_state, message]
        start_button.click(start, [user_picker], [session_state, chatbot, history, items_table, item_choice, trace_state])
        for trigger in (send.click, message.submit):
            trigger(respond, [message, chatbot, session_state, thinking, k, beams, budget], outputs,
                    api_visibility="private")
        like.click(lambda item, s: feedback("like", item, s), [item_choice, session_state], [history, feedback_note])
        dislike.click(lambda item, s: feedback("dislike", item, s), [item_choice, session_state], [history, feedback_note])
        trace_state.change(lambda t: (trace_summary(t), beam_rows(t), t), [trace_state], [trace_text, beam_table, trace_json])
        trace_state.change(stored_turns, [session_state], [stored_turn])
        trace_tab.select(stored_turns, [session_state], [stored_turn])
        stored_turn.input(show_stored, [session_state, stored_turn], [trace_text, beam_table, trace_json])
        export_button.click(export_trace, [session_state, export_format], [export_file], api_visibility="private")
        query.submit(search, [query], [results])
        gr.api(recommend, api_name="recommend")
        gr.api(give_feedback, api_name="feedback")
    return demo


def serve(engine, port: int = 7860, host: str = "127.0.0.1", baseline=None, rate_limit: float | None = None):
    """Launch the app on a built ``engine.engine.Engine``. The caller (the CLI) builds it, so this
    module imports only the engine's events and never torch (see pyproject's import contracts)."""
    users = list(engine.user_histories)[:200]
    demo = build_app(engine, users, baseline)
    demo.queue(default_concurrency_limit=10)
    # The OpenAI-compatible endpoint (app/integrations/openai_api.py) is served on the same port, under /v1.
    demo.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=True, theme=gr.themes.Soft(),
                app_kwargs={"routes": openai_routes(engine) if rate_limit is None else openai_routes(engine, rate_limit)})
    return demo
