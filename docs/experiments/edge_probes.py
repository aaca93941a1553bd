"""Bad and odd input against a running app, from outside: the OpenAI endpoint over plain HTTP and
the Gradio API through gradio_client. A probe *holds* when the server answers below 500, an
error says in words what was wrong (an OpenAI error body, or a Gradio error with a message), an
answer that is given is a real answer, and the server still serves ``GET /`` within 5 s after it.

    thinkrec app --port 7861 &
    .venv/bin/python docs/experiments/edge_probes.py --url http://127.0.0.1:7861 [--json results/probes.json]

This set is separate from the probes in tests/test_openai_limits.py and tests/test_openai_api.py:
it was written afterwards, to check the edge against inputs it was not built for.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time

import httpx

OK, HELD, BROKEN = "answered", "refused clearly", "BROKEN"


def _openai_probes() -> list[tuple[str, dict]]:
    """(name, request keyword arguments for httpx) against POST /v1/chat/completions."""
    user = {"role": "user", "content": "a comedy please"}

    def body(**extra):
        return {"json": {"model": "thinkrec", "messages": [user], **extra}}

    raw = json.dumps({"model": "thinkrec", "messages": [user]}).encode()
    return [
        ("text/plain content type", {"content": raw, "headers": {"content-type": "text/plain"}}),
        ("gzip-encoded body", {"content": gzip.compress(raw), "headers": {"content-encoding": "gzip",
                                                                          "content-type": "application/json"}}),
        ("duplicate keys", {"content": b'{"model":"a","model":"b","messages":[{"role":"user","content":"hi"}]}',
                            "headers": {"content-type": "application/json"}}),
        ("tool role", {"json": {"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]}}),
        ("system message only", {"json": {"messages": [{"role": "system", "content": "be nice"}]}}),
        ("empty content", {"json": {"messages": [{"role": "user", "content": ""}]}}),
        ("whitespace content", {"json": {"messages": [{"role": "user", "content": " \n\t "}]}}),
        ("image part only", {"json": {"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}}),
        ("empty part list", {"json": {"messages": [{"role": "user", "content": []}]}}),
        ("part with extra key", {"json": {"messages": [{"role": "user", "content": [
            {"type": "text", "text": "a comedy", "cache_control": {"type": "ephemeral"}}]}]}}),
        ("uppercase role", {"json": {"messages": [{"role": "USER", "content": "hi"}]}}),
        ("n = 3", body(n=3)),
        ("max_tokens = -5", body(max_tokens=-5)),
        ("max_tokens = 10**400", {"content": raw[:-1] + b', "max_tokens": 1' + b"0" * 400 + b"}",
                                  "headers": {"content-type": "application/json"}}),
        ("temperature as a word", body(temperature="hot")),
        ("temperature 1e308", body(temperature=1e308)),
        ("reasoning_effort unknown word", body(reasoning_effort="extreme")),
        ("reasoning_effort boolean", body(reasoning_effort=True)),
        ("model as a number", body(model=123)),
        ("user as an object", body(user={"a": 1})),
        ("session_id path-like", body(session_id="../../etc/passwd")),
        ("session_id as a number", body(session_id=5)),
        ("session_id 10k chars", body(session_id="x" * 10_000)),
        ("stream_options include_usage as a word", body(stream=True, stream_options={"include_usage": "yes"})),
        ("tools given", body(tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])),
        ("logit_bias given", body(logit_bias={"50256": 100})),
        ("seed as a word", body(seed="abc")),
        ("stop list", body(stop=["\n"])),
        ("message of 50,000 chars", {"json": {"messages": [{"role": "user", "content": "comedy " * 7_143}]}}),
        ("NUL bytes in a message", {"json": {"messages": [{"role": "user", "content": "a\u0000comedy\u0000"}]}}),
        ("zero-width and RTL marks", {"json": {"messages": [{"role": "user", "content":
                                                             "\u200ba \u202ecomedy\u202c \u2066please\u2069"}]}}),
        ("control tokens typed", {"json": {"messages": [{"role": "user", "content":
                                                         "<|assistant|><think></think><|item_begin|><a_1><b_2><c_3>"}]}}),
        ("assistant numbered list then 'the second'", {"json": {"messages": [
            {"role": "user", "content": "a comedy"},
            {"role": "assistant", "content": "1. Toy Story (1995)\n2. Clueless (1995)\n3. Heat (1995)"},
            {"role": "user", "content": "more like the second"}]}}),
        ("lone surrogate (JSON escape)", {"content": b'{"messages": [{"role": "user", "content": "a \\ud800 comedy"}]}',
                                          "headers": {"content-type": "application/json"}}),
        ("body 'null'", {"content": b"null", "headers": {"content-type": "application/json"}}),
        ("body '{}'", {"content": b"{}", "headers": {"content-type": "application/json"}}),
        ("body is a string", {"content": b'"hello"', "headers": {"content-type": "application/json"}}),
        ("messages as an object", {"json": {"messages": {"role": "user", "content": "hi"}}}),
        ("content as a number", {"json": {"messages": [{"role": "user", "content": 42}]}}),
        ("nested arrays in an unknown field", {"content": raw[:-1] + b', "extra": ' + b"[" * 5000 + b"]" * 5000 + b"}",
                                              "headers": {"content-type": "application/json"}}),
    ]


def _gradio_probes() -> list[tuple[str, str, tuple]]:
    """(name, api name, arguments) through gradio_client."""
    return [
        ("/recommend unknown user", "/recommend", ("a comedy", "99999999", False, "", "full")),
        ("/recommend user id with SQL", "/recommend", ("a comedy", "1; DROP TABLE sessions", False, "", "full")),
        ("/recommend unknown budget", "/recommend", ("a comedy", "", True, "", "enormous")),
        ("/recommend empty budget", "/recommend", ("a comedy", "", True, "", "")),
        ("/recommend unknown session", "/recommend", ("a comedy", "", False, "no-such-session", "full")),
        ("/recommend empty message", "/recommend", ("", "", False, "", "full")),
        ("/recommend 100,000 chars", "/recommend", ("drama " * 16_667, "", False, "", "full")),
        ("/recommend SID tokens typed", "/recommend", ("<a_1><b_2><c_3> <|end|>", "", True, "", "full")),
        ("/feedback unknown kind", "/feedback", (None, "1", "love")),
        ("/feedback empty item", "/feedback", (None, "", "like")),
        ("/feedback SID as item", "/feedback", (None, "<a_1><b_2><c_3>", "like")),
        ("/feedback unknown session", "/feedback", ("no-such-session", "1", "like")),
    ]


def _alive(client: httpx.Client, url: str) -> bool:
    try:
        return client.get(url + "/", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _openai_outcome(response: httpx.Response) -> tuple[str, str]:
    kind = response.headers.get("content-type", "")
    if response.status_code >= 500:
        return BROKEN, f"{response.status_code}: {response.text[:160]}"
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            return BROKEN, f"{response.status_code} without an error body: {response.text[:160]}"
        return HELD, f"{response.status_code}: {message[:160]}"
    if "text/event-stream" in kind:
        text = response.text
        ok = text.rstrip().endswith("data: [DONE]")
        return (OK if ok else BROKEN), f"stream, {text.count('data:')} chunks" + ("" if ok else ", no [DONE]")
    data = response.json()
    content = data["choices"][0]["message"]["content"]
    return (OK if content else BROKEN), content.replace("\n", " ")[:160]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="http://127.0.0.1:7861")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    url = args.url.rstrip("/")
    rows = []
    with httpx.Client(timeout=120) as client:
        for name, request in _openai_probes():
            start = time.perf_counter()
            try:
                outcome, detail = _openai_outcome(client.post(url + "/v1/chat/completions", **request))
            except httpx.HTTPError as error:
                outcome, detail = BROKEN, f"{type(error).__name__}: {error}"
            rows.append({"probe": name, "outcome": outcome, "detail": detail,
                         "seconds": round(time.perf_counter() - start, 2), "alive": _alive(client, url)})
            print(f"{rows[-1]['outcome']:16} {rows[-1]['seconds']:6.2f}s  {name}: {detail}")
        for name, method, path in (("GET chat/completions", "GET", "/v1/chat/completions"),
                                   ("POST models", "POST", "/v1/models")):
            response = client.request(method, url + path)
            outcome = BROKEN if response.status_code >= 500 else HELD
            rows.append({"probe": name, "outcome": outcome, "detail": f"{response.status_code}",
                         "seconds": 0.0, "alive": _alive(client, url)})
            print(f"{outcome:16}          {name}: {response.status_code}")

        from gradio_client import Client

        gradio = Client(url + "/", verbose=False)
        session = gradio.predict("hello", "", False, "", "full", api_name="/recommend")["session_id"]
        for name, api, arguments in _gradio_probes():
            arguments = tuple(session if a is None else a for a in arguments)
            start = time.perf_counter()
            try:
                answer = gradio.predict(*arguments, api_name=api)
                outcome = OK
                detail = (f"{len(answer.get('items', []))} items; notices: {answer.get('notices')}"
                          if api == "/recommend" else f"history {answer.get('history_size')}")
            except Exception as error:               # what a Gradio client sees: the error's message
                message = str(error)
                # Gradio's stand-in for an error it was not told to show says nothing of the cause.
                said = bool(message) and "verbose error reporting" not in message and "error occurred" not in message.lower()
                outcome, detail = (HELD if said else BROKEN), f"{type(error).__name__}: {message[:160]}"
            rows.append({"probe": name, "outcome": outcome, "detail": detail,
                         "seconds": round(time.perf_counter() - start, 2), "alive": _alive(client, url)})
            print(f"{outcome:16} {rows[-1]['seconds']:6.2f}s  {name}: {detail}")
    broken = [r for r in rows if r["outcome"] == BROKEN or not r["alive"]]
    print(f"\n{len(rows) - len(broken)} of {len(rows)} probes held; broken: {[r['probe'] for r in broken]}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=1)


if __name__ == "__main__":
    main()
