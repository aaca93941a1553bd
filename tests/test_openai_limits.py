"""Limits and bad input at the OpenAI-compatible edge (app/integrations/openai_api.py), on the real app server
(``app.ui.serve``) over real HTTP: each refusal is an OpenAI-style 4xx that states its limit,
nothing is stored for it, and the server answers a normal request afterwards; a failure inside
the engine mid-stream ends the stream with an error chunk and ``data: [DONE]``."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from sqlalchemy import func, select

from app.integrations.openai_api import (
    MAX_BODY_BYTES,
    MAX_MESSAGE_CHARS,
    MAX_MESSAGES,
    MAX_REASONING_TOKENS,
    MAX_TITLE_LINES,
)
from engine.events import NoticeEvent, ReasoningDelta
from engine.sessions import SessionRow

ERROR_FIELDS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=f"{server}/v1", timeout=60) as client:
        yield client


def session_count(engine) -> int:
    with engine.sessions.engine.connect() as db:
        return db.scalar(select(func.count()).select_from(SessionRow))


def post_raw(http, body: bytes | str, **kwargs) -> httpx.Response:
    return http.post("/chat/completions", content=body, headers={"Content-Type": "application/json"}, **kwargs)


def ask(text="a comedy please", **fields) -> dict:
    return {"model": "thinkrec", "messages": [{"role": "user", "content": text}], "reasoning_effort": "none",
            "k": 2, **fields}


def error_of(response: httpx.Response, status: int) -> dict:
    """The OpenAI error body of a refused request, checked for its status and shape."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == ERROR_FIELDS and error["message"]
    return error


def assert_still_serves(http, engine, user="u21"):
    answer = http.post("/chat/completions", json=ask(user=user))
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["choices"][0]["message"]["items"]) == 2


@pytest.fixture
def no_session_stored(engine, http):
    """Whatever the test refuses stores no session; the server then answers a normal request."""
    before = session_count(engine)
    yield
    assert session_count(engine) == before
    assert_still_serves(http, engine)


def test_a_deeply_nested_body_is_a_400(http, no_session_stored):
    deep = "[" * 100_000 + "]" * 100_000
    for body in (deep, '{"model": "thinkrec", "messages": ' + deep + "}",
                 '{"messages": [{"role": "user", "content": [' + '{"text": ' * 50_000 + "1" + "}" * 50_000 + "]}]}"):
        error = error_of(post_raw(http, body), 400)
        assert "nested too deeply" in error["message"] and error["type"] == "invalid_request_error"
    # Nesting the parser can take still fails as a request, not as a server error.
    error = error_of(post_raw(http, '{"messages": ' + "[" * 500 + "]" * 500 + "}"), 400)
    assert error["param"] == "messages[0]"


@pytest.mark.parametrize("stream", [False, True])
def test_a_content_part_whose_text_is_not_a_string_is_a_400(http, no_session_stored, stream):
    for text in (5, {"text": "hi"}, None, ["hi"], True):
        parts = [{"type": "text", "text": "a comedy"}, {"type": "text", "text": text}]
        body = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": parts},
                             {"role": "user", "content": "more"}], "stream": stream}
        error = error_of(http.post("/chat/completions", json=body), 400)
        assert error["param"] == "messages[1].content[1].text" and "must be a string" in error["message"]
    missing = {"messages": [{"role": "user", "content": [{"type": "text"}]}], "stream": stream}
    assert error_of(http.post("/chat/completions", json=missing), 400)["param"] == "messages[0].content[0].text"


