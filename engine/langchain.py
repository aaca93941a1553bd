"""thinkrec as a LangChain chat model, so LangChain programs can ask it for recommendations.

The answer is an ``AIMessage`` whose content blocks are the three reasoning levels (one
``reasoning`` block) and the reply with the items (a ``text`` block); ``response_metadata`` carries
the item cards and the trace.

    from engine.engine import Engine
    from engine.langchain import ThinkrecChatModel
    chat = ThinkrecChatModel(engine=Engine("artifacts/ml-100k", "checkpoints/ml-100k-tiny/sft"), user_id="1")
    print(chat.invoke("a 90s comedy please").content_blocks)
"""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import ConfigDict

from engine.events import collect


class ThinkrecChatModel(BaseChatModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    engine: Any                        # an engine.engine.Engine
    user_id: str | None = None         # start as this dataset user (their history)
    session_id: str | None = None      # continue this session instead of starting one per call
    thinking: bool = True
    k: int = 10

    @property
    def _llm_type(self) -> str:
        return "thinkrec"

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager=None,
                  **kwargs: Any) -> ChatResult:
        request = next((m.text for m in reversed(messages) if isinstance(m, HumanMessage)), "")
        session_id = self.session_id or self.engine.start_session(user_id=self.user_id).id
        result = collect(self.engine.turn(session_id, request, thinking=kwargs.get("thinking", self.thinking),
                                          k=kwargs.get("k", self.k)))
        items = [card.model_dump() for card in result.items]
        lines = [result.reply] + [f"{c['rank']}. {c['title']}" + (f" ({c['year']})" if c["year"] else "")
                                  + f" {c['sid']}" for c in items] + result.notices
        blocks: list[dict] = []
        if any(result.reasoning.values()):
            reasoning = "\n".join(f"{name.capitalize()}: {text.strip()}" for name, text in result.reasoning.items())
            blocks.append({"type": "reasoning", "reasoning": reasoning})
        blocks.append({"type": "text", "text": "\n".join(line for line in lines if line)})
        trace = result.trace.model_dump() if result.trace else None
        message = AIMessage(content=blocks, response_metadata={"items": items, "trace": trace,
                                                               "session_id": session_id})
        return ChatResult(generations=[ChatGeneration(message=message)])
