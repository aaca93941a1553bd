"""Where a turn's tokens come from: the model in this process (transformers) or a vLLM server.

Both backends do the same two things for the engine — stream the reasoning under the gated
constraint, then beam-search the SID steps for the top items — and give the same items for the
same greedy request (``tests/test_vllm.py`` checks it against a real server).

The vLLM backend talks to ``thinkrec serve-model`` over its OpenAI-compatible completions API with
prompts as token ids. vLLM's own beam search ignores logits processors, so the beam search runs
here: each SID step is one batched request (one prompt per live beam, ``max_tokens=1``) whose
top log-probabilities come back already restricted to the beam's allowed tokens by the server's
trie processor; prefix caching makes every step after the first cost one token per beam.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Iterator, Sequence
from typing import Callable, Protocol

from engine.constraints import Constraints
from engine.decoding import (ItemTree, RankedItem, beam_search_items, beam_step, beams_done, finished_items,
                             generate_reasoning, score_paths, score_trees, stream_reasoning)
from engine.scheduler import BatchScheduler
from engine.sid import SIDTrie, TrieFilter
from engine.slots import SlotGrammar
from engine.serving.vllm_trie import ENABLE_ARG, EXCLUDE_ARG, served_model_name


class Backend(Protocol):
    name: str

    def stream_reasoning(self, prompt: Sequence[int], exclude: set[Hashable], max_new_tokens: int = 160,
                         temperature: float = 0.0, stop_ids: Sequence[int] | None = None,
                         cite: set[Hashable] | None = None) -> Iterator[int]:
        """One user's reasoning token ids as they are decoded, up to and including the first stop
        token (default ``</think>`` or ``<|end|>``). ``cite``: the only items its spans may name
        (each at most once); None: any item not excluded."""

    def generate_reasoning(self, prompts: Sequence[Sequence[int]], excludes: Sequence[set[Hashable]],
                           max_new_tokens: int = 160, sample: bool = False, temperature: float = 1.0,
                           batch_size: int = 32, stop_ids: Sequence[int] | None = None,
                           cites: Sequence[set[Hashable] | None] | None = None) -> list[list[int]]:
        """Many users' reasoning at once (evaluation, RL rollouts); ``cites`` one per prompt."""

    def score_paths(self, prompts: Sequence[Sequence[int]], paths: Sequence[Sequence[Sequence[int]]],
                    batch_size: int = 16, head_weight: float = 0.0) -> list[list[float]]:
        """Summed log-probability of each prompt's candidate SID paths (the beams' own scale), plus
        ``head_weight`` × the item head's log-probability where the backend has a head."""

    def beam_search(self, prompts: Sequence[Sequence[int]], excludes: Sequence[set[Hashable]],
                    k: int, num_beams: int | None = None, batch_size: int = 16,
                    constraints: Sequence[Constraints | None] | None = None) -> list[list[RankedItem]]:
        """Top-``k`` distinct unseen items per prompt (each ends with ``<|item_begin|>``), every
        one satisfying its prompt's constraints (fewer than ``k`` when fewer exist)."""


FilterFor = Callable[[Constraints | None], TrieFilter | None]


def _no_filter(constraints: Constraints | None) -> None:
    if constraints is not None and constraints.is_hard():
        raise ValueError("this backend was built without catalog facets: it cannot apply constraints")
    return None


