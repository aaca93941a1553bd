"""An OpenAI-compatible chat endpoint over a built engine: ``POST /v1/chat/completions`` (streaming
and not) and ``GET /v1/models``, mounted on the app's own server by ``app.ui.serve``. Any OpenAI
client, or LangChain's ``ChatOpenAI(base_url=...)``, talks to thinkrec with no thinkrec code.

    client = openai.OpenAI(base_url="http://127.0.0.1:7860/v1", api_key="unused")
    reply = client.chat.completions.create(model="thinkrec", user="1",
                                           messages=[{"role": "user", "content": "a 90s comedy please"}])
    reply.choices[0].message.reasoning_content      # "Derivation: ...\\nEvolution: ...\\nRecommendation: ..."
    reply.choices[0].message.items                  # [{"rank", "item_id", "title", "year", "categories", "sid", "score"}]

The message list is the conversation (app/integrations/messages.py replays it); ``user`` picks a dataset
user; ``k``, ``reasoning_effort`` and ``session_id`` steer the turn. The reasoning streams as
``reasoning_content`` (the field vLLM and DeepSeek-R1 use). Schema: docs/openai_api.md. Like
app/ui.py this module is handed a built engine and imports only the engine's pure-Python parts.

Sizes are capped here, at the edge, before any session is created or touched (the ``MAX_*``
constants of app/integrations/openai_request.py): a refused request gets an OpenAI-style error (413 for the body's size, 400 for
the rest) that states the limit, and leaves nothing stored. The whole request is checked in
``ChatAPI.parse`` before the turn starts; a failure inside the engine is a 500 error body, or,
once a stream has started, an in-stream error chunk followed by ``data: [DONE]``.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Mount

from engine.events import ErrorEvent, NoticeEvent, ReasoningDelta, ReplyDelta, TurnResult
from app.integrations.messages import item_lines, level_header, replay_messages

from app.integrations.openai_request import (  # noqa: F401 - the limits are part of this module's interface
    DEFAULT_RATE,
    EFFORTS,
    ITEM_LINE,
    MAX_BODY_BYTES,
    MAX_ID_CHARS,
    MAX_K,
    MAX_MESSAGES,
    MAX_MESSAGE_CHARS,
    MAX_REASONING_TOKENS,
    MAX_TITLE_LINES,
    MAX_TITLE_LINE_CHARS,
    OUTAGE,
    SID_SPAN,
    SID_TOKEN,
    SURROGATE,
    _END,
    APIError,
    ClientLimit,
    _Call,
    _budget,
    _busy,
    _check_ignored,
    _checked_text,
    _failure,
    _id,
    _int,
    _outage,
    _read_json,
    _text,
)

log = logging.getLogger(__name__)


class ChatAPI:
    """The routes' work over one engine; ``openai_app(engine)`` wraps it in a FastAPI app."""

    def __init__(self, engine):
        self.engine = engine
        checkpoint = engine.checkpoint
        self.model = "thinkrec/" + "-".join(p for p in (checkpoint.parent.name, checkpoint.name) if p)

    # -- the request ---------------------------------------------------------------------------
    def parse(self, body) -> _Call:
        """The whole request checked, before any session is created or touched: a refusal
        leaves nothing behind."""
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise APIError(400, "messages must be a non-empty list", "messages")
        if len(messages) > MAX_MESSAGES:
            raise APIError(400, f"{len(messages):,} messages; the limit is {MAX_MESSAGES} per request", "messages",
                           "too_many_messages")
        if _int(body, "n", 1, 1, 1 << 30) != 1:
            raise APIError(400, "only n=1 is supported: one conversation turn has one answer", "n", "invalid_value")
        _check_ignored(body)
        k, budget = _int(body, "k", 10, 1, MAX_K), _budget(body.get("reasoning_effort"))
        turns = []
        for n, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise APIError(400, "each message is an object with a role", f"messages[{n}]")
            role = message["role"].strip().lower()
            if role not in ROLES:
                raise APIError(400, f"messages[{n}].role is '{message['role'][:40]}'; a role is one of "
                                    f"{', '.join(ROLES)}", f"messages[{n}].role", "invalid_value")
            if role not in ("user", "assistant"):
                continue                       # system, developer and tool messages do not steer a turn
            text = _text(message.get("content"), f"messages[{n}].content")
            items = self.shown_items(message, text) if role == "assistant" else []
            turns.append((role, text, items))
        user = _id(body.get("user"), "user")
        if user is not None and user not in self.engine.user_histories:
            raise APIError(400, f"no dataset user '{user}' (the user field picks a user of {self.engine.data.name})",
                           "user", "user_not_found")
        session_id = _id(body.get("session_id"), "session_id")
        if session_id is not None:
            if self.engine.busy(session_id):           # refused before any session or model work
                raise _busy(self.engine.BUSY)
            try:
                self.engine.sessions.get(session_id, traces=False)
            except KeyError:
                raise APIError(400, f"no session '{session_id}'", "session_id", "session_not_found") from None
        stream = body.get("stream")
        if stream is not None and not isinstance(stream, bool):
            raise APIError(400, "stream must be true or false", "stream", "invalid_type")
        options = body.get("stream_options") or {}
        if not isinstance(options, dict):
            raise APIError(400, "stream_options must be an object", "stream_options", "invalid_type")
        return _Call(turns=turns, stream=bool(stream), user=user, include_usage=bool(options.get("include_usage")),
                     session_id=session_id, k=k, budget=budget)

    def shown_items(self, message: dict, text: str) -> list[str]:
        """The items an earlier answer showed: its ``items`` field when the client sent it back,
        else the SIDs in its text, else its numbered "N. Title (year)" lines. Each reads at most
        ``MAX_TITLE_LINES`` entries, spans or numbered lines; the rest are ignored."""
        items = message.get("items")
        if isinstance(items, list) and items:
            ids = (i.get("item_id") if isinstance(i, dict) else i for i in items[:MAX_TITLE_LINES])
            return [str(i) for i in ids if isinstance(i, (str, int)) and not isinstance(i, bool)]
        catalog = self.engine.catalog
        found = []
        for span in SID_SPAN.findall(text)[:MAX_TITLE_LINES]:
            try:
                found.append(catalog.by_sid(span).item_id)
            except (KeyError, ValueError):
                pass
        if found:
            return found
        numbered = 0
        for line in text.splitlines():
            match = ITEM_LINE.match(line) if len(line) <= MAX_TITLE_LINE_CHARS else None
            if not match:
                continue
            numbered += 1
            if numbered > MAX_TITLE_LINES:
                break
            year = int(match["year"]) if match["year"] else None
            # A dictionary lookup: a line that is no catalog title costs nothing more.
            hits = [i for i in catalog.exact_title(match["title"]) if year is None or i.year == year]
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
        try:
            events = await run_in_threadpool(lambda: list(self.events(call)))
        except Exception as error:
            raise _failure(error) from error
        for event in events:
            answer.feed(event)
        if answer.busy:
            raise _busy(answer.busy)
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
            try:
                event = await anext(events, _END)
            except Exception as error:
                raise _failure(error) from error
            if event is _END:
                break
            pending.append(event)
            answer_started = not isinstance(event, (str, NoticeEvent))
            if isinstance(event, ErrorEvent) and event.code == "busy":
                await events.aclose()
                raise _busy(event.message)
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
            try:
                async for event in every():
                    for delta in answer.feed(event):
                        yield chunk(delta)
                    if answer.outage:             # the server went away mid-turn: OpenAI's in-stream error
                        yield f"data: {json.dumps(_outage(answer.outage).body())}\n\n"
                        yield "data: [DONE]\n\n"
                        return
            except Exception as error:            # the turn failed after the stream started: say so, then end
                yield f"data: {json.dumps(_failure(error).body())}\n\n"
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
    """One turn's events gathered (``TurnResult.add``) into an OpenAI message; ``feed`` also
    returns the stream deltas."""
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))
    session_id: str = ""
    result: TurnResult = field(default_factory=TurnResult)
    reasoning: str = ""
    level: str | None = None
    content: str = ""
    said: list[str] = field(default_factory=list)      # errors told in the content ("nothing satisfies ...")
    outage: str = ""
    busy: str = ""

    @property
    def items(self) -> list[dict]:
        return self.result.item_dicts()

    @property
    def trace(self) -> dict | None:
        return self.result.trace.model_dump() if self.result.trace else None

    @property
    def notices(self) -> list[str]:
        return self.result.notices + self.said

    def _say(self, text: str) -> dict:
        piece = ("\n" if self.content else "") + text
        self.content += piece
        return {"content": piece}

    def feed(self, event) -> list[dict]:
        if isinstance(event, str):                       # the session the turn runs in
            self.session_id = event
            return []
        self.result.add(event)
        if isinstance(event, ReasoningDelta) and event.text:
            piece = level_header(event.level, self.level) + event.text
            self.level = event.level
            self.reasoning += piece
            return [{"reasoning_content": piece}]
        if isinstance(event, ReplyDelta) and event.text:
            return [self._say(event.text)]
        if isinstance(event, ErrorEvent):
            if event.code == "busy":
                self.busy = event.message
            elif event.message.startswith(OUTAGE):
                self.outage = event.message
            else:
                self.said.append(event.message)
                return [self._say(event.message)]         # "nothing satisfies ...": said, with no items
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


