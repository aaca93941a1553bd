"""Request constraints on the vLLM side without vLLM: the server's catalog file with facets, the
``thinkrec_constraint`` argument, the gates that restrict items by it, and the client backend's
requests (against an in-process stand-in for the server). The real server runs in
tests/test_vllm.py (``-m vllm``)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import httpx
import pytest
import torch

from engine.constraints import Constraints, Facets
from engine.serving.vllm_trie import (CITE_ARG, CONSTRAINT_ARG, ENABLE_ARG, EXCLUDE_ARG, RequestGates, TrieSpec,
                              request_args, spec_has_facets, write_trie_spec)

LEVELS, CODEBOOK = 3, 4
CATEGORIES = ["Comedy", "Drama", "Horror", "Sci-Fi", "Romance"]


class FakeTokenizer:
    """Token ids: 0-9 text, 10 <|item_begin|>, 11 <|item_end|>, 12 </think>, 13 <|end|>, then SID tokens."""

    item_begin_id, item_end_id, think_end_id, end_id = 10, 11, 12, 13
    first_sid = 14

    def __init__(self):
        self.sid_code_of = {self.first_sid + level * CODEBOOK + code: (level, code)
                            for level in range(LEVELS) for code in range(CODEBOOK)}

    def __len__(self) -> int:
        return self.first_sid + LEVELS * CODEBOOK

    def sid_token_ids(self, codes) -> list[int]:
        return [self.first_sid + level * CODEBOOK + int(code) for level, code in enumerate(codes)]


def synthetic_catalog(n: int = 48, seed: int = 0):
    """Items with distinct SIDs, a few categories each, and years (some unknown)."""
    rng = random.Random(seed)
    all_codes = [(a, b, c) for a in range(CODEBOOK) for b in range(CODEBOOK) for c in range(CODEBOOK)]
    codes = {str(i): all_codes[j] for i, j in enumerate(rng.sample(range(len(all_codes)), n))}
    years = [None if i % 11 == 0 else rng.randint(1950, 2010) for i in range(n)]
    categories = [rng.sample(CATEGORIES, rng.randint(1, 3)) for _ in range(n)]
    return codes, Facets(list(codes), years, categories)


@pytest.fixture()
def spec(tmp_path) -> TrieSpec:
    from engine.slots import SlotGrammar

    codes, facets = synthetic_catalog()
    # The fake tokenizer spells no words: a grammar with no slots (its own tests use a real tokenizer).
    no_slots = SlotGrammar({}, [], {}, [], [], [], [], {})
    return TrieSpec(write_trie_spec(tmp_path / "trie.json", FakeTokenizer(), codes, "fp", facets=facets,
                                    slots=no_slots))


def test_a_reasoning_request_needs_the_slot_grammar(tmp_path):
    """A catalog file without the reasoning's vocabulary refuses reasoning requests, never decodes
    them unconstrained."""
    codes, facets = synthetic_catalog()
    bare = TrieSpec(write_trie_spec(tmp_path / "bare.json", FakeTokenizer(), codes, "fp", facets=facets))
    gates = RequestGates(bare)
    with pytest.raises(ValueError, match="no slot grammar"):
        gates.add_request(0, request_args({"thinkrec": 1, "thinkrec_slots": 1}), [1], [])
    gates.add_request(0, request_args({"thinkrec": 1}), [1], [])       # items alone need no grammar


def allowed_ids(spec: TrieSpec, constraints: Constraints | None) -> set[str]:
    if constraints is None:
        return set(spec.trie.items)
    return set(spec.facets.allowed_items(constraints))


def test_spec_round_trip_with_facets(tmp_path, spec):
    codes, facets = synthetic_catalog()
    assert spec.facets.item_ids == facets.item_ids
    assert all(spec.facets.year_of(i) == facets.year_of(i) and spec.facets.categories_of(i) == facets.categories_of(i)
               for i in facets.item_ids)
    assert spec.filter_for.node_paths.shape == (len(facets), LEVELS + 1)
    wanted = Constraints(want=[["Comedy"]], year_min=1980)
    restrict = spec.filter_for(wanted)
    assert restrict.size == len(facets.allowed_items(wanted)) > 0
    assert {i for i in facets.item_ids if restrict.allows(i)} == set(facets.allowed_items(wanted))
    assert spec.filter_for(Constraints.model_validate_json(wanted.model_dump_json())) is restrict   # cached by key
    assert spec.filter_for(None) is None and spec.filter_for(Constraints(turned_down=["3"])) is None
    assert spec_has_facets(str(tmp_path / "trie.json"))
    # A catalog file without facets: unconstrained requests work, hard constraints are refused.
    bare = write_trie_spec(tmp_path / "bare.json", FakeTokenizer(), codes, "fp")
    assert not spec_has_facets(str(bare))
    bare_spec = TrieSpec(bare)
    assert bare_spec.facets is None and bare_spec.filter_for(None) is None
    with pytest.raises(ValueError, match="no facets"):
        bare_spec.filter_for(wanted)


def test_the_filter_cache_is_bounded(tmp_path):
    codes, facets = synthetic_catalog()
    spec = TrieSpec(write_trie_spec(tmp_path / "t.json", FakeTokenizer(), codes, "fp", facets=facets),
                    filter_cache_size=2)
    for year in range(1960, 1966):
        spec.filter_for(Constraints(year_min=year))
    assert len(spec.filter_for._cache) == 2


def test_request_args_parse_the_constraint_and_refuse_malformed_ones():
    wanted = Constraints(want=[["Comedy", "Drama"]], avoid=["Horror"], year_max=1999)
    request = request_args({ENABLE_ARG: 1, EXCLUDE_ARG: [1, "2"], CONSTRAINT_ARG: wanted.model_dump_json()})
    assert request.exclude == {"1", "2"} and request.constraints == wanted
    assert request_args({ENABLE_ARG: 1}).constraints is None
    assert request_args({CONSTRAINT_ARG: wanted.model_dump_json()}) is None      # not opted in: untouched
    for bad in ["not json", json.dumps({"want": "Comedy"}), json.dumps({"year_min": "soon"}), 42, ["Comedy"]]:
        with pytest.raises(ValueError, match=CONSTRAINT_ARG):
            request_args({ENABLE_ARG: 1, CONSTRAINT_ARG: bad})


def walk(gates: RequestGates, rows: dict[int, list[int]], steps: int, seed: int) -> None:
    """Decode every row for ``steps`` tokens: sample among the tokens the gates leave finite."""
    generator = torch.Generator().manual_seed(seed)
    width = len(FakeTokenizer())
    for _ in range(steps):
        logits = gates.apply(torch.randn(max(rows) + 1, width, generator=generator))
        for index, outputs in rows.items():
            finite = torch.isfinite(logits[index]).nonzero().flatten()
            outputs.append(int(finite[torch.randint(len(finite), (1,), generator=generator)]))


def items_of(spec: TrieSpec, outputs: list[int], begin: int, end: int) -> list[str | None]:
    """Items spelled between <|item_begin|> and <|item_end|> (None for a span that names none)."""
    found, span = [], None
    for token in outputs:
        if span is None:
            span = [] if token == begin else None
        elif token == end:
            found.append(spec.trie.lookup(span))
            span = None
        else:
            span.append(token)
    return found


@pytest.mark.parametrize("seed", range(4))
def test_every_constrained_walk_ends_in_an_allowed_item(spec, seed):
    tok = FakeTokenizer()
    constraints = [Constraints(want=[["Comedy"]]), Constraints(want=[["Drama", "Romance"]], avoid=["Horror"]),
                   Constraints(year_min=1970, year_max=1999), None]
    exclude = {"0", "5", "7"}
    gates, rows = RequestGates(spec), {}
    for index, c in enumerate(constraints):
        rows[index] = []
        # Prompts end at <|item_begin|>: every step is inside an item or free text after one.
        gates.add(index, exclude, [tok.end_id, tok.item_begin_id], rows[index], c)
    walk(gates, rows, 200, seed)
    for index, c in enumerate(constraints):
        items = items_of(spec, [tok.item_begin_id] + rows[index], tok.item_begin_id, tok.item_end_id)
        assert items, "the walk never finished an item"
        assert None not in items                                       # every span spells a real item
        assert set(items) <= allowed_ids(spec, c) - exclude            # allowed, never excluded
        assert len(items) == len(set(items))                           # no repeats within a reply
        for item in items:
            if c is not None:
                assert c.allows(spec.facets.categories_of(item), spec.facets.year_of(item))


def test_a_constraint_nothing_satisfies_allows_only_the_item_end(spec):
    tok = FakeTokenizer()
    gates, outputs = RequestGates(spec), []
    gates.add(0, set(), [tok.item_begin_id], outputs, Constraints(want=[["Western"]]))
    logits = gates.apply(torch.randn(1, len(tok)))
    assert torch.isfinite(logits[0]).nonzero().flatten().tolist() == [tok.item_end_id]


def test_gates_wait_for_placeholder_tokens(spec):
    """Under async scheduling vLLM hands over -1 for a token not sampled yet and fills it in place
    later: the gate must neither consume the placeholder nor skip the real token."""
    tok = FakeTokenizer()
    item = spec.facets.allowed_items(Constraints(want=[["Comedy"]]))[0]
    path = list(spec.trie.path(item))
    gates, outputs = RequestGates(spec), []
    gates.add(0, set(), [tok.item_begin_id], outputs, Constraints(want=[["Comedy"]]))
    outputs += [path[0], -1]
    gates.apply(torch.zeros(1, len(tok)))
    cursor = gates.rows[0].gate.cursor
    assert cursor.prefix == path[:1] and not cursor.dead
    outputs[1] = path[1]                                      # vLLM replaces the placeholder in place
    logits = gates.apply(torch.zeros(1, len(tok)))
    assert cursor.prefix == path[:2] and path[2] in torch.isfinite(logits[0]).nonzero().flatten().tolist()


def test_request_args_parse_cited_items_and_refuse_malformed_ones():
    request = request_args({ENABLE_ARG: 1, EXCLUDE_ARG: [], CITE_ARG: [3, "4", "4"]})
    assert request.cite == {"3", "4"} and request.exclude == set() and request.constraints is None
    assert request_args({ENABLE_ARG: 1}).cite is None                     # absent: no citation limit
    assert request_args({ENABLE_ARG: 1, CITE_ARG: []}).cite == set()     # empty: no item may be cited
    assert request_args({CITE_ARG: ["3"]}) is None                          # not opted in: untouched
    for bad in ["3", 3, {"3": 1}, [3.5], ["3", None], [["3"]], [True]]:
        with pytest.raises(ValueError, match=CITE_ARG):
            request_args({ENABLE_ARG: 1, CITE_ARG: bad})
    with pytest.raises(ValueError, match="exclusive"):
        request_args({ENABLE_ARG: 1, CITE_ARG: ["3"], CONSTRAINT_ARG: Constraints(year_min=1990).model_dump_json()})


@pytest.mark.parametrize("seed", range(4))
def test_a_citing_walk_names_only_cited_items_each_once(spec, seed):
    """Reasoning over a history: spans name only the cited items, none twice; once all are cited,
    a span can only close (on nothing) — never fall back to the rest of the catalog."""
    tok = FakeTokenizer()
    rng = random.Random(seed)
    cites = [set(rng.sample(spec.trie.items, n)) for n in (1, 3, 5)] + [set()]
    gates, rows = RequestGates(spec), {}
    for index, cite in enumerate(cites):
        rows[index] = []
        gates.add_request(index, request_args({ENABLE_ARG: 1, CITE_ARG: sorted(cite)}),
                          [tok.end_id, tok.item_begin_id], rows[index])
    walk(gates, rows, 300, seed)
    for index, cite in enumerate(cites):
        items = items_of(spec, [tok.item_begin_id] + rows[index], tok.item_begin_id, tok.item_end_id)
        named = [i for i in items if i is not None]
        assert set(named) <= cite and len(named) == len(set(named))     # only cited items, each at most once
        assert set(named) == cite          # 300 random steps open far more spans than there are cited items
        assert gates.rows[index].gate.items == named
    # Every cited item used up: inside a span only <|item_end|> is left.
    gates.rows[0].outputs.append(tok.item_begin_id)
    logits = gates.apply(torch.randn(len(cites), len(tok)))
    assert torch.isfinite(logits[0]).nonzero().flatten().tolist() == [tok.item_end_id]


def test_a_citing_request_resumes_inside_a_span_and_refuses_a_constraint_too(spec):
    tok = FakeTokenizer()
    cited = sorted(spec.trie.items)[:2]
    path = list(spec.trie.path(cited[1]))
    gates, outputs = RequestGates(spec), []
    gates.add(0, set(), [1, tok.item_begin_id, path[0]], outputs, cite=set(cited))     # prompt ends mid-span
    logits = gates.apply(torch.zeros(1, len(tok)))
    finite = set(torch.isfinite(logits[0]).nonzero().flatten().tolist())
    assert path[1] in finite and finite <= {p[1] for p in map(spec.trie.path, cited) if p[0] == path[0]}
    with pytest.raises(ValueError, match="exclusive"):
        gates.add(1, set(), [tok.item_begin_id], [], Constraints(want=[["Comedy"]]), cite=set(cited))


# -- the client backend against an in-process stand-in for the server ---------------------------
class FakeServer:
    """Answers /v1/models and /v1/completions like ``thinkrec serve-model``: the "model" is a fixed
    random logit table per context length, masked by the same RequestGates the plugin uses."""

    def __init__(self, spec: TrieSpec, name: str):
        self.spec, self.name, self.bodies = spec, name, []
        self.table = torch.randn(64, len(FakeTokenizer()), generator=torch.Generator().manual_seed(7))

    def logits(self, context: list[int]) -> torch.Tensor:
        return self.table[(len(context) * 31 + sum(context)) % len(self.table)].clone()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": [{"id": self.name}]})
        body = json.loads(request.content)
        self.bodies.append(body)
        try:
            asked = request_args(body.get("vllm_xargs"))
        except ValueError as error:
            return httpx.Response(400, json={"error": str(error)})
        prompts = body["prompt"] if isinstance(body["prompt"][0], list) else [body["prompt"]]
        choices = []
        for index, prompt in enumerate(prompts):
            gates, outputs = RequestGates(self.spec), []
            if asked is not None:
                gates.add_request(0, asked, prompt, outputs)
            logprobs = gates.apply(self.logits(prompt)[None])[0]
            choice = {"index": index, "token_ids": [int(logprobs.argmax())]}
            if body.get("logprobs"):
                top = logprobs.topk(body["logprobs"])
                choice["logprobs"] = {"top_logprobs": [{f"token_id:{int(t)}": max(float(v), -9999.0)
                                                        for v, t in zip(top.values, top.indices)}]}
            choices.append(choice)
        return httpx.Response(200, json={"choices": choices})


class Meta:
    dataset_fingerprint, sid_levels, sid_codebook_size = "fp", LEVELS, CODEBOOK


@pytest.fixture()
def backend(spec, monkeypatch):
    from engine import backends
    from engine.serving.vllm_trie import served_model_name

    server = FakeServer(spec, served_model_name("fp", LEVELS, CODEBOOK))
    client = httpx.Client
    monkeypatch.setattr(httpx, "Client", lambda **kw: client(transport=httpx.MockTransport(server), **kw))
    vllm = backends.VLLMBackend("http://fake:1", FakeTokenizer(), spec.trie, Meta(), filter_for=spec.filter_for)
    return vllm, server


def test_backend_sends_the_constraint_itself_and_returns_only_allowed_items(spec, backend):
    vllm, server = backend
    wanted = Constraints(want=[["Comedy"]])
    tok = FakeTokenizer()
    prompts = [[1, 2, tok.item_begin_id], [3, tok.item_begin_id], [4, tok.item_begin_id]]
    excludes = [{"1"}, set(), set(spec.facets.allowed_items(wanted))]          # the last: nothing left
    ranked = vllm.beam_search(prompts, excludes, k=5, constraints=[wanted, None, wanted])   # num_beams unset
    allowed = set(spec.facets.allowed_items(wanted))
    assert len(ranked[0]) == min(5, len(allowed - {"1"})) and {r.item_id for r in ranked[0]} <= allowed - {"1"}
    assert len(ranked[1]) == 5 and ranked[2] == []
    assert [r.score for r in ranked[0]] == sorted((r.score for r in ranked[0]), reverse=True)
    sent = [b["vllm_xargs"] for b in server.bodies]
    constrained = [x for x in sent if CONSTRAINT_ARG in x]
    assert constrained and all(Constraints.model_validate_json(x[CONSTRAINT_ARG]) == wanted for x in constrained)
    assert all(isinstance(x[CONSTRAINT_ARG], str) for x in constrained)      # a JSON string: xargs are plain
    assert all(len(x[EXCLUDE_ARG]) <= 1 for x in sent)                       # exclusions only, no allow-list
    assert len(constrained) < len(sent)                                      # the unconstrained prompt sent none
    # Wider beams than k are fine; a backend without facets refuses hard constraints before any request.
    assert len(vllm.beam_search(prompts[:1], [set()], k=3, num_beams=8, constraints=[wanted])[0]) == 3
    from engine.backends import VLLMBackend
    bare = VLLMBackend("http://fake:1", tok, spec.trie, Meta())
    count = len(server.bodies)
    with pytest.raises(ValueError, match="facets"):
        bare.beam_search(prompts[:1], [set()], k=3, constraints=[wanted])
    assert len(server.bodies) == count
    assert bare.beam_search(prompts[:1], [set()], k=3)[0]                    # no constraints: fine


def test_backend_reasoning_sends_the_cited_items(spec, backend):
    vllm, server = backend
    tok = FakeTokenizer()
    cited = set(sorted(spec.trie.items)[3:5])
    prompts = [[1, tok.item_begin_id], [2, tok.item_begin_id]]
    tokens = vllm.generate_reasoning(prompts, [set(), set()], max_new_tokens=1, cites=[cited, None])
    sent = [b["vllm_xargs"] for b in server.bodies[-2:]]
    with_cite = [x for x in sent if CITE_ARG in x]
    assert len(with_cite) == 1 and with_cite[0][CITE_ARG] == sorted(cited) and with_cite[0][EXCLUDE_ARG] == []
    assert CONSTRAINT_ARG not in with_cite[0]
    assert tokens[0][0] in {spec.trie.path(i)[0] for i in cited}      # the span starts on a cited item
    vllm.generate_reasoning(prompts[:1], [set()], max_new_tokens=1)   # no cites: no limit sent
    assert CITE_ARG not in server.bodies[-1]["vllm_xargs"]
    with pytest.raises(ValueError, match="cites"):
        vllm.generate_reasoning(prompts, [set(), set()], cites=[cited])
    # The streaming request carries the same argument (its body, built without a server round trip).
    body = vllm._request([1], set(), cite=cited, max_tokens=4, stream=True)
    assert body["vllm_xargs"][CITE_ARG] == sorted(cited)
    assert vllm._request([1], set(), cite=set())["vllm_xargs"][CITE_ARG] == []


def test_backend_reasoning_stops_at_the_given_ids(backend):
    vllm, server = backend
    tok = FakeTokenizer()
    vllm.generate_reasoning([[1, 2]], [set()], max_new_tokens=4)
    assert server.bodies[-1]["stop_token_ids"] == [tok.think_end_id, tok.end_id]
    vllm.generate_reasoning([[1, 2]], [set()], max_new_tokens=4, stop_ids=[5, 6])
    assert server.bodies[-1]["stop_token_ids"] == [5, 6]


# -- serve-model -------------------------------------------------------------------------------
def test_server_runs_without_async_scheduling():
    """The trie processor reads output ids; vLLM's async scheduling would hand it -1 placeholders."""
    from engine.serving.vllm_server import ServeArgs, server_command

    args = ServeArgs(checkpoint="ckpt", max_model_len=0)
    for device in ("cpu", "cuda"):
        command = server_command(Path("/venv/bin/python"), args, device, "name")
        assert "--no-async-scheduling" in command and "--async-scheduling" not in command


