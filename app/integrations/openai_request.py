"""The OpenAI endpoint's request edge: size limits, text checks and the error body, applied to a
request before any session is created or touched (app/integrations/openai_api.py uses them)."""

from __future__ import annotations

import json
import logging
import math
import re
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from fastapi import Request
from starlette.requests import ClientDisconnect
from fastapi.responses import Response

# Limits at the edge (issue 28). Each refusal names its limit in the error message.
# The request body, in bytes: checked from Content-Length before reading, and again on the bytes
# actually read (a chunked body has no Content-Length). 1 MiB holds hundreds of ordinary messages.
MAX_BODY_BYTES = 1 << 20
# Requests a second per client address, in bursts of twice that: a chat
# turn takes a second or more, so a person or an agent waiting on its answers stays far below it,
# while a client retrying in a tight loop is refused with a 429 before its body is read.
# `thinkrec app --rate-limit` sets it (0: off).
DEFAULT_RATE = 5.0
# Messages in one request, all roles. Every user message but the last is replayed into a new
# session, one session reload each, so the cost grows with the count (issue 28: 500 took 26 s).
MAX_MESSAGES = 200
# Characters in one message's text, assistant messages included (their text is stored when
# replayed and read for shown items). The engine reads only the first ``max_message_chars`` (2,000
# by default) of a user message and says so; beyond this the request is refused outright.
MAX_MESSAGE_CHARS = 20_000
# Shown items read back from one assistant message: its ``items`` entries, its SIDs, or its
# numbered "N. Title (year)" lines, each of which costs a title search. An answer shows at most
# k <= 50 items, so lines (and entries) beyond the first 50 are ignored, not an error.
MAX_TITLE_LINES = 50
# A numbered line longer than this is not read as a title (the line pattern backtracks
# quadratically on long lines; catalog titles are far shorter).
MAX_TITLE_LINE_CHARS = 500
# A reasoning_effort given as a token count: 0 .. this. "full" is 320 tokens (engine.engine.BUDGETS),
# which holds every reading the model was trained with; the model presets have 2,048 positions for prompt and all.
MAX_REASONING_TOKENS = 1024
# ``user`` and ``session_id``, in characters (session ids are 36-character UUIDs).
MAX_ID_CHARS = 200
# thinkrec's ``k`` (items per answer): the engine clamps to the same range (engine.turns.TurnSteps.read).
MAX_K = 50

# OpenAI's reasoning_effort values (and thinkrec's own budget names) -> the engine's budget.
EFFORTS = {"none": "off", "off": "off", "minimal": "short", "low": "short", "short": "short",
           "medium": "full", "high": "full", "xhigh": "full", "max": "full", "full": "full", "auto": "auto"}
# How the engine words a model-server outage (engine.engine.Engine.turn catches BackendUnavailable).
OUTAGE = "The model server is not answering"
# Content part types read as text: Chat Completions' "text" and the Responses API's "input_text".
TEXT_PARTS = ("text", "input_text")
SID_SPAN = re.compile(r"(?:<[a-z]_\d+>)+")
SID_TOKEN = re.compile(r"<[a-z]_\d+>")
ITEM_LINE = re.compile(r"^\s*\d+\.\s+(?P<title>.+?)(?:\s+\((?P<year>\d{4})\))?\s*$")
SURROGATE = re.compile("[\ud800-\udfff]")      # lone surrogates: JSON can carry them, UTF-8 cannot
_END = object()
log = logging.getLogger(__name__)


