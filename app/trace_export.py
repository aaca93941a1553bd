"""A stored session as a file: Markdown, JSON or one self-contained HTML page.

Every answered turn keeps its trace on the assistant turn (a refused one on the user turn; see
engine/sessions.py), so a session exports with its reasoning, items and beams long after the app
that answered it has stopped, and the export needs neither the model nor a server:

    text = export_session(store.get(session_id), "html", lookup=catalog_lookup(catalog))

The three formats render one ``SessionExport`` (pydantic): JSON is that model, with a
``schema_version``, and reads back with ``SessionExport.model_validate_json``. The HTML page has
inline CSS, no script and no external URL, so it opens offline; every user and model text in it is
HTML-escaped. This module imports only pydantic, ``engine.events`` and the standard library (the
UI imports it, and must not pull in torch): the session and the catalog arrive duck-typed.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from engine.events import Trace, describe_ranking
from app.integrations.messages import LEVEL_NAMES

SCHEMA_VERSION = 1
FORMATS = ("md", "json", "html")
Format = Literal["md", "json", "html"]
LEVEL_HINTS = {"derivation": "interests in the history", "evolution": "how they move in time",
               "recommendation": "what to serve now"}
HISTORY_SHOWN = 10
# item ids -> {item_id: {"title", "year", "categories", "sid"}} for the ids it knows (a catalog).
Lookup = Callable[[list[str]], dict[str, dict]]


class ExportItem(BaseModel):
    rank: int
    item_id: str
    title: str = ""
    year: int | None = None
    categories: list[str] = []
    sid: str = ""
    score: float | None = None        # summed log-probability of the SID tokens (None: not stored)


class HistoryItem(BaseModel):
    item_id: str
    title: str = ""
    year: int | None = None


class ExportTurn(BaseModel):
    """One exchange: the user's message and the answer (or the refusal) with its trace."""
    number: int
    user_text: str | None = None      # None: an answer with no stored message before it
    user_at: datetime | None = None
    parsed_request: dict = {}         # engine.request.Request of the message, as stored
    reply: str | None = None          # None: not answered (refused, or cut off)
    answered_at: datetime | None = None
    refused: bool = False             # nothing satisfied the active constraints
    items: list[ExportItem] = []
    levels: dict[str, str] = {}
    trace: Trace | None = None        # None: stored before traces were kept (or a replayed turn)


class SessionExport(BaseModel):
    schema_version: int = SCHEMA_VERSION
    exported_at: datetime
    session_id: str
    user_id: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    history_size: int = 0
    history_last: list[HistoryItem] = []   # the most recent items of the history, newest first
    excluded: list[str] = []
    constraints: dict = {}
    turns: list[ExportTurn] = []


def catalog_lookup(catalog) -> Lookup:
    """A ``Lookup`` over a ``data.catalog.Catalog`` (anything with ``items(ids)``)."""
    def lookup(item_ids: list[str]) -> dict[str, dict]:
        return {i.item_id: {"title": i.title, "year": i.year, "categories": list(i.categories), "sid": i.sid}
                for i in catalog.items(list(item_ids))}
    return lookup


def _trace(stored: dict) -> Trace | None:
    if not stored:
        return None
    try:
        return Trace.model_validate(stored)
    except ValidationError:
        return None


def _items(turn, trace: Trace | None, known: dict[str, dict]) -> list[ExportItem]:
    cards = (turn.trace or {}).get("items")
    if cards:
        return [ExportItem.model_validate(card) for card in cards]
    beams = {b.item_id: b for b in (trace.beams if trace else [])}
    rows = []
    for rank, item_id in enumerate(turn.items, 1):
        info, beam = known.get(item_id, {}), beams.get(item_id)
        rows.append(ExportItem(rank=rank, item_id=item_id, title=info.get("title") or (beam.title if beam else ""),
                               year=info.get("year"), categories=info.get("categories") or [],
                               sid=info.get("sid") or (beam.sid if beam else ""),
                               score=beam.score if beam else None))
    return rows


