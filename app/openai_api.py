"""An OpenAI-compatible chat endpoint over a built engine: ``POST /v1/chat/completions`` (streaming
and not) and ``GET /v1/models``, mounted on the app's own server by ``app.ui.serve``. Any OpenAI
client, or LangChain's ``ChatOpenAI(base_url=...)``, talks to thinkrec with no thinkrec code.

    client = openai.OpenAI(base_url="http://127.0.0.1:7860/v1", api_key="unused")
    reply = client.chat.completions.create(model="thinkrec", user="1",
                                           messages=[{"role": "user", "content": "a 90s comedy please"}])
    reply.choices[0].message.reasoning_content      # "Derivation: ...\\nEvolution: ...\\nRecommendation: ..."
    reply.choices[0].message.items                  # [{"rank", "item_id", "title", "year", "categories", "sid", "score"}]

The message list is the conversation (engine/messages.py replays it); ``user`` picks a dataset
user; ``k``, ``reasoning_effort`` and ``session_id`` steer the turn. The reasoning streams as
``reasoning_content`` (the field vLLM and DeepSeek-R1 use). Schema: docs/openai_api.md. Like
app/ui.py this module is handed a built engine and imports only the engine's pure-Python parts.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Mount

from engine.events import ErrorEvent, ItemsEvent, NoticeEvent, ReasoningDelta, ReplyDelta, TraceEvent
from engine.messages import item_lines, level_header, replay_messages

# OpenAI's reasoning_effort values (and thinkrec's own budget names) -> the engine's budget.
EFFORTS = {"none": "off", "off": "off", "minimal": "short", "low": "short", "short": "short",
           "medium": "full", "high": "full", "xhigh": "full", "max": "full", "full": "full"}
# How the engine words a model-server outage (engine.engine.Engine.turn catches BackendUnavailable).
OUTAGE = "The model server is not answering"
SID_SPAN = re.compile(r"(?:<[a-z]_\d+>)+")
SID_TOKEN = re.compile(r"<[a-z]_\d+>")
ITEM_LINE = re.compile(r"^\s*\d+\.\s+(?P<title>.+?)(?:\s+\((?P<year>\d{4})\))?\s*$")
_END = object()


class APIError(Exception):
    """Answered as OpenAI answers errors: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def _outage(message: str) -> APIError:
    return APIError(503, message, code="model_unavailable", kind="server_error")


@dataclass
class _Call:
    """A request, checked: the conversation, this turn's options and thinkrec's extensions."""
    turns: list[tuple[str, str, list[str]]]
    stream: bool = False
    include_usage: bool = False
    user: str | None = None
    session_id: str | None = None
    k: int = 10
    budget: str | int = "full"