def test_serve_model_writes_the_catalogs_facets(built_dataset, tiny_checkpoint, tmp_path):
    from data.catalog import Catalog
    from engine.checkpoint import load_checked
    from engine.serving.vllm_server import write_catalog_spec

    catalog = Catalog(built_dataset)
    tokenizer, _ = load_checked(tiny_checkpoint, built_dataset)
    spec = TrieSpec(write_catalog_spec(tmp_path / "trie.json", tokenizer, built_dataset, "fp"))
    facets = Facets(*catalog.attribute_table())
    # The reasoning's vocabulary travels too, attached to the server's own trie and facets.
    assert spec.slots is not None and spec.slots.catalog is spec.trie and "mixed" in spec.slots.names
    assert spec.facets.item_ids == facets.item_ids and len(spec.trie) == len(catalog)
    comedy = Constraints(want=[["Comedy"]])
    restrict = spec.filter_for(comedy)
    assert {i for i in facets.item_ids if restrict.allows(i)} == set(facets.allowed_items(comedy))
    assert all("Comedy" in facets.categories_of(i) for i in facets.allowed_items(comedy))



def test_backend_beams_and_rescoring_agree(spec, backend):
    """The client's beam search (``engine.decoding.beam_step`` over the server's top lists) and its
    candidate scoring (one request per tree level) put the same numbers on the same items."""
    vllm, _ = backend
    tok = FakeTokenizer()
    prompt = [1, 2, tok.item_begin_id]
    ranked = vllm.beam_search([prompt], [set()], k=4, num_beams=6)[0]
    assert len({r.item_id for r in ranked}) == 4
    scores = vllm.score_paths([prompt], [[list(r.token_ids) for r in ranked]])[0]
    assert scores == pytest.approx([r.score for r in ranked], abs=1e-4)
