"""thinkrec as a LangChain chat model, so LangChain programs can ask it for recommendations.

The message list is the conversation, as LangChain users expect: earlier human messages are
replayed into the session (their requests stay active: "a comedy", then "no drama", keeps both),
earlier AI messages' items count as already shown, and the last human message is this turn.
``stream()`` yields the reasoning as it is generated (``reasoning`` content blocks per level),
then the reply with the items (a ``text`` block); ``response_metadata`` of the final chunk (and of
``invoke()``'s message) carries the item cards, the trace and the session id.

    from engine.engine import Engine
    from app.integrations.langchain import ThinkrecChatModel
    chat = ThinkrecChatModel(engine=Engine("artifacts/ml-100k", "checkpoints/ml-100k-tiny/sft"), user_id="1")
    first = chat.invoke("a 90s comedy please")
    second = chat.invoke([HumanMessage("a 90s comedy please"), first, HumanMessage("no drama")])
    for chunk in chat.stream("something scary"):
        print(chunk.content_blocks)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict

from engine.events import ReasoningDelta, TurnResult
from app.integrations.messages import item_lines, level_header, replay_messages


def _items_of(message: AIMessage) -> list[str]:
    items = (message.response_metadata or {}).get("items") or []
    return [str(i["item_id"]) for i in items if isinstance(i, dict) and "item_id" in i]


class ThinkrecChatModel(BaseChatModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    engine: Any                        # an engine.engine.Engine
    user_id: str | None = None         # start as this dataset user (their history)
    session_id: str | None = None      # continue this session (only the last human message is new)
    thinking: bool = True
    k: int = 10

    @property
    def _llm_type(self) -> str:
        return "thinkrec"

    def _session(self, messages: list[BaseMessage]) -> tuple[str, str]:
        """The session to answer in, and this turn's text (app/integrations/messages.py replays the rest)."""
        turns = [("user", m.text, []) if isinstance(m, HumanMessage) else ("assistant", m.text, _items_of(m))
                 for m in messages if isinstance(m, (HumanMessage, AIMessage))]
        return replay_messages(self.engine, turns, user_id=self.user_id, session_id=self.session_id)

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager=None,
                **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        session_id, text = self._session(messages)
        events = self.engine.turn(session_id, text, thinking=kwargs.get("thinking", self.thinking),
                                  k=kwargs.get("k", self.k))
        result, level = TurnResult(), None
        for event in events:
            result.add(event)
            if isinstance(event, ReasoningDelta) and event.text:
                header = level_header(event.level, level)
                level = event.level
                chunk = ChatGenerationChunk(message=AIMessageChunk(
                    content=[{"type": "reasoning", "reasoning": header + event.text}]))
                if run_manager:
                    run_manager.on_llm_new_token(event.text, chunk=chunk)
                yield chunk
        items, trace = result.item_dicts(), result.trace.model_dump() if result.trace else None
        lines = [result.reply] + item_lines(items) + result.told
        body = "\n".join(line for line in lines if line)
        yield ChatGenerationChunk(message=AIMessageChunk(
            content=[{"type": "text", "text": ("\n" if level else "") + body}],
            response_metadata={"items": items, "trace": trace, "session_id": session_id}, chunk_position="last"))

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager=None,
                  **kwargs: Any) -> ChatResult:
        reasoning, text, metadata = "", "", {}
        for chunk in self._stream(messages, stop, None, **kwargs):
            for block in chunk.message.content:
                if block["type"] == "reasoning":
                    reasoning += block["reasoning"]
                else:
                    text += block["text"]
            metadata = chunk.message.response_metadata or metadata
        blocks = ([{"type": "reasoning", "reasoning": reasoning}] if reasoning else []) + \
                 [{"type": "text", "text": text.lstrip("\n")}]
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=blocks, response_metadata=metadata))])