def _text(content, param: str) -> str:
    """A message's content: a string, or a list of parts of which the text ones count."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    raise APIError(400, "content must be a string or a list of content parts", param)


def _int(body: dict, name: str, default: int, low: int, high: int) -> int:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise APIError(400, f"{name} must be an integer from {low} to {high}", name, "invalid_value")
    return value


def _budget(effort) -> str | int:
    if effort is None:
        return "full"
    if isinstance(effort, int) and not isinstance(effort, bool) and effort >= 0:
        return effort                                     # a reasoning token count
    if isinstance(effort, str) and effort.lower() in EFFORTS:
        return EFFORTS[effort.lower()]
    raise APIError(400, f"reasoning_effort must be one of {', '.join(EFFORTS)} or a token count",
                   "reasoning_effort", "invalid_value")


class ChatAPI:
    """The routes' work over one engine; ``openai_app(engine)`` wraps it in a FastAPI app."""

    def __init__(self, engine):
        self.engine = engine
        checkpoint = engine.checkpoint
        self.model = "thinkrec/" + "-".join(p for p in (checkpoint.parent.name, checkpoint.name) if p)

    # -- the request ---------------------------------------------------------------------------
    def parse(self, body) -> _Call:
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise APIError(400, "messages must be a non-empty list", "messages")
        if _int(body, "n", 1, 1, 1 << 30) != 1:
            raise APIError(400, "only n=1 is supported: one conversation turn has one answer", "n", "invalid_value")
        turns = []
        for n, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise APIError(400, "each message is an object with a role", f"messages[{n}]")
            role = message["role"]
            if role not in ("user", "assistant"):
                continue                       # system, developer and tool messages do not steer a turn
            text = _text(message.get("content"), f"messages[{n}].content")
            items = self.shown_items(message, text) if role == "assistant" else []
            turns.append((role, text, items))
        user = body.get("user") or None
        if user is not None and str(user) not in self.engine.user_histories:
            raise APIError(400, f"no dataset user '{user}' (the user field picks a user of {self.engine.data.name})",
                           "user", "user_not_found")
        session_id = body.get("session_id") or None
        if session_id is not None:
            try:
                self.engine.sessions.get(str(session_id))
            except KeyError:
                raise APIError(400, f"no session '{session_id}'", "session_id", "session_not_found") from None
        options = body.get("stream_options") or {}
        return _Call(turns=turns, stream=bool(body.get("stream")), user=str(user) if user else None,
                     include_usage=bool(isinstance(options, dict) and options.get("include_usage")),
                     session_id=str(session_id) if session_id else None, k=_int(body, "k", 10, 1, 50),
                     budget=_budget(body.get("reasoning_effort")))

    def shown_items(self, message: dict, text: str) -> list[str]:
        """The items an earlier answer showed: its ``items`` field when the client sent it back,
        else the SIDs in its text, else its numbered "N. Title (year)" lines."""
        items = message.get("items")
        if isinstance(items, list) and items:
            return [str(i["item_id"]) if isinstance(i, dict) else str(i)
                    for i in items if not isinstance(i, dict) or "item_id" in i]
        catalog = self.engine.catalog
        found = []
        for span in SID_SPAN.findall(text):
            try:
                found.append(catalog.by_sid(span).item_id)
            except (KeyError, ValueError):
                pass
        if found:
            return found
        for line in text.splitlines():
            match = ITEM_LINE.match(line)
            if not match:
                continue
            year = int(match["year"]) if match["year"] else None
            hits = [i for i in catalog.search_titles(match["title"], k=5)
                    if i.match == "exact" and (year is None or i.year == year)]
            if hits:
                found.append(hits[0].item_id)
        return found

    # -- the answer ----------------------------------------------------------------------------
    def events(self, call: _Call) -> Iterator:
        """The turn's engine events (blocking: run them in a worker thread)."""
        session_id, text = replay_messages(self.engine, call.turns, user_id=call.user, session_id=call.session_id)
        yield session_id
        yield from self.engine.turn(session_id, text, thinking=True, k=call.k, budget=call.budget)

    async def complete(self, call: _Call) -> JSONResponse:
        answer = _Answer()
        for event in await run_in_threadpool(lambda: list(self.events(call))):
            answer.feed(event)
        if answer.outage:
            raise _outage(answer.outage)
        answer.finish()
        message = {"role": "assistant", "content": answer.content, "reasoning_content": answer.reasoning or None,
                   "items": answer.items}
        return JSONResponse({"id": answer.id, "object": "chat.completion", "created": answer.created,
                             "model": self.model, "choices": [{"index": 0, "message": message, "logprobs": None,
                                                               "finish_reason": "stop"}],
                             "usage": answer.usage(), "thinkrec": answer.extension()})

    async def stream(self, call: _Call):
        events = _in_threads(self.events(call))
        answer = _Answer()
        # Hold the response until the turn gets past its notices, so an outage can still be a 503.
        pending = []
        while True:
            event = await anext(events, _END)
            if event is _END:
                break
            pending.append(event)
            answer_started = not isinstance(event, (str, NoticeEvent))
            if isinstance(event, ErrorEvent) and event.message.startswith(OUTAGE):
                await events.aclose()
                raise _outage(event.message)
            if answer_started:
                break
        return StreamingResponse(self._sse(answer, pending, events, call), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _sse(self, answer: _Answer, pending: list, events: AsyncIterator, call: _Call) -> AsyncIterator[str]:
        def chunk(delta: dict, finish: str | None = None, **extra) -> str:
            body = {"id": answer.id, "object": "chat.completion.chunk", "created": answer.created, "model": self.model,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra}
            return f"data: {json.dumps(body)}\n\n"

        async def every():
            for event in pending:
                yield event
            async for event in events:
                yield event

        try:
            yield chunk({"role": "assistant", "content": ""})
            async for event in every():
                for delta in answer.feed(event):
                    yield chunk(delta)
                if answer.outage:             # the server went away mid-turn: OpenAI's in-stream error
                    yield f"data: {json.dumps(_outage(answer.outage).body())}\n\n"
                    yield "data: [DONE]\n\n"
                    return
            for delta in answer.finish():
                yield chunk(delta)
            yield chunk({}, "stop", thinkrec=answer.extension())
            if call.include_usage:
                body = {"id": answer.id, "object": "chat.completion.chunk", "created": answer.created,
                        "model": self.model, "choices": [], "usage": answer.usage()}
                yield f"data: {json.dumps(body)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            await events.aclose()

    def models(self) -> dict:
        created = int(self.engine.checkpoint.stat().st_mtime) if self.engine.checkpoint.exists() else 0
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "thinkrec"}
                                           for name in ("thinkrec", self.model)]}