def test_a_lone_surrogate_is_refused_before_any_session_is_touched(http, engine, monkeypatch):
    """Refused (not replaced): "\\ud800" is valid JSON but not Unicode, and the tokenizer never sees it."""
    before, calls = session_count(engine), []
    original = engine.start_session
    monkeypatch.setattr(engine, "start_session", lambda *a, **kw: calls.append(a) or original(*a, **kw))
    cases = [  # (raw JSON body, the param named)
        ('{"messages": [{"role": "user", "content": "a comedy \\ud800 please"}]}', "messages[0].content"),
        ('{"messages": [{"role": "user", "content": "x\\udfff"}], "stream": true}', "messages[0].content"),
        ('{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\ud83d"}]}]}', "messages[0].content"),
        ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "1. A\\ud800"},'
         ' {"role": "user", "content": "more"}]}', "messages[1].content"),
        ('{"messages": [{"role": "user", "content": "hi"}], "user": "u1\\ud800"}', "user"),
        ('{"messages": [{"role": "user", "content": "hi"}], "session_id": "\\udc00"}', "session_id"),
    ]
    for body, param in cases:
        error = error_of(post_raw(http, body), 400)
        assert error["param"] == param, error
        if param.startswith("messages"):
            assert error["code"] == "invalid_text" and "surrogate" in error["message"]
    assert calls == [] and session_count(engine) == before
    # A surrogate pair escaped in JSON is one real character, and is served.
    answer = post_raw(http, json.dumps(ask("a comedy \U0001F600 please"), ensure_ascii=True))
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["items"]


def test_limits_at_the_edge(http, engine, no_session_stored):
    # Messages per request.
    many = {"messages": [{"role": "user", "content": "hi"}] * (MAX_MESSAGES + 1)}
    error = error_of(http.post("/chat/completions", json=many), 400)
    assert error["param"] == "messages" and str(MAX_MESSAGES) in error["message"]
    # Body bytes: declared by Content-Length, and counted as read when sent chunked (no Content-Length).
    big = json.dumps(ask("x" * (MAX_BODY_BYTES + 10)))
    error = error_of(post_raw(http, big), 413)
    assert error["code"] == "request_too_large" and f"{MAX_BODY_BYTES:,}" in error["message"]

    def chunked():
        yield big[:-10].encode()[: MAX_BODY_BYTES + 4096]

    error = error_of(post_raw(http, chunked()), 413)
    assert f"{MAX_BODY_BYTES:,}" in error["message"]
    # Characters per message, assistant messages included.
    long_text = "y" * (MAX_MESSAGE_CHARS + 1)
    for messages, param in (([{"role": "user", "content": long_text}], "messages[0].content"),
                            ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": long_text},
                              {"role": "user", "content": "more"}], "messages[1].content")):
        error = error_of(http.post("/chat/completions", json={"messages": messages}), 400)
        assert error["param"] == param and error["code"] == "message_too_long"
        assert f"{MAX_MESSAGE_CHARS:,}" in error["message"]
    # reasoning_effort: a known name or a bounded token count.
    for effort in (MAX_REASONING_TOKENS + 1, -1, 10**12, 1.5, "enormous", True, [64], {"effort": "low"}):
        error = error_of(http.post("/chat/completions", json=ask(reasoning_effort=effort)), 400)
        assert error["param"] == "reasoning_effort" and str(MAX_REASONING_TOKENS) in error["message"]
    # k and n.
    for k in (0, 51, 10**9, "5", 2.0, True):
        error = error_of(http.post("/chat/completions", json=ask(k=k)), 400)
        assert error["param"] == "k" and "1 to 50" in error["message"]
    for n in (2, 0, 10**12, "1"):
        assert error_of(http.post("/chat/completions", json=ask(n=n)), 400)["param"] == "n"
    # Ids that are not ids.
    for field in ("user", "session_id"):
        assert error_of(http.post("/chat/completions", json=ask(**{field: {"id": 1}})), 400)["param"] == field
        assert error_of(http.post("/chat/completions", json=ask(**{field: "u" * 500})), 400)["param"] == field