def build_export(session, lookup: Lookup | None = None) -> SessionExport:
    """The ``SessionExport`` of an ``engine.sessions.ChatSession``. ``lookup`` fills titles for
    history items and for turns stored without their cards; without it those show ids only."""
    recent = list(reversed(session.history[-HISTORY_SHOWN:]))
    wanted = set(recent) | {i for t in session.turns if t.role == "assistant" and not (t.trace or {}).get("items")
                            for i in t.items}
    known = lookup(sorted(wanted)) if lookup and wanted else {}
    turns: list[ExportTurn] = []
    for turn in session.turns:
        if turn.role == "user":
            trace = _trace(turn.trace)
            turns.append(ExportTurn(number=len(turns) + 1, user_text=turn.text, user_at=turn.created_at,
                                    parsed_request=dict(turn.request), refused=trace is not None, trace=trace))
            continue
        if not turns or turns[-1].reply is not None or turns[-1].refused:
            turns.append(ExportTurn(number=len(turns) + 1))
        current = turns[-1]
        trace = _trace(turn.trace)
        current.reply, current.answered_at, current.trace = turn.text, turn.created_at, trace
        current.items = _items(turn, trace, known)
        current.levels = {name: text for name, text in (trace.levels if trace else turn.reasoning or {}).items()}
    return SessionExport(
        exported_at=datetime.now(timezone.utc), session_id=session.id, user_id=session.user_id,
        created_at=getattr(session, "created_at", None), updated_at=getattr(session, "updated_at", None),
        history_size=len(session.history),
        history_last=[HistoryItem(item_id=i, title=known.get(i, {}).get("title", ""), year=known.get(i, {}).get("year"))
                      for i in recent],
        excluded=list(session.excluded), constraints=session.constraints.model_dump(), turns=turns)


def export_session(session, fmt: Format, lookup: Lookup | None = None) -> str:
    """The session as ``fmt`` ("md", "json" or "html") text."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown trace format '{fmt}': use one of {', '.join(FORMATS)}")
    export = build_export(session, lookup)
    return {"md": to_markdown, "json": to_json, "html": to_html}[fmt](export)


def to_json(export: SessionExport) -> str:
    return export.model_dump_json(indent=2) + "\n"


# -- shared pieces ---------------------------------------------------------------------------------
def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else ""


def _score(score: float | None) -> str:
    return "" if score is None else f"{score:.4f}"


def _latency(trace: Trace) -> str:
    return ", ".join(f"{name.removesuffix('_ms')} {value:.0f} ms" for name, value in trace.latency_ms.items())


def _facts(trace: Trace) -> list[tuple[str, str]]:
    return [("thinking", "on" if trace.thinking else "off"),
            ("reasoning", f"{trace.reasoning_tokens} tokens (budget {trace.max_reasoning_tokens})"),
            ("Think-Ahead cache", "hit" if trace.cache_hit else "miss"),
            ("prompt", f"{trace.prompt_tokens} tokens"), ("K / beams", f"{trace.k} / {trace.num_beams}"),
            ("backend", trace.backend), ("ranking", describe_ranking(trace.ranking)),
            ("latency", _latency(trace) or "-")]


def _request_lines(trace: Trace) -> list[tuple[str, str]]:
    request = trace.request
    lines = [("understood", request.understood or "no filter"), ("active", request.active or "none")]
    if request.available is not None:
        lines.append(("items satisfying", f"{request.available:,}"))
    lines += [("read by meaning", reading) for reading in request.readings]
    if request.soft:
        lines.append(("soft (re-ranks only)", request.soft))
    if request.unknown:
        lines.append(("not in this catalog", ", ".join(request.unknown)))
    if request.question:
        lines.append(("asked", request.question))
    if request.unparsed:
        lines.append(("left to the model", ", ".join(request.unparsed)))
    lines += [("note", note) for note in request.notes]
    return lines


def _levels(turn: ExportTurn) -> list[tuple[str, str]]:
    return [(name, turn.levels.get(name, "")) for name in LEVEL_NAMES if turn.levels.get(name)]


# -- Markdown --------------------------------------------------------------------------------------
def _md(text: str) -> str:
    """Text that Markdown shows as written: no raw HTML gets through."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cell(text: Any) -> str:
    return _md(str(text)).replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    return "`" + text.replace("`", "'") + "`" if text else ""