class TransformersBackend:
    name = "transformers"

    def __init__(self, model, tokenizer, trie: SIDTrie, filter_for: FilterFor = _no_filter,
                 slots: SlotGrammar | None = None):
        self.model, self.tokenizer, self.trie = model, tokenizer, trie
        self.filter_for = filter_for
        self.slots = slots          # the vocabulary slots every reasoning call is held to

    def stream_reasoning(self, prompt, exclude, max_new_tokens=160, temperature=0.0, stop_ids=None, cite=None):
        return stream_reasoning(self.model, self.tokenizer, prompt, self.trie, exclude, max_new_tokens, temperature,
                                stop_ids, cite, self.slots)

    def generate_reasoning(self, prompts, excludes, max_new_tokens=160, sample=False, temperature=1.0, batch_size=32,
                           stop_ids=None, cites=None):
        return generate_reasoning(self.model, self.tokenizer, prompts, self.trie, excludes, max_new_tokens,
                                  do_sample=sample, temperature=temperature, batch_size=batch_size, stop_ids=stop_ids,
                                  cites=cites, slots=self.slots)

    def score_paths(self, prompts, paths, batch_size=16, head_weight=0.0):
        return score_paths(self.model, prompts, paths, self.tokenizer.pad_id, batch_size, self.head, head_weight,
                           self._items_of(paths) if head_weight else None)

    def score_with_head(self, prompts, pools, head_weight, admissible, extra, batch_size=16):
        """Each prompt's candidate items (``pools``) plus the head's ``extra`` best admissible ones,
        all scored ``log p(SID path) + head_weight · log p_head`` from one prompt pass: (items, paths, scores)."""
        trees = [ItemTree.of(pool, [self.trie.path(i) for i in pool]) for pool in pools]
        scores = []
        for start in range(0, len(prompts), batch_size):
            part = trees[start:start + batch_size]
            scores += score_trees(self.model, prompts[start:start + batch_size], part, self.tokenizer.pad_id, self.head,
                                  head_weight, extra=extra, admissible=admissible[start:start + batch_size],
                                  path_of=self.trie.path)
            trees[start:start + batch_size] = part
        return [t.items for t in trees], [t.paths for t in trees], scores

    @property
    def head(self):
        from engine.item_head import head_of

        return head_of(self.model)

    def _items_of(self, paths):
        return [[self.trie.lookup(tuple(p)) for p in cands] for cands in paths]

    def score_trees(self, prompts: Sequence[Sequence[int]], trees: Sequence[ItemTree], head_weight: float = 0.0,
                    batch_size: int = 16) -> list[list[float]]:
        """Every admissible item's score (full SID log-probability + ``head_weight`` × the item head's),
        ``trees[u]``'s items in order: exact ranking (engine/decoding.py, score_trees)."""
        out = []
        for start in range(0, len(prompts), batch_size):
            out += score_trees(self.model, prompts[start:start + batch_size], trees[start:start + batch_size],
                               self.tokenizer.pad_id, self.head, head_weight)
        return out

    def beam_search(self, prompts, excludes, k, num_beams=None, batch_size=16, constraints=None):
        filters = [self.filter_for(c) for c in constraints] if constraints is not None else None
        return beam_search_items(self.model, prompts, self.trie, excludes, self.tokenizer.pad_id,
                                 k=k, num_beams=num_beams, batch_size=batch_size, filters=filters)


class BatchedBackend(TransformersBackend):
    """The in-process model behind a :class:`~engine.scheduler.BatchScheduler`: concurrent
    sessions' reasoning steps and SID beam steps share each forward pass. Whatever else needs the
    model (scoring candidates, batched reasoning) runs in the scheduler's thread between steps."""

    name = "transformers"

    def __init__(self, model, tokenizer, trie: SIDTrie, filter_for: FilterFor = _no_filter,
                 slots: SlotGrammar | None = None, max_rows: int = 256):
        super().__init__(model, tokenizer, trie, filter_for, slots)
        self.scheduler = BatchScheduler(model, tokenizer, trie, slots, max_rows=max_rows)

    def stream_reasoning(self, prompt, exclude, max_new_tokens=160, temperature=0.0, stop_ids=None, cite=None):
        return self.scheduler.stream(prompt, exclude, max_new_tokens, temperature, stop_ids, cite)

    def generate_reasoning(self, prompts, excludes, max_new_tokens=160, sample=False, temperature=1.0, batch_size=32,
                           stop_ids=None, cites=None):
        return self.scheduler.call(super().generate_reasoning, prompts, excludes, max_new_tokens, sample,
                                   temperature, batch_size, stop_ids, cites)

    def score_paths(self, prompts, paths, batch_size=16, head_weight=0.0):
        if head_weight and self.head is not None:      # the head needs the prompt's hidden state
            return self.scheduler.call(super().score_paths, prompts, paths, batch_size, head_weight)
        return self.scheduler.score(prompts, paths)

    def score_trees(self, prompts, trees, head_weight=0.0, batch_size=16):
        return self.scheduler.call(super().score_trees, prompts, trees, head_weight, batch_size)

    def score_with_head(self, prompts, pools, head_weight, admissible, extra, batch_size=16):
        return self.scheduler.call(super().score_with_head, prompts, pools, head_weight, admissible, extra, batch_size)

    def beam_search(self, prompts, excludes, k, num_beams=None, batch_size=16, constraints=None):
        filters = [self.filter_for(c) for c in constraints] if constraints is not None else [None] * len(prompts)
        width = max(k, num_beams or k)
        return self.scheduler.wait_beams([self.scheduler.beams(p, e, k, width, f) for p, e, f in zip(prompts, excludes, filters)])

    def close(self) -> None:
        self.scheduler.close()


class ServerMismatch(ValueError):
    """The server at the URL does not serve this checkpoint's catalog."""