def test_title_lines_beyond_the_limit_are_ignored(http, engine, monkeypatch):
    """An assistant message's numbered lines are read as shown items up to MAX_TITLE_LINES (each
    an exact title lookup, never a fuzzy search over the catalog); the rest are ignored, and a very
    long numbered line costs nothing."""
    searches, fuzzy = [], []
    original, original_fuzzy = engine.catalog.exact_title, engine.catalog.search_titles

    def counted(query):
        searches.append(query)
        return original(query)

    def counted_fuzzy(query, k=10, **kwargs):
        if k != 3:                            # request understanding's own title searches ask for 3
            fuzzy.append(query)
        return original_fuzzy(query, k=k, **kwargs)

    monkeypatch.setattr(engine.catalog, "exact_title", counted)
    monkeypatch.setattr(engine.catalog, "search_titles", counted_fuzzy)
    titled = engine.catalog.item(engine.facets.item_ids[0])
    line = f"{titled.title}" + (f" ({titled.year})" if titled.year else "")
    lines = [f"{n}. Nothing Called This {n}" for n in range(1, MAX_TITLE_LINES + 1)]
    reply = "\n".join(lines + [f"{MAX_TITLE_LINES + 1}. {line}"] + [f"{n}. {line}" for n in range(52, 2000)])
    reply = reply[:MAX_MESSAGE_CHARS]
    started = time.perf_counter()
    body = {"messages": [{"role": "user", "content": "anything"}, {"role": "assistant", "content": reply},
                         {"role": "user", "content": "more"}], "reasoning_effort": "none", "k": 2}
    answer = http.post("/chat/completions", json=body)
    assert answer.status_code == 200, answer.text
    assert len([q for q in searches if q.startswith("Nothing Called This")]) == MAX_TITLE_LINES and fuzzy == []
    session = engine.sessions.get(answer.json()["thinkrec"]["session_id"])
    assert session.turns[1].role == "assistant" and session.turns[1].items == []
    # The same title within the limit is read as shown.
    searches.clear()
    body["messages"][1]["content"] = "\n".join(lines[:-1] + [f"{MAX_TITLE_LINES}. {line}"])
    session = engine.sessions.get(http.post("/chat/completions", json=body).json()["thinkrec"]["session_id"])
    assert session.turns[1].items == [titled.item_id]
    # A numbered line of pathological length is not searched (the pattern would backtrack for seconds).
    searches.clear()
    body["messages"][1]["content"] = "1. a" + " " * (MAX_MESSAGE_CHARS - 10) + "b"
    assert http.post("/chat/completions", json=body).status_code == 200
    assert not [q for q in searches if q.startswith("a ")]
    assert time.perf_counter() - started < 30


def sse(response: httpx.Response) -> list[str]:
    return [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]


def test_a_failure_mid_stream_ends_with_an_error_chunk_then_done(http, engine, monkeypatch):
    def failing(session_id, message, **kwargs):
        yield NoticeEvent(text="read")
        yield ReasoningDelta(level="derivation", text="You like")
        raise RuntimeError("scheduler step failed: CUDA out of memory")

    monkeypatch.setattr(engine, "turn", failing)
    with http.stream("POST", "/chat/completions", json=ask(stream=True)) as response:
        assert response.status_code == 200
        data = sse(response)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert any(c.get("choices") and c["choices"][0]["delta"].get("reasoning_content") for c in chunks)
    error = chunks[-1]["error"]
    assert set(error) == ERROR_FIELDS and error["type"] == "server_error" and error["code"] == "internal_error"
    assert "RuntimeError" in error["message"] and "CUDA" not in error["message"]    # internals go to the log

    # Failing before the stream starts, or without streaming: a 500 with an OpenAI error body.
    def failing_at_once(session_id, message, **kwargs):
        raise RuntimeError("boom")
        yield

    for turn, stream in ((failing_at_once, True), (failing, False)):
        monkeypatch.setattr(engine, "turn", turn)
        error = error_of(http.post("/chat/completions", json=ask(stream=stream)), 500)
        assert error["code"] == "internal_error" and error["type"] == "server_error"
    monkeypatch.undo()
    with http.stream("POST", "/chat/completions", json=ask(stream=True, user="u22")) as response:
        data = sse(response)
    assert data[-1] == "[DONE]" and "error" not in data[-2]



