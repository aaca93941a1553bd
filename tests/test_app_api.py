"""The real Gradio server, driven over HTTP with gradio_client: the documented `recommend`
endpoint, and several users at once with isolated sessions."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from gradio_client import Client

from tests.conftest import free_port


@pytest.fixture(scope="module")
def server(engine):
    from app.ui import build_app

    demo = build_app(engine, ["u1", "u2", "u3"])
    demo.queue(default_concurrency_limit=10)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def test_recommend_endpoint(server, engine):
    client = Client(server, verbose=False)
    result = client.predict("something with robots", "u1", True, api_name="/recommend")
    assert set(result) >= {"reply", "reasoning", "items", "trace"}
    assert set(result["reasoning"]) == {"derivation", "evolution", "recommendation"}
    items = result["items"]
    assert len(items) == 10 and len({i["item_id"] for i in items}) == 10
    history = set(engine.dataset_history("u1"))
    assert not {i["item_id"] for i in items} & history
    assert all(engine.catalog.item(i["item_id"]).sid == i["sid"] for i in items)
    assert result["trace"]["thinking"] is True


def test_ten_concurrent_users(server):
    def one(n: int):
        client = Client(server, verbose=False)
        return client.predict(f"request {n}", "", False, api_name="/recommend")

    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(one, range(10)))
    assert all(len(r["items"]) == 10 for r in results)
    assert len({r["trace"]["turn_id"] for r in results}) == 10


def test_a_conversation_through_the_api_keeps_its_constraints(server, engine):
    """Turn 1 asks for a category, turn 2 (same session) avoids another: every item of turn 2
    satisfies both, and the trace states both."""
    client = Client(server, verbose=False)
    wanted, avoided = engine.facets.vocabulary[0], engine.facets.vocabulary[1]
    first = client.predict(f"a {wanted.lower()} please", "", False, "", api_name="/recommend")
    assert first["items"] and all(wanted in i["categories"] for i in first["items"])
    second = client.predict(f"no {avoided.lower()}", "", False, first["session_id"], api_name="/recommend")
    assert second["session_id"] == first["session_id"]
    # A 24-item fixture catalog may have nothing left: then the turn says so, and never relaxes.
    assert second["items"] or any("satisfies" in n for n in second["notices"])
    assert all(wanted in i["categories"] and avoided not in i["categories"] for i in second["items"])
    assert second["request"]["active"] == f"{wanted}, no {avoided}"
    # The constraints live in the session store, so a restarted app keeps them.
    stored = engine.sessions.get(first["session_id"]).constraints
    assert stored.want == [[wanted]] and stored.avoid == [avoided]


def test_feedback_through_the_api_is_stored(server, engine):
    client = Client(server, verbose=False)
    first = client.predict("", "u2", False, "", api_name="/recommend")
    liked, disliked = first["items"][0]["item_id"], first["items"][1]["item_id"]
    after = client.predict(first["session_id"], liked, "like", api_name="/feedback")
    assert after["history"][-1] == liked
    after = client.predict(first["session_id"], disliked, "dislike", api_name="/feedback")
    assert disliked in after["excluded"]
    session = engine.sessions.get(first["session_id"])
    assert session.history[-1] == liked and disliked in session.excluded
    # The next turn shows neither.
    second = client.predict("", "", False, first["session_id"], api_name="/recommend")
    assert not {liked, disliked} & {i["item_id"] for i in second["items"]}


def test_recommend_asks_and_takes_the_answer_in_the_same_session(server, engine):
    from tests.test_openai_api import _narrow_year

    year = _narrow_year(engine)
    client = Client(server, verbose=False)
    first = client.predict(f"something from {year}", "", False, api_name="/recommend")
    assert first["question"] and first["reply"] == first["question"] and not first["items"]
    second = client.predict("widen please", "", False, first["session_id"], api_name="/recommend")
    assert second["question"] is None and second["items"]
    assert all(abs(i["year"] - year) <= 10 for i in second["items"])


def test_refusals_say_why(server):
    """An unknown user, session, item or feedback kind is an error that names what was wrong, not
    Gradio's "an error occurred"."""
    from gradio_client.exceptions import AppError

    client = Client(server, verbose=False)
    first = client.predict("hello", "", False, "", api_name="/recommend")
    session, item = first["session_id"], first["items"][0]["item_id"]
    for api, arguments, said in [("/recommend", ("a comedy", "no-such-user", False, ""), "no user 'no-such-user'"),
                                 ("/feedback", (session, "no-such-item", "like"), "no item with id 'no-such-item'"),
                                 ("/feedback", (session, item, "love"), "feedback must be 'like' or 'dislike'"),
                                 ("/feedback", ("no-such-session", item, "like"), "no session 'no-such-session'")]:
        with pytest.raises(AppError) as refused:
            client.predict(*arguments, api_name=api)
        assert said in str(refused.value), (api, arguments, str(refused.value))


def test_arguments_of_the_wrong_type_are_refused_before_any_session(server, engine):
    """The API functions take any JSON value: a string "false" for thinking, a list for the budget,
    a number for the message are refused with what the argument must be, and start no session; a
    missing search query is an empty search."""
    from gradio_client.exceptions import AppError
    from sqlalchemy import func, select

    from engine.sessions import SessionRow

    def stored() -> int:
        with engine.sessions.engine.connect() as db:
            return db.scalar(select(func.count()).select_from(SessionRow))

    client = Client(server, verbose=False)
    before = stored()
    for arguments, said in [(("a comedy", "", "false", "", "full"), "thinking must be true or false"),
                            (("a comedy", "", True, "", ["full"]), "budget must be"),
                            ((42, "", True, "", "full"), "message must be text"),
                            (({"a": 1}, "", True, "", "full"), "message must be text"),
                            (("a comedy", ["u1"], True, "", "full"), "user_id must be")]:
        with pytest.raises(AppError) as refused:
            client.predict(*arguments, api_name="/recommend")
        assert said in str(refused.value), (arguments, str(refused.value))
    assert stored() == before
    assert client.predict(None, api_name="/search")["data"] == []