class APIError(Exception):
    """Answered as OpenAI answers errors: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self) -> Response:
        # json.dumps escapes non-ASCII, so a message quoting client text is always valid UTF-8.
        return Response(json.dumps(self.body()), status_code=self.status, media_type="application/json",
                        headers=self.headers)


def _outage(message: str) -> APIError:
    return APIError(503, message, code="model_unavailable", kind="server_error")


def _busy(message: str) -> APIError:
    # A turn takes about a second: OpenAI's clients retry a 409 after Retry-After.
    return APIError(409, message, param="session_id", code="session_busy", kind="invalid_request_error",
                    headers={"Retry-After": "1"})


def _failure(error: BaseException) -> APIError:
    """An unexpected failure inside the turn, said without its internals (they go to the log)."""
    log.error("chat completion failed", exc_info=error)
    return APIError(500, f"the turn failed inside the engine ({type(error).__name__}); the request may be retried",
                    code="internal_error", kind="server_error")


class ClientLimit:
    """A token bucket per client, checked before the body is read: ``rate`` requests a second with
    bursts of ``burst``; over it, a 429 that says when to come back (``Retry-After``). A client is
    its address: the endpoint checks no API key, so a key would be anyone's to rotate. Buckets are
    kept for the ``max_clients`` most recent clients (the oldest are dropped, as if refilled), so
    memory is bounded however many clients call. ``rate`` 0 turns the limit off."""

    def __init__(self, rate: float = DEFAULT_RATE, burst: float | None = None, max_clients: int = 10_000,
                 clock=time.monotonic):
        self.rate, self.burst = float(rate), float(burst if burst is not None else max(1.0, 2 * rate))
        self.max_clients, self.clock = max_clients, clock
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()   # client -> (tokens, when)
        self.lock = threading.Lock()

    def check(self, client: str) -> None:
        """Take a token for ``client``, or raise a 429 ``APIError`` saying when one is free."""
        if self.rate <= 0:
            return
        now = self.clock()
        with self.lock:
            tokens, then = self.buckets.pop(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - then) * self.rate)
            allowed = tokens >= 1.0
            self.buckets[client] = (tokens - 1.0 if allowed else tokens, now)
            while len(self.buckets) > self.max_clients:
                self.buckets.popitem(last=False)
        if not allowed:
            wait = (1.0 - tokens) / self.rate
            raise APIError(429, f"too many requests from this client: the limit is {self.rate:g} a second "
                                f"(bursts of {self.burst:g}); retry in {wait:.1f} s",
                           code="rate_limit_exceeded", kind="rate_limit_error",
                           headers={"Retry-After": str(max(1, math.ceil(wait)))})

async def _read_json(request: Request):
    """The body as JSON, its size capped at ``MAX_BODY_BYTES`` (413) whether or not it declares one."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise APIError(400, "the Content-Length header is not a byte count")
        if int(declared) > MAX_BODY_BYTES:
            raise APIError(413, f"the request body is {int(declared):,} bytes; the limit is {MAX_BODY_BYTES:,} bytes",
                           code="request_too_large")
    raw, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise APIError(413, f"the request body is over the limit of {MAX_BODY_BYTES:,} bytes",
                               code="request_too_large")
            raw.append(chunk)
    except ClientDisconnect:           # the client left mid-upload: nobody reads the answer, nothing ran
        log.info("a client closed its connection before sending its whole body (%d bytes read)", size)
        raise APIError(400, "the connection closed before the whole request body arrived") from None
    try:
        return json.loads(b"".join(raw))
    except RecursionError:             # json's C parser recurses once per nesting level
        raise APIError(400, "the request body is nested too deeply to be a chat request") from None
    except json.JSONDecodeError:
        raise APIError(400, "the request body is not valid JSON") from None
    except UnicodeDecodeError:
        raise APIError(400, "the request body is not valid UTF-8, UTF-16 or UTF-32 text") from None
    except ValueError:                 # valid JSON Python will not read: an integer of thousands of digits
        raise APIError(400, f"the request body holds a number of more than {sys.get_int_max_str_digits():,} "
                            "digits") from None


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
    """A message's content: a string, or a list of parts of which the text ones count (their
    ``text`` must be a string), checked by ``_checked_text``."""
    if content is None:
        return ""
    if isinstance(content, str):
        return _checked_text(content, param)
    if isinstance(content, list):
        texts = []
        for n, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if not isinstance(kind, str):
                raise APIError(400, f"{param}[{n}] must be an object with a type (\"text\")", f"{param}[{n}]",
                               "invalid_type")
            if kind.strip().lower() not in TEXT_PARTS:
                # Dropping it would answer a different request than the one sent.
                raise APIError(400, f"{param}[{n}] is a '{kind[:40]}' part; this model reads text parts only",
                               f"{param}[{n}].type", "unsupported_content")
            if not isinstance(part.get("text"), str):
                raise APIError(400, f"{param}[{n}].text must be a string", f"{param}[{n}].text", "invalid_type")
            texts.append(part["text"])
        return _checked_text("\n".join(texts), param)
    raise APIError(400, "content must be a string or a list of content parts", param)