class BackendUnavailable(ConnectionError):
    """The model server stopped answering (down, restarting, or it failed the request). The turn
    is lost, the session is not: the engine says so and the next turn tries again."""


class VLLMBackend:
    name = "vllm"

    def __init__(self, url: str, tokenizer, trie: SIDTrie, meta, timeout: float = 120.0, concurrency: int = 32,
                 filter_for: FilterFor = _no_filter):
        import httpx

        self.url = url.rstrip("/")
        if not self.url.endswith("/v1"):
            self.url += "/v1"
        self.tokenizer, self.trie = tokenizer, trie
        # The client-side beam cursors use the same filter the server builds from the constraint.
        self.filter_for = filter_for
        self.stop_ids = [tokenizer.think_end_id, tokenizer.end_id]    # reasoning ends at </think> or <|end|>
        self.model_name = served_model_name(meta.dataset_fingerprint, meta.sid_levels, meta.sid_codebook_size)
        # Many users at once are many requests in flight: the server batches them.
        self.concurrency = concurrency
        self.client = httpx.Client(timeout=timeout, limits=httpx.Limits(max_connections=concurrency))
        self._check_server()

    def _check_server(self) -> None:
        import httpx

        try:
            response = self.client.get(f"{self.url}/models")
            response.raise_for_status()
        except httpx.HTTPError as error:
            raise ConnectionError(f"no vLLM server answers at {self.url} ({error}); start one with "
                                  "thinkrec serve-model --checkpoint DIR --port N") from error
        served = [m["id"] for m in response.json().get("data", [])]
        if self.model_name not in served:
            raise ServerMismatch(f"the server at {self.url} serves {served}, not {self.model_name}: it was "
                                 "started for another catalog or SID layout, so its item tokens would name "
                                 "the wrong items. Start it with thinkrec serve-model on this checkpoint.")

    def _request(self, prompt, exclude: set[Hashable], constraints: Constraints | None = None,
                 cite: set[Hashable] | None = None, reasoning: bool = False, **fields) -> dict:
        from engine.serving.vllm_trie import CITE_ARG, CONSTRAINT_ARG, SLOTS_ARG

        xargs = {ENABLE_ARG: 1, EXCLUDE_ARG: sorted(str(i) for i in exclude)}
        if constraints is not None and constraints.is_hard():
            # The constraint itself (a JSON string: xargs values must be plain types), never the
            # items it allows; the server builds the same trie filter from its copy of the facets.
            xargs[CONSTRAINT_ARG] = constraints.model_dump_json()
        if cite is not None:
            # Reasoning over the user's own history: spans may name only these items (the server
            # restricts its trie to them for this request; an empty list allows no item).
            xargs[CITE_ARG] = sorted(str(i) for i in cite)
        if reasoning:
            xargs[SLOTS_ARG] = 1      # names, trends and attributes from the catalog's vocabulary
        return {"model": self.model_name, "prompt": prompt, "skip_special_tokens": False, "vllm_xargs": xargs,
                **fields}

    def stream_reasoning(self, prompt, exclude, max_new_tokens=160, temperature=0.0, stop_ids=None, cite=None):
        body = self._request(list(prompt), exclude, cite=cite, reasoning=True, max_tokens=max_new_tokens,
                             temperature=temperature, stream=True, return_token_ids=True,
                             stop_token_ids=list(stop_ids) if stop_ids else self.stop_ids)
        import httpx

        try:
            with self.client.stream("POST", f"{self.url}/completions", json=body) as response:
                if response.status_code != 200:
                    response.read()
                    raise BackendUnavailable(f"the vLLM server at {self.url} answered {response.status_code}: "
                                             f"{response.text[:500]}")
                for line in response.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    for choice in json.loads(line[6:]).get("choices", []):
                        yield from choice.get("token_ids") or []
        except httpx.HTTPError as error:
            raise BackendUnavailable(f"the vLLM server at {self.url} stopped answering ({error})") from error

    def generate_reasoning(self, prompts, excludes, max_new_tokens=160, sample=False, temperature=1.0, batch_size=32,
                           stop_ids=None, cites=None):
        stops = list(stop_ids) if stop_ids else self.stop_ids
        cites = list(cites) if cites is not None else [None] * len(prompts)
        if len(cites) != len(prompts):
            raise ValueError(f"cites has {len(cites)} entries for {len(prompts)} prompts")

        # One request per user: exclusions and cited items are per request. Sampling is seeded by the server.
        def one(prompt, exclude, cite):
            body = self._request(list(prompt), exclude, cite=cite, reasoning=True, max_tokens=max_new_tokens,
                                 temperature=temperature if sample else 0.0, return_token_ids=True,
                                 stop_token_ids=stops)
            return self._post(body)["choices"][0]["token_ids"]

        return self._map(one, prompts, excludes, cites)

    def _map(self, fn, *columns) -> list:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(fn, *columns))

    def _post(self, body: dict) -> dict:
        import httpx

        try:
            response = self.client.post(f"{self.url}/completions", json=body)
        except httpx.HTTPError as error:
            raise BackendUnavailable(f"the vLLM server at {self.url} is not answering ({error})") from error
        if response.status_code != 200:
            raise BackendUnavailable(f"the vLLM server at {self.url} answered {response.status_code}: "
                                     f"{response.text[:500]}")
        return response.json()

    def _top(self, prompts: list[list[int]], exclude: set[Hashable], width: int,
             constraints: Constraints | None = None, cite: set[Hashable] | None = None) -> list[dict[int, float]]:
        """Per prompt: the ``width`` best next SID tokens the server allows, with log-probabilities."""
        body = self._request(prompts, exclude, constraints, cite=cite, max_tokens=1, temperature=0.0, logprobs=width,
                             return_tokens_as_token_ids=True)
        tops = [{} for _ in prompts]
        for choice in self._post(body)["choices"]:
            top = (choice.get("logprobs") or {}).get("top_logprobs") or [{}]
            tops[choice["index"]] = {int(key.split(":", 1)[1]): value for key, value in top[0].items()}
        return tops

    def score_paths(self, prompts, paths, batch_size=16, head_weight=0.0):
        """Teacher-forced scores from the server, on the beams' own scale: each step is one request
        per distinct prefix of the candidates, restricted (``thinkrec_cite``) to the candidates, so
        the server's processor returns log-probabilities of exactly the tokens needed."""
        return self._map(self._score_one, prompts, paths)

    def _score_one(self, prompt, candidates) -> list[float]:
        """One candidate tree (``ItemTree``): per depth, one request for its distinct prefixes."""
        paths = [tuple(p) for p in candidates]
        items = [self.trie.lookup(p) for p in paths]
        if any(i is None for i in items):
            raise ValueError("score_paths: a candidate path is not a catalog item")
        tree = ItemTree.of(items, paths)
        cite = {str(i) for i in items}
        logprob: dict[tuple[int, ...], dict[int, float]] = {}
        for prefixes in [[()]] + tree.levels:
            width = max(len({p[len(prefix)] for p in paths if p[:len(prefix)] == prefix}) for prefix in prefixes)
            for prefix, top in zip(prefixes, self._top([list(prompt) + list(p) for p in prefixes], set(), width,
                                                       cite=cite)):
                logprob[prefix] = top
        scores = []
        for path in paths:
            missing = [path[j] for j in range(len(path)) if path[j] not in logprob[path[:j]]]
            if missing:
                raise RuntimeError(f"the vLLM server returned no log-probability for token {missing[0]}")
            scores.append(sum(logprob[path[:j]][path[j]] for j in range(len(path))))
        return scores

    def beam_search(self, prompts, excludes, k, num_beams=None, batch_size=16, constraints=None):
        width = max(k, num_beams or k)
        constraints = list(constraints) if constraints is not None else [None] * len(prompts)
        # Filters first, here: a hard constraint this backend cannot apply fails before any request.
        filters = [self.filter_for(c) for c in constraints]
        return self._map(lambda p, e, c, f: self._beam_search_one(list(p), e, k, width, c, f),
                         prompts, excludes, constraints, filters)

    def _beam_search_one(self, prompt: list[int], exclude: set[Hashable], k: int, width: int,
                         constraints: Constraints | None = None,
                         restrict: TrieFilter | None = None) -> list[RankedItem]:
        """``engine.decoding.beam_step`` with the server's top log-probabilities: each step is one
        request for the unfinished beams."""
        beams = [(0.0, self.trie.cursor(exclude=exclude, restrict=restrict))]
        if not beams[0][1].allowed():      # nothing left to recommend (constraint and exclusions): no request
            return []
        while not beams_done(beams):
            live = [n for n, (_, cursor) in enumerate(beams) if not cursor.done()]
            top_of = dict(zip(live, self._top([prompt + beams[n][1].prefix for n in live], exclude, width,
                                              constraints)))

            def served(n: int, allowed: list[int], top_of=top_of) -> list[tuple[int, float]]:
                # Masked tokens can still fill a top list shorter than width: allowed ones only.
                ok = set(allowed)
                return [(token, lp) for token, lp in top_of[n].items() if token in ok]

            beams, _ = beam_step(beams, served, width)
            if not beams:
                return []
        return finished_items(beams, k)

