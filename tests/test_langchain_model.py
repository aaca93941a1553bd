"""thinkrec behind LangChain's chat-model interface: reasoning block, items, session reuse."""

from __future__ import annotations

from langchain_core.messages import HumanMessage, SystemMessage

from engine.langchain import ThinkrecChatModel


def test_invoke_returns_reasoning_and_items(engine):
    chat = ThinkrecChatModel(engine=engine, user_id="u5", k=4)
    answer = chat.invoke([SystemMessage("be helpful"), HumanMessage("something with robots")])
    blocks = answer.content_blocks
    assert [b["type"] for b in blocks] == ["reasoning", "text"]
    items = answer.response_metadata["items"]
    assert len(items) == 4 and all(item["title"] in answer.text for item in items)
    history = set(engine.sessions.get(answer.response_metadata["session_id"]).history)
    assert not {item["item_id"] for item in items} & history


def test_non_thinking_and_a_continued_session(engine):
    session = engine.start_session(user_id="u6")
    chat = ThinkrecChatModel(engine=engine, session_id=session.id, thinking=False, k=3)
    first = chat.invoke("a comedy")
    second = chat.invoke("another one")
    assert [b["type"] for b in first.content_blocks] == ["text"]
    shown = {i["item_id"] for i in first.response_metadata["items"]}
    assert not shown & {i["item_id"] for i in second.response_metadata["items"]}
    assert len(engine.sessions.get(session.id).turns) == 4