def _fence(text: str) -> str:
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def _quote(text: str) -> str:
    return "\n".join("> " + line if line else ">" for line in _md(text).splitlines()) or "> (no text)"


def to_markdown(export: SessionExport) -> str:
    out = [f"# thinkrec session `{export.session_id}`", "",
           f"- user: {_cell(export.user_id) if export.user_id else 'fresh user'}",
           f"- created: {_when(export.created_at)} · updated: {_when(export.updated_at)} · "
           f"exported: {_when(export.exported_at)} UTC",
           f"- history: {export.history_size} items"
           + (" · most recent: " + "; ".join(_cell(_history_label(h)) for h in export.history_last)
              if export.history_last else ""),
           f"- turns: {len(export.turns)} · schema version {export.schema_version}", ""]
    for turn in export.turns:
        out += [f"## Turn {turn.number}", ""]
        if turn.user_text is not None:
            out += [f"**User** ({_when(turn.user_at)}):", "", _quote(turn.user_text or "(no text: what next?)"), ""]
        for name, text in _levels(turn):
            out += [f"### {LEVEL_NAMES[name]} — {LEVEL_HINTS[name]}", "", _md(text), ""]
        if turn.refused:
            out += ["**Refused:** no unseen item satisfies the active constraints.", ""]
        if turn.reply is not None:
            out += [f"**Reply** ({_when(turn.answered_at)}): {_md(turn.reply)}", ""]
        if turn.items:
            out += ["### Items", "", "| rank | title | year | SID | score |", "|---:|---|---:|---|---:|"]
            out += [f"| {i.rank} | {_cell(i.title or i.item_id)} | {i.year or ''} | {_code(i.sid)} | {_score(i.score)} |"
                    for i in turn.items]
            out.append("")
        trace = turn.trace
        if trace is None:
            out += ["_No trace stored for this turn._", ""]
            continue
        if trace.beams:
            out += ["### Beams", "", "| # | title | SID | score |", "|---:|---|---|---:|"]
            out += [f"| {n} | {_cell(b.title)} | {_code(b.sid)} | {_score(b.score)} |"
                    for n, b in enumerate(trace.beams, 1)]
            out.append("")
        out += ["### Request", ""] + [f"- {name}: {_cell(value)}" for name, value in _request_lines(trace)] + [""]
        out += ["### Trace", "", f"- turn id: `{trace.turn_id}`"]
        out += [f"- {name}: {_cell(value)}" for name, value in _facts(trace)] + [""]
        if trace.prompt:
            out += ["<details><summary>Prompt</summary>", "", _fence(trace.prompt), "", "</details>", ""]
    return "\n".join(out).rstrip() + "\n"


def _history_label(item: HistoryItem) -> str:
    title = item.title or item.item_id
    return f"{title} ({item.year})" if item.year else title