# A second set of malformed requests, written after the first 67 probes held: wrong shapes at every
# level of the body, values JSON allows but numbers do not, bodies that are not JSON at all.
MALFORMED = [
    '{"messages": "a comedy"}', '{"messages": {"role": "user"}}', '{"messages": null}', '{"messages": 7}',
    '{"messages": []}', '{"messages": ["a comedy"]}', '{"messages": [7]}', '{"messages": [null]}',
    '{"messages": [{"content": "hi"}]}', '{"messages": [{"role": "wizard", "content": "hi"}]}',
    '{"messages": [{"role": "user"}]}', '{"messages": [{"role": "user", "content": 7}]}',
    '{"messages": [{"role": "user", "content": {"text": "hi"}}]}', '{"messages": [{"role": "user", "content": [1, 2]}]}',
    '{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}',
    '{"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}',
    '{"messages": [{"role": "user", "content": "hi"}], "stream_options": "all"}',
    '{"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}',
    '{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
    '{"messages": [{"role": "user", "content": "hi"}], "k": Infinity}',
    '{"messages": [{"role": "user", "content": "hi"}], "k": 1e999}',
    '{"messages": [{"role": "user", "content": "hi"}], "k": -0.0}',
    '{"messages": [{"role": "user", "content": "hi"}], "n": 1e400}',
    '{"messages": [{"role": "user", "content": "hi"}], "session_id": "no-such-session"}',
    '{"messages": [{"role": "user", "content": "hi"}], "user": "no-such-dataset-user-\u00e9"}',
    '[{"role": "user", "content": "hi"}]', '"hi"', "null", "7", "", "   ", "{", '{"messages": [', "not json",
    '{"messages": [{"role": "user", "content": "hi"}]} trailing',
]


@pytest.mark.parametrize("body", MALFORMED)
def test_malformed_requests_are_4xx_with_an_openai_error(http, engine, body):
    before = session_count(engine)
    response = post_raw(http, body)
    if response.status_code == 200:
        # Only requests that are valid after all may be answered: then they carry items.
        assert response.json()["choices"][0]["message"]["content"], body
    else:
        assert 400 <= response.status_code < 500, (body, response.status_code, response.text)
        assert set(response.json()["error"]) == ERROR_FIELDS
        assert session_count(engine) == before, body


def test_bodies_that_are_not_json_text_are_refused(http, engine):
    for content, kind in ((b"\xff\xfe\x00{bad", "application/json"), ("messages=hi", "application/x-www-form-urlencoded"),
                          (b"\x00" * 64, "application/octet-stream")):
        response = http.post("/chat/completions", content=content, headers={"Content-Type": kind})
        assert 400 <= response.status_code < 500 and set(response.json()["error"]) == ERROR_FIELDS, response.text
    assert http.get("/chat/completions").status_code in (404, 405)
    assert http.post("/no/such/route", json={}).status_code in (404, 405)
    assert_still_serves(http, engine)


def test_a_client_over_its_rate_gets_a_429_before_its_body_is_read(engine):
    """The per-client limit (``ClientLimit``) on the endpoint's own app: a burst of twice the rate
    goes through, the next request is a 429 with ``Retry-After`` and nothing stored; another API
    key has its own bucket; once the bucket refills the client is served again."""
    from starlette.testclient import TestClient

    from app.integrations.openai_api import openai_app

    app = openai_app(engine, rate_limit=1.0)
    now = [1000.0]
    app.state.limit.clock = lambda: now[0]
    with TestClient(app) as http:
        bad = b"{not json"          # refused after the limit is taken: cheap, and stores nothing
        assert [post_raw(http, bad).status_code for _ in range(2)] == [400, 400]
        before = session_count(engine)
        refused = post_raw(http, b"x" * 10_000)
        error = error_of(refused, 429)
        assert error["code"] == "rate_limit_exceeded" and "1 a second" in error["message"]
        assert refused.headers["retry-after"] == "1"
        assert session_count(engine) == before
        # The endpoint checks no API key, so a fresh one is no way around the limit.
        other = http.post("/chat/completions", content=bad, headers={"Authorization": "Bearer another-key"})
        assert other.status_code == 429
        now[0] += 1.0
        served = http.post("/chat/completions", json=ask(user="u22"))
        assert served.status_code == 200, served.text


def test_the_client_limit_refills_at_its_rate_and_forgets_old_clients():
    from app.integrations.openai_request import APIError, ClientLimit

    now = [0.0]
    limit = ClientLimit(2.0, max_clients=3, clock=lambda: now[0])
    for _ in range(4):
        limit.check("a")
    with pytest.raises(APIError) as refused:
        limit.check("a")
    assert refused.value.status == 429 and refused.value.headers["Retry-After"] == "1"
    now[0] += 0.5                   # one token back
    limit.check("a")
    with pytest.raises(APIError):
        limit.check("a")
    for client in "bcd":
        limit.check(client)
    assert list(limit.buckets) == ["b", "c", "d"]          # bounded: "a" forgotten, as if refilled
    ClientLimit(0).check("a")                               # 0: no limit