@dataclass
class _Answer:
    """One turn's events gathered into an OpenAI message; ``feed`` also returns the stream deltas."""
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))
    session_id: str = ""
    reasoning: str = ""
    level: str | None = None
    content: str = ""
    items: list[dict] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    trace: dict | None = None
    outage: str = ""

    def _say(self, text: str) -> dict:
        piece = ("\n" if self.content else "") + text
        self.content += piece
        return {"content": piece}

    def feed(self, event) -> list[dict]:
        if isinstance(event, str):                       # the session the turn runs in
            self.session_id = event
        elif isinstance(event, ReasoningDelta) and event.text:
            piece = level_header(event.level, self.level) + event.text
            self.level = event.level
            self.reasoning += piece
            return [{"reasoning_content": piece}]
        elif isinstance(event, ItemsEvent):
            self.items = [card.model_dump() for card in event.items]
        elif isinstance(event, ReplyDelta) and event.text:
            return [self._say(event.text)]
        elif isinstance(event, TraceEvent):
            self.trace = event.trace.model_dump()
        elif isinstance(event, NoticeEvent):
            self.notices.append(event.text)
        elif isinstance(event, ErrorEvent):
            if event.message.startswith(OUTAGE):
                self.outage = event.message
                return []
            self.notices.append(event.message)
            return [self._say(event.message)]             # "nothing satisfies ...": said, with no items
        return []

    def finish(self) -> list[dict]:
        """The tail of the content (numbered items, notices), then the items as data."""
        told = set()
        deltas = [self._say(line) for line in item_lines(self.items)]
        for notice in self.notices:
            if notice not in self.content and notice not in told:
                told.add(notice)
                deltas.append(self._say(notice))
        return deltas + [{"items": self.items}]

    def usage(self) -> dict:
        trace = self.trace or {}
        reasoning = trace.get("reasoning_tokens", 0)
        completion = reasoning + sum(len(SID_TOKEN.findall(i["sid"])) for i in self.items)
        prompt = trace.get("prompt_tokens", 0)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                "completion_tokens_details": {"reasoning_tokens": reasoning}}

    def extension(self) -> dict:
        trace = self.trace or {}
        return {"session_id": self.session_id, "turn_id": trace.get("turn_id"), "request": trace.get("request"),
                "notices": self.notices, "reasoning_budget": trace.get("max_reasoning_tokens", 0),
                "cache_hit": trace.get("cache_hit", False), "latency_ms": trace.get("latency_ms", {})}


def _in_threads(iterator: Iterator) -> AsyncIterator:
    """A blocking iterator stepped in the threadpool, closed (the engine's session lock released)
    when the response ends or the client goes away."""
    async def steps():
        try:
            while True:
                item = await run_in_threadpool(next, iterator, _END)
                if item is _END:
                    return
                yield item
        finally:
            try:
                iterator.close()
            except ValueError:                # still running in its thread: it is closed when collected
                pass
    return steps()


def openai_app(engine) -> FastAPI:
    """The endpoint as an app to mount at ``/v1`` (``app.ui.serve`` does)."""
    api = ChatAPI(engine)
    app = FastAPI(title="thinkrec OpenAI-compatible API", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError):
        return error.response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        return APIError(error.status_code, str(error.detail), code=str(error.status_code)).response()

    @app.post("/chat/completions")
    async def chat_completions(request: Request):
        try:
            body = await request.json()
        except ValueError:
            raise APIError(400, "the request body is not valid JSON") from None
        call = await run_in_threadpool(api.parse, body)          # it reads the session store and catalog
        return await (api.stream(call) if call.stream else api.complete(call))

    @app.get("/models")
    async def models():
        return api.models()

    app.state.chat = api
    return app


def openai_routes(engine) -> list[BaseRoute]:
    """The endpoint under ``/v1``, for a FastAPI app's ``routes`` (``demo.launch(app_kwargs=...)``)."""
    return [Mount("/v1", app=openai_app(engine))]