# -- HTML ------------------------------------------------------------------------------------------
CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#1f2328;background:#fff}
h1{font-size:1.4em}h2{font-size:1.2em;border-top:1px solid #d0d7de;padding-top:1em;margin-top:2em}
h3{font-size:1em;margin:1em 0 .3em}
.meta{color:#57606a}.user{background:#f6f8fa;border-left:4px solid #0969da;padding:.5em .8em;white-space:pre-wrap}
.reply{border-left:4px solid #1a7f37;padding:.5em .8em}.refused{border-left:4px solid #cf222e;padding:.5em .8em}
details{border:1px solid #d0d7de;border-radius:6px;padding:.4em .8em;margin:.4em 0}
summary{cursor:pointer;font-weight:600}.level p{white-space:pre-wrap;margin:.4em 0}
table{border-collapse:collapse;margin:.4em 0;font-size:.93em}
th,td{border:1px solid #d0d7de;padding:.2em .6em;text-align:left;vertical-align:top}th{background:#f6f8fa}
td.num{text-align:right;font-variant-numeric:tabular-nums}code,pre{font-family:ui-monospace,monospace;font-size:.9em}
pre{white-space:pre-wrap;word-break:break-all;background:#f6f8fa;padding:.6em;max-height:30em;overflow:auto}
dl{display:grid;grid-template-columns:max-content auto;gap:.1em 1em;margin:.4em 0}dt{color:#57606a}dd{margin:0}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _table(headers: list[str], rows: list[list[str]], numeric: set[int], css_class: str) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f'<td class="num">{cell}</td>' if n in numeric else f"<td>{cell}</td>"
                                    for n, cell in enumerate(row)) + "</tr>" for row in rows)
    return f'<table class="{css_class}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _dl(pairs: list[tuple[str, str]]) -> str:
    return "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in pairs) + "</dl>"


def _html_turn(turn: ExportTurn) -> str:
    parts = [f'<section class="turn" id="turn-{turn.number}"><h2>Turn {turn.number}</h2>']
    if turn.user_text is not None:
        parts.append(f'<p class="meta">User · {_e(_when(turn.user_at))}</p>'
                     f'<div class="user">{_e(turn.user_text or "(no text: what next?)")}</div>')
    levels = _levels(turn)
    if levels:
        parts.append('<h3>Reasoning</h3>')
        parts += [f'<details class="level level-{name}" open><summary>{n}. {LEVEL_NAMES[name]} — '
                  f'{_e(LEVEL_HINTS[name])}</summary><p>{_e(text)}</p></details>'
                  for n, (name, text) in enumerate(levels, 1)]
    if turn.refused:
        parts.append('<p class="refused">Refused: no unseen item satisfies the active constraints.</p>')
    if turn.reply is not None:
        parts.append(f'<p class="meta">Reply · {_e(_when(turn.answered_at))}</p><p class="reply">{_e(turn.reply)}</p>')
    if turn.items:
        parts.append("<h3>Items</h3>" + _table(
            ["rank", "title", "year", "categories", "SID", "score"],
            [[_e(i.rank), _e(i.title or i.item_id), _e(i.year or ""), _e(", ".join(i.categories[:4])),
              f"<code>{_e(i.sid)}</code>", _e(_score(i.score))] for i in turn.items], {0, 2, 5}, "items"))
    trace = turn.trace
    if trace is None:
        parts.append('<p class="meta">No trace stored for this turn.</p>')
    else:
        if trace.beams:
            parts.append("<h3>Beams</h3>" + _table(
                ["#", "title", "SID", "score"],
                [[_e(n), _e(b.title), f"<code>{_e(b.sid)}</code>", _e(_score(b.score))]
                 for n, b in enumerate(trace.beams, 1)], {0, 3}, "beams"))
        parts.append("<h3>Request</h3>" + _dl(_request_lines(trace)))
        parts.append("<h3>Trace</h3>" + _dl([("turn id", trace.turn_id)] + _facts(trace)))
        if trace.prompt:
            parts.append(f'<details class="prompt"><summary>Prompt ({trace.prompt_tokens} tokens)</summary>'
                         f"<pre>{_e(trace.prompt)}</pre></details>")
    return "".join(parts) + "</section>"


def to_html(export: SessionExport) -> str:
    history = "; ".join(_history_label(h) for h in export.history_last)
    facts = [("user", export.user_id or "fresh user"), ("created", _when(export.created_at)),
             ("updated", _when(export.updated_at)), ("exported", _when(export.exported_at) + " UTC"),
             ("history", f"{export.history_size} items" + (f" · most recent: {history}" if history else "")),
             ("turns", str(len(export.turns))), ("schema version", str(export.schema_version))]
    body = "".join(_html_turn(turn) for turn in export.turns) or '<p class="meta">No turns yet.</p>'
    return ("<!DOCTYPE html>\n"
            '<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            # No script, style or image from anywhere: the page renders offline as it is.
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
            f"<title>thinkrec session {_e(export.session_id[:8])}</title><style>{CSS}</style></head><body>"
            f"<h1>thinkrec session <code>{_e(export.session_id)}</code></h1>{_dl(facts)}{body}"
            "</body></html>\n")