@pytest.mark.parametrize("option, value", [("temperature", "hot"), ("temperature", 3), ("top_p", -0.1),
                                           ("max_tokens", -5), ("max_tokens", 1.5), ("seed", "abc"),
                                           ("model", 123), ("stop", [1]), ("stop", ["a", "b", "c", "d", "e"])])
def test_unused_sampling_options_of_the_wrong_type_are_a_400(http, engine, option, value):
    before = session_count(engine)
    body = {"messages": [{"role": "user", "content": "hi"}], option: value}
    error = error_of(http.post("/chat/completions", json=body), 400)
    assert error["param"] == option and option in error["message"]
    assert session_count(engine) == before


def test_well_formed_sampling_options_are_accepted_and_ignored(http):
    body = {"model": "thinkrec", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.7, "top_p": 1,
            "max_tokens": 200, "seed": 3, "stop": ["\n"], "presence_penalty": 0}
    response = http.post("/chat/completions", json=body)
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["items"]


def test_more_like_the_second_one_points_into_a_replayed_answer(http):
    """A client that holds the conversation: "more like the second one" names the second line of the
    assistant message it sent back."""
    first = http.post("/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "k": 3}).json()
    shown = first["choices"][0]["message"]["items"]
    listed = "\n".join(f"{n}. {item['title']}" for n, item in enumerate(shown, 1))
    body = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": listed},
                         {"role": "user", "content": "more like the second one"}], "k": 3}
    request = http.post("/chat/completions", json=body).json()["thinkrec"]["request"]
    assert request["understood"] == f"more like {shown[1]['title']}"
    assert request["constraints"]["like_item"] == shown[1]["item_id"]


def test_roles_and_content_parts_are_read_or_refused_never_dropped(http, engine):
    """A role with odd case or spaces is the role; an unknown role, a part without a type or a part
    that is not text is a 400 (dropping it would answer a request nobody sent); the Responses API's
    "input_text" part is text."""
    read = http.post("/chat/completions", json=ask(messages=[{"role": " User ", "content": "a comedy please"}]))
    assert read.status_code == 200 and read.json()["thinkrec"]["request"]["constraints"]["want"] == [["Comedy"]]
    parts = [{"type": "input_text", "text": "a comedy"}, {"type": "TEXT", "text": "please"}]
    read = http.post("/chat/completions", json=ask(messages=[{"role": "user", "content": parts}]))
    assert read.status_code == 200 and read.json()["thinkrec"]["request"]["constraints"]["want"] == [["Comedy"]]
    before = session_count(engine)
    for message, param in (({"role": "wizard", "content": "hi"}, "messages[0].role"),
                           ({"role": "user", "content": [{"text": "a horror movie"}]}, "messages[0].content[0]"),
                           ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}},
                                                         {"type": "text", "text": "like this"}]},
                            "messages[0].content[0].type")):
        assert error_of(http.post("/chat/completions", json=ask(messages=[message])), 400)["param"] == param
    assert session_count(engine) == before


def test_valid_json_python_cannot_read_is_named_as_such(http, no_session_stored):
    body = '{"messages": [{"role": "user", "content": "hi"}], "seed": 1' + "0" * 5000 + "}"
    error = error_of(post_raw(http, body), 400)
    assert "digits" in error["message"] and "not valid JSON" not in error["message"]


def test_models_answers_head_as_get(http):
    assert http.head("/models").status_code == 200 and http.get("/models").status_code == 200


def test_a_client_gone_mid_upload_is_a_400_not_an_engine_failure(caplog):
    """The body stops arriving (the client hung up): refused as a request, logged without a traceback
    and without the engine-failure line."""
    import asyncio

    from starlette.requests import ClientDisconnect

    from app.integrations.openai_request import APIError, _read_json

    class Gone:
        headers = {"content-length": "1000"}

        async def stream(self):
            yield b'{"messages": ['
            raise ClientDisconnect()

    with caplog.at_level("INFO"), pytest.raises(APIError) as refused:
        asyncio.run(_read_json(Gone()))
    assert refused.value.status == 400 and "connection closed" in refused.value.message
    assert "chat completion failed" not in caplog.text and not any(r.exc_info for r in caplog.records)