def _checked_text(text: str, param: str) -> str:
    """Text the engine may read and store: at most ``MAX_MESSAGE_CHARS``, and valid Unicode. A lone
    surrogate (``"\\ud800"`` is valid JSON but no character) is refused with a 400, not replaced:
    the client's text would otherwise change silently, and the tokenizer cannot encode it."""
    if len(text) > MAX_MESSAGE_CHARS:
        raise APIError(400, f"{param} is {len(text):,} characters; the limit is {MAX_MESSAGE_CHARS:,} per message",
                       param, "message_too_long")
    bad = SURROGATE.search(text)
    if bad:
        raise APIError(400, f"{param} holds a lone surrogate (U+{ord(bad.group()):04X} at character {bad.start()}), "
                            "which is not valid Unicode", param, "invalid_text")
    return text


def _id(value, param: str) -> str | None:
    """An id field (``user``, ``session_id``): a string or an integer; empty or absent is None."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise APIError(400, f"{param} must be a string", param, "invalid_type")
    value = str(value)
    if len(value) > MAX_ID_CHARS or SURROGATE.search(value):
        raise APIError(400, f"{param} must be valid text of at most {MAX_ID_CHARS} characters", param, "invalid_value")
    return value


def _int(body: dict, name: str, default: int, low: int, high: int) -> int:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise APIError(400, f"{name} must be an integer from {low} to {high}", name, "invalid_value")
    return value


# OpenAI's sampling options: accepted and not used (decoding is the engine's: greedy reasoning,
# constrained beam search), but a value of the wrong type or range is the client's mistake and a 400,
# as OpenAI's own API answers it, not silently dropped. name -> (kind, low, high).
_IGNORED_OPTIONS = {"temperature": ("number", 0, 2), "top_p": ("number", 0, 1),
                    "presence_penalty": ("number", -2, 2), "frequency_penalty": ("number", -2, 2),
                    "max_tokens": ("integer", 1, None), "max_completion_tokens": ("integer", 1, None),
                    "seed": ("integer", None, None), "top_logprobs": ("integer", 0, 20), "model": ("string", None, None)}


def _check_ignored(body: dict) -> None:
    """The sampling options this endpoint accepts without using: each of the right type and range."""
    for name, (kind, low, high) in _IGNORED_OPTIONS.items():
        value = body.get(name)
        if value is None:
            continue
        if kind == "string":
            fits = isinstance(value, str)
        else:
            wanted = int if kind == "integer" else (int, float)
            fits = (isinstance(value, wanted) and not isinstance(value, bool) and (low is None or value >= low)
                    and (high is None or value <= high))
        if not fits:
            span = ("" if low is None and high is None else f" from {low}" if high is None
                    else f" from {low} to {high}")
            raise APIError(400, f"{name} must be a{'n' if kind == 'integer' else ''} {kind}{span}", name,
                           "invalid_value")
    stop = body.get("stop")
    if stop is not None and not (isinstance(stop, str) or (isinstance(stop, list) and len(stop) <= 4
                                                           and all(isinstance(s, str) for s in stop))):
        raise APIError(400, "stop must be a string or a list of at most 4 strings", "stop", "invalid_value")


def _budget(effort) -> str | int:
    if effort is None:
        return "full"
    if isinstance(effort, int) and not isinstance(effort, bool) and 0 <= effort <= MAX_REASONING_TOKENS:
        return effort                                     # a reasoning token count
    if isinstance(effort, str) and effort.lower() in EFFORTS:
        return EFFORTS[effort.lower()]
    raise APIError(400, f"reasoning_effort must be one of {', '.join(EFFORTS)} or a token count from 0 to "
                        f"{MAX_REASONING_TOKENS}", "reasoning_effort", "invalid_value")
