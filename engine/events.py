"""Typed events a conversation turn yields, in order: reasoning deltas (per level), item cards,
reply text, then the turn's trace. The app renders them; it never sees the model. They cross the
engine/app boundary (and the API), so they are pydantic models with a ``type`` discriminator."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

Level = Literal["derivation", "evolution", "recommendation"]


class ItemCard(BaseModel):
    rank: int
    item_id: str
    title: str
    year: int | None = None
    categories: list[str] = []
    sid: str
    score: float                     # summed log-probability of the SID tokens


class BeamCandidate(BaseModel):
    item_id: str
    title: str
    sid: str
    score: float


class RequestInfo(BaseModel):
    """How the turn's message was understood, and what is active after it."""
    understood: str = "no filter"     # this message: "wants Comedy; from the 1990s"
    active: str = ""                  # every active constraint: "Comedy from the 1990s, no Drama"
    constraints: dict = {}            # the active constraints as data (engine.constraints.Constraints)
    unparsed: list[str] = []          # words not used as a filter (left to the model)
    notes: list[str] = []
    available: int | None = None      # items the constraints leave for this user (None: unconstrained)
    readings: list[str] = []          # free phrases read by meaning ("'aliens' read as Sci-Fi (z=3.3)")
    soft: str = ""                    # soft leanings that re-rank ("leaning to Horror")
    unknown: list[str] = []           # facets asked for that this catalog lacks (length, language, ...)
    question: str | None = None       # asked instead of answering (the reply); the next message answers it


class Trace(BaseModel):
    turn_id: str
    prompt: str                      # the rendered prompt, special tokens included
    prompt_tokens: int
    thinking: bool
    reasoning_tokens: int = 0
    cache_hit: bool = False          # reasoning reused from Think-Ahead
    backend: str = "transformers"    # where the tokens came from: transformers | vllm
    levels: dict[str, str] = {}      # the three reasoning levels as generated
    beams: list[BeamCandidate] = []
    latency_ms: dict[str, float] = {}
    k: int
    num_beams: int
    request: RequestInfo = RequestInfo()
    max_reasoning_tokens: int = 0    # the turn's reasoning budget (0: no reasoning)
    # How the items were ranked: method "exact" (every admissible item scored by its full SID
    # log-probability + the item head's) or "beam" (the admissible tree exceeded the budget), with
    # admissible, steps, budget and head_weight (engine.ranking.Ranker.rank_items).
    ranking: dict = {}


def describe_ranking(ranking: dict) -> str:
    """One line for people: how a turn's items were ranked."""
    if not ranking:
        return "beam search"
    head = f", item head weight {ranking['head_weight']:g}" if ranking.get("head_weight") else ", SID only"
    if ranking.get("method") == "exact":
        return (f"exact: all {ranking.get('admissible')} admissible items scored ({ranking.get('steps')} forward steps, "
                f"budget {ranking.get('budget')}){head}")
    return f"beam search (the admissible items need more than {ranking.get('budget')} forward steps){head}"


class ReasoningDelta(BaseModel):
    type: Literal["reasoning"] = "reasoning"
    level: Level
    text: str


class ItemsEvent(BaseModel):
    type: Literal["items"] = "items"
    items: list[ItemCard]


class ReplyDelta(BaseModel):
    type: Literal["reply"] = "reply"
    text: str


class TraceEvent(BaseModel):
    type: Literal["trace"] = "trace"
    trace: Trace


class NoticeEvent(BaseModel):
    """Something the user should know that is not an error (empty message, text shortened)."""
    type: Literal["notice"] = "notice"
    text: str


class ErrorEvent(BaseModel):
    type: Literal["error"] = "error"
    message: str
    # What kind: "busy" (the session is answering another message), "outage", "failed", "timeout";
    # None for an answer that is an error by content ("nothing satisfies ...").
    code: str | None = None


def said(error: Exception) -> str:
    """A refusal's own message, for people: a KeyError's str() wraps it in quotes, and stripping
    them would cut a quote the message itself ends with ("no session 'x'")."""
    return str(error.args[0]) if error.args else type(error).__name__


Event = Annotated[ReasoningDelta | ItemsEvent | ReplyDelta | TraceEvent | NoticeEvent | ErrorEvent,
                  Field(discriminator="type")]


class TurnResult(BaseModel):
    """A turn's events gathered up. :meth:`add` is the one reducer: the UI, the recommend API, the
    OpenAI endpoint, LangChain and the scenario player all fold events with it, and add only what
    their own output needs (a streamed delta, a header)."""
    reasoning: dict[str, str] = Field(default_factory=lambda: {"derivation": "", "evolution": "", "recommendation": ""})
    items: list[ItemCard] = []
    reply: str = ""
    trace: Trace | None = None
    notices: list[str] = []
    errors: list[ErrorEvent] = []

    def add(self, event) -> None:
        if isinstance(event, ReasoningDelta):
            self.reasoning[event.level] = self.reasoning.get(event.level, "") + event.text
        elif isinstance(event, ItemsEvent):
            self.items = event.items
        elif isinstance(event, ReplyDelta):
            self.reply += event.text
        elif isinstance(event, TraceEvent):
            self.trace = event.trace
        elif isinstance(event, NoticeEvent):
            self.notices.append(event.text)
        elif isinstance(event, ErrorEvent):
            self.errors.append(event)

    @property
    def told(self) -> list[str]:
        """The notices, then the errors, as a person reads them."""
        return self.notices + [f"Error: {error.message}" for error in self.errors]

    @property
    def levels(self) -> dict[str, str]:
        """The reasoning levels written so far, in order."""
        return {level: text for level, text in self.reasoning.items() if text}

    def item_dicts(self) -> list[dict]:
        return [card.model_dump() for card in self.items]


def collect(events) -> TurnResult:
    result = TurnResult()
    for event in events:
        result.add(event)
    return result
