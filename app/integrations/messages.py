"""A client's message list as a session, and a turn's events as chat text: what the LangChain chat
model (app/integrations/langchain.py) and the OpenAI-compatible endpoint (app/integrations/openai_api.py) share.

Clients that hold the whole conversation (LangChain, any OpenAI client) send it every time. The
earlier exchanges are replayed into a new session, so their requests stay active ("a comedy",
then "no drama", keeps both) and their items count as shown; the last user message is this turn.
Pure Python, duck-typed on the engine: the app may import it without pulling in torch.

    session_id, text = replay_messages(engine, [("user", "a 90s comedy", []),
                                                ("assistant", "10 picks ...", ["12", "40"]),
                                                ("user", "no drama", [])], user_id="1")
"""

from __future__ import annotations

from collections.abc import Sequence

LEVEL_NAMES = {"derivation": "Derivation", "evolution": "Evolution", "recommendation": "Recommendation"}


def replay_messages(engine, messages: Sequence[tuple[str, str, Sequence[str]]], user_id: str | None = None,
                    session_id: str | None = None) -> tuple[str, str]:
    """The session to answer in and this turn's text, for a list of (role, text, item ids) with
    role "user" or "assistant" (other roles are skipped). Every user message but the last is
    replayed with the assistant messages that answered it (their items, the last one's text).
    With ``session_id`` the stored session already holds the conversation: nothing is replayed.
    Without it a new session starts as dataset user ``user_id`` (KeyError if unknown)."""
    users = [n for n, (role, _, _) in enumerate(messages) if role == "user"]
    text = messages[users[-1]][1] if users else ""
    if session_id:
        return session_id, text
    session_id = engine.start_session(user_id=user_id).id
    for position, index in enumerate(users[:-1]):
        answers = [m for m in messages[index + 1:users[position + 1]] if m[0] == "assistant"]
        items = [str(i) for _, _, ids in answers for i in ids]
        engine.replay(session_id, messages[index][1], items, answers[-1][1] if answers else "")
    return session_id, text


def level_header(level: str, previous: str | None) -> str:
    """What goes before a reasoning delta: the level's name when the level changes ("" within it)."""
    if level == previous:
        return ""
    return ("\n" if previous else "") + f"{LEVEL_NAMES[level]}: "


def item_lines(items: Sequence[dict]) -> list[str]:
    """Item cards (``ItemCard.model_dump()``) as numbered lines: "1. Title (1995) <a_1><b_2><c_3>"."""
    return [f"{c['rank']}. {c['title']}" + (f" ({c['year']})" if c.get("year") else "") + f" {c['sid']}"
            for c in items]