# The roles a chat request may carry (OpenAI's, "function" included for older clients).
ROLES = ("user", "assistant", "system", "developer", "tool", "function")


def openai_app(engine, rate_limit: float = DEFAULT_RATE) -> FastAPI:
    """The endpoint as an app to mount at ``/v1`` (``app.ui.serve`` does); ``rate_limit`` requests
    a second per client (``ClientLimit``; 0: no limit)."""
    api = ChatAPI(engine)
    limit = ClientLimit(rate_limit)
    app = FastAPI(title="thinkrec OpenAI-compatible API", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError):
        return error.response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        return APIError(error.status_code, str(error.detail), code=str(error.status_code)).response()

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception):
        return _failure(error).response()          # an OpenAI error body, never Starlette's plain text

    @app.post("/chat/completions")
    async def chat_completions(request: Request):
        limit.check(request.client.host if request.client else "unknown")
        body = await _read_json(request)
        call = await run_in_threadpool(api.parse, body)          # it reads the session store and catalog
        return await (api.stream(call) if call.stream else api.complete(call))

    @app.api_route("/models", methods=["GET", "HEAD"])
    async def models():
        return api.models()

    app.state.chat, app.state.limit = api, limit
    return app


def openai_routes(engine, rate_limit: float = DEFAULT_RATE) -> list[BaseRoute]:
    """The endpoint under ``/v1``, for a FastAPI app's ``routes`` (``demo.launch(app_kwargs=...)``)."""
    return [Mount("/v1", app=openai_app(engine, rate_limit))]
