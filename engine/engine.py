"""The conversation engine: sessions, turns and feedback over one checkpoint and its catalog.

A turn renders the conversation, streams the three reasoning levels token by token (thinking on),
beam-searches the SID steps under the trie for K distinct, unseen items, maps them to catalog
items, writes a short reply and a trace — all as typed events (engine/events.py). It knows nothing
about Gradio. Think-Ahead: reasoning for an unchanged history is cached, so a follow-up turn
without a new request decodes only the items (the trace says when the cache was used). Tokens come
from a backend (engine/backends.py): the checkpoint's model in this process, or a vLLM server
started by ``thinkrec serve-model`` (``backend="vllm", model_url=...``).

    engine = Engine("artifacts/ml-100k", "checkpoints/ml-100k-tiny/sft")
    session = engine.start_session(user_id="1")
    for event in engine.turn(session.id, "a 90s comedy please"):
        print(event)
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

from data.catalog import Catalog
from data.catalog_db import sqlite_url
from data.clean import read_split
from engine.events import (BeamCandidate, ErrorEvent, Event, ItemCard, ItemsEvent, NoticeEvent, ReasoningDelta,
                           ReplyDelta, Trace, TraceEvent)
from engine.prompt import LEVELS, earlier_assistant_turn
from engine.recommender import open_recommender
from engine.sessions import ChatSession, SessionStore, Turn
from engine.tokenizer import EVOLUTION, RECOMMENDATION, Message

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def clean_message(text: str | None, max_chars: int) -> tuple[str, list[str]]:
    """What the model will read of a typed message, and notices for the user about changes."""
    notices = []
    text = text or ""
    stripped = _CONTROL.sub("", text)
    if stripped != text:
        notices.append("Removed control characters from your message.")
    stripped = stripped.strip()
    if len(stripped) > max_chars:
        notices.append(f"Your message was {len(stripped):,} characters; only the first {max_chars:,} were read.")
        stripped = stripped[:max_chars]
    return stripped, notices


class Engine:
    def __init__(self, data: str | Path, checkpoint: str | Path, sessions_url: str | None = None,
                 device: str | None = None, history_items: int = 20, max_message_chars: int = 2000,
                 think_cache_size: int = 1024, backend: str = "transformers", model_url: str | None = None):
        self.data, self.checkpoint = Path(data), Path(checkpoint)
        self.catalog = Catalog(self.data)
        self.recommender, self.meta = open_recommender(self.checkpoint, self.data, self.catalog.sid_codes(), backend,
                                                       model_url, device, history_items)
        self.model, self.tokenizer = self.recommender.model, self.recommender.tokenizer
        self.backend = self.recommender.backend
        # Sessions live beside the catalog, not inside catalog.db: the manifest hashes that file.
        self.sessions = SessionStore(sessions_url or sqlite_url(self.data / "sessions.db"))
        # Dataset users' full histories ("start as user"), read once rather than on every session.
        self.user_histories = {row["user_id"]: row["history"] + [row["target"]]
                               for row in read_split(self.data / "splits" / "test.jsonl")}
        self.max_message_chars = max_message_chars
        # One in-process model serves every session: one call at a time. A vLLM server batches
        # concurrent requests itself, so turns go to it unserialised.
        self._model_lock = threading.Lock() if self.model is not None else contextlib.nullcontext()
        self._think_cache: OrderedDict[tuple, list[int]] = OrderedDict()
        self._think_cache_size = think_cache_size

    # -- sessions ----------------------------------------------------------------------------
    def dataset_history(self, user_id: str) -> list[str]:
        if str(user_id) not in self.user_histories:
            raise KeyError(f"no user '{user_id}' in {self.data}")
        return list(self.user_histories[str(user_id)])

    def start_session(self, user_id: str | None = None) -> ChatSession:
        history = self.dataset_history(user_id) if user_id else []
        return self.sessions.create(user_id=user_id, history=history)

    def feedback(self, session_id: str, item_id: str, kind: str) -> ChatSession:
        self.catalog.item(item_id)                # unknown items are refused (KeyError)
        return self.sessions.feedback(session_id, item_id, kind)

    # -- a turn --------------------------------------------------------------------------------
    def _earlier_turns(self, session: ChatSession, max_exchanges: int = 2) -> list[Message]:
        messages = []
        for turn in session.turns[-2 * max_exchanges:]:
            if turn.role == "user":
                messages.append(Message("user", turn.text or "What should I watch next?", trusted=False))
            elif turn.items:
                codes = [self.recommender.sid_codes[i] for i in turn.items[:3] if i in self.recommender.sid_codes]
                messages.append(earlier_assistant_turn(codes))
        return messages

    def _cache_key(self, session: ChatSession) -> tuple:
        return (tuple(session.history[-self.recommender.history_items:]), tuple(sorted(session.excluded)))

    def _stream_levels(self, prompt: list[int], exclude: set[str], timings: dict) -> Iterator[tuple[str, str, int]]:
        """(level, text delta, token) while reasoning streams; the prompt opened the first level."""
        level, level_ids, shown = "derivation", [], ""
        markers = {self.tokenizer.ids[EVOLUTION]: "evolution", self.tokenizer.ids[RECOMMENDATION]: "recommendation"}
        started = time.perf_counter()
        for token in self.backend.stream_reasoning(prompt, exclude):
            timings.setdefault("first_token_ms", (time.perf_counter() - started) * 1000)
            if token in markers:
                level, level_ids, shown = markers[token], [], ""
                yield level, "", token
                continue
            if token in (self.tokenizer.think_end_id, self.tokenizer.end_id):
                yield level, "", token
                return
            level_ids.append(token)
            text = self.tokenizer.decode(level_ids)
            if text.endswith("\ufffd"):          # half a UTF-8 character: wait for the rest
                yield level, "", token
                continue
            delta, shown = text[len(shown):], text
            yield level, delta, token

    def turn(self, session_id: str, message: str | None, thinking: bool = True, k: int = 10,
             num_beams: int = 20) -> Iterator[Event]:
        try:
            session = self.sessions.get(session_id)
        except KeyError as error:
            yield ErrorEvent(message=str(error))
            return
        text, notices = clean_message(message, self.max_message_chars)
        if message and not text:
            notices.append("Your message had no text; recommending from your history.")
        for notice in notices:
            yield NoticeEvent(text=notice)
        k = max(1, min(int(k), 50))
        num_beams = max(k, int(num_beams))
        shown_before = [i for t in session.turns if t.role == "assistant" for i in t.items]
        exclude = set(session.history) | set(session.excluded) | set(shown_before)
        earlier = self._earlier_turns(session)
        timings: dict[str, float] = {}
        started = time.perf_counter()
        prompt = self.recommender.prompt_ids(session.history, text or None, earlier, thinking)
        reasoning_ids: list[int] = []
        levels = dict.fromkeys(LEVELS, "")
        cache_hit = False
        with self._model_lock:
            if thinking:
                key = self._cache_key(session)
                cached = self._think_cache.get(key) if not text else None
                if cached is not None:
                    cache_hit = True
                    self._think_cache.move_to_end(key)
                    reasoning_ids = list(cached)
                    for level, body in self._split_levels(reasoning_ids).items():
                        levels[level] = body
                        if body:
                            yield ReasoningDelta(level=level, text=body)
                else:
                    for level, delta, token in self._stream_levels(prompt, exclude, timings):
                        reasoning_ids.append(token)
                        if delta:
                            levels[level] += delta
                            yield ReasoningDelta(level=level, text=delta)
                    if not text:
                        self._remember(key, reasoning_ids)
                timings["reasoning_ms"] = (time.perf_counter() - started) * 1000
            body = [t for t in reasoning_ids if t not in (self.tokenizer.think_end_id, self.tokenizer.end_id)]
            item_prompt = prompt + body + [self.tokenizer.think_end_id, self.tokenizer.item_begin_id] if thinking else prompt
            items_started = time.perf_counter()
            (ranked,) = self.backend.beam_search([item_prompt], [exclude], k=num_beams, num_beams=num_beams)
            timings["items_ms"] = (time.perf_counter() - items_started) * 1000
        found = {i.item_id: i for i in self.catalog.items([str(r.item_id) for r in ranked])}
        cards = [ItemCard(rank=n + 1, item_id=str(r.item_id), title=found[str(r.item_id)].title,
                          year=found[str(r.item_id)].year, categories=found[str(r.item_id)].categories,
                          sid=found[str(r.item_id)].sid, score=round(r.score, 4))
                 for n, r in enumerate(ranked[:k])]
        if not cards:
            yield ErrorEvent(message="No catalog item is left to recommend in this session.")
            return
        yield ItemsEvent(items=cards)
        reply = self._reply(cards, text)
        yield ReplyDelta(text=reply)
        timings["total_ms"] = (time.perf_counter() - started) * 1000
        turn_id = str(uuid.uuid4())
        self.sessions.add_turn(session_id, Turn("user", text))
        self.sessions.add_turn(session_id, Turn("assistant", reply, [c.item_id for c in cards], levels))
        beams = [BeamCandidate(item_id=str(r.item_id), title=found[str(r.item_id)].title,
                               sid=found[str(r.item_id)].sid, score=round(r.score, 4)) for r in ranked]
        yield TraceEvent(trace=Trace(turn_id=turn_id, prompt=self.tokenizer.decode(item_prompt),
                                     prompt_tokens=len(prompt), thinking=thinking,
                                     reasoning_tokens=len(reasoning_ids), cache_hit=cache_hit, backend=self.backend.name,
                                     levels=levels, beams=beams,
                                     latency_ms={k_: round(v, 1) for k_, v in timings.items()}, k=k,
                                     num_beams=num_beams))

    def _split_levels(self, reasoning_ids: list[int]) -> dict[str, str]:
        from engine.prompt import parse_reasoning
        from engine.tokenizer import DERIVATION

        return parse_reasoning(DERIVATION + self.tokenizer.decode(reasoning_ids))

    def _remember(self, key: tuple, reasoning_ids: list[int]) -> None:
        self._think_cache[key] = list(reasoning_ids)
        self._think_cache.move_to_end(key)
        while len(self._think_cache) > self._think_cache_size:
            self._think_cache.popitem(last=False)

    @staticmethod
    def _reply(cards: list[ItemCard], request: str) -> str:
        top = cards[0]
        label = f"{top.title} ({top.year})" if top.year else top.title
        lead = "For your request, here are" if request else "Here are"
        return f"{lead} {len(cards)} picks. Top pick: {label}."
