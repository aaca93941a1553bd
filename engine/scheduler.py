"""Continuous batching for the in-process model: many sessions' turns share each forward pass.

One thread owns the model and repeats one engine step:

1. **schedule**: jobs that arrived since the last step join (a reasoning stream is one row, a
   beam search ``num_beams`` rows) while the batch has room; finished or abandoned jobs left
   during the last step;
2. **run**: the newcomers' prompts are prefilled in one padded forward and their key/value cache
   rows are merged into the running batch's cache, then one decode forward runs every running
   row — reasoning tokens of some sessions beside SID beam steps of others;
3. **postprocess**: each job reads its rows' logits. A reasoning row goes through its own gated
   trie constraint (the same ``GatedTrieProcessor`` as a single session) and its token goes to
   the session's stream at once; a beam search keeps its best partial SIDs and tells the cache
   which parent row each survivor continues. A job that is done hands back its rows.

A turn asks about the same context several times (each reasoning stage continues the last, the
item prompt continues the reasoning, candidates are scored after prompts beam search just ran), so
prefills start from a :class:`PrefixCache` of recent keys and values and run only what is new.

Rows sit in one left-padded cache: a row's attention mask hides the columns before its own
prompt, and each row keeps its own positions, so a row computes what it would alone (up to
float rounding; ``tests/test_scheduler.py`` checks greedy results against the unbatched path).
Other model work (teacher-forced scoring, batched reasoning for many users) runs in the same
thread between steps, so nothing else ever touches the model at the same time.

    scheduler = BatchScheduler(model, tokenizer, trie, slots)
    for token in scheduler.stream(prompt, exclude=set(), max_new_tokens=160):
        ...
    items = scheduler.beams(item_prompt, exclude, k=10, width=20)
"""

from __future__ import annotations

import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import Future

import numpy as np
import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer

from engine.decoding import GatedTrieProcessor, RankedItem, cache_of, with_cache
from engine.sid import SIDTrie, TrieCursor, TrieFilter
from engine.slots import SlotGrammar

_DONE = object()        # end of a reasoning stream


class _Job:
    """Work that holds rows of the running batch."""

    cancelled = False

    def start(self, logits: torch.Tensor) -> list[int]:
        """Read the prefill's last logits (one row); return the tokens its rows feed next (none: done)."""
        raise NotImplementedError

    def step(self, logits: torch.Tensor) -> list[tuple[int, int]]:
        """Read this job's rows' logits; return (parent row within the job, next token) per kept row."""
        raise NotImplementedError

    def fail(self, error: BaseException) -> None:
        raise NotImplementedError


class _Reasoning(_Job):
    """One session's reasoning: greedy or sampled, under the gated trie constraint."""

    def __init__(self, tokenizer, trie: SIDTrie, prompt: Sequence[int], exclude: set[Hashable], max_new_tokens: int,
                 temperature: float, stops: set[int], cite: set[Hashable] | None, slots: SlotGrammar | None):
        self.prompt = list(prompt)
        self.sequence = list(prompt)
        self.gate = GatedTrieProcessor(tokenizer, trie, len(prompt), [set(exclude)],
                                       [trie.restrict_to(cite) if cite is not None else None], slots, [cite])
        self.budget, self.temperature, self.stops = max_new_tokens, temperature, stops
        self.out: queue.Queue = queue.Queue()

    def _next(self, logits: torch.Tensor) -> list[int]:
        if self.cancelled or self.budget <= 0:
            self.out.put(_DONE)
            return []
        scores = self.gate(torch.tensor([self.sequence]), logits[None].float().clone())
        if self.temperature > 0:
            token = int(torch.multinomial(torch.softmax(scores / self.temperature, dim=-1), 1))
        else:
            token = int(scores.argmax(dim=-1))
        self.budget -= 1
        self.sequence.append(token)
        self.out.put(token)
        if token in self.stops or self.budget <= 0:
            self.out.put(_DONE)
            return []
        return [token]

    def start(self, logits):
        return self._next(logits[0])

    def step(self, logits):
        return [(0, token) for token in self._next(logits[0])]

    def fail(self, error):
        self.out.put(error)


class _Beams(_Job):
    """One prompt's beam search over the SID trie (the same rule as ``engine.decoding``)."""

    def __init__(self, prompt: Sequence[int], trie: SIDTrie, exclude: set[Hashable], k: int, width: int,
                 restrict: TrieFilter | None):
        self.prompt = list(prompt)
        self.k, self.width = k, width
        self.root = trie.cursor(exclude=exclude, restrict=restrict)
        self.slots: list[tuple[float, TrieCursor]] = []
        self.future: Future = Future()

    def _finish(self) -> list[int]:
        finished = sorted(((s, c) for s, c in self.slots if c.done()), key=lambda sc: -sc[0])
        self.future.set_result([RankedItem(c.item, float(s), tuple(c.prefix)) for s, c in finished[:self.k]])
        return []

    def start(self, logits):
        logprobs = torch.log_softmax(logits[0].float(), dim=-1)
        allowed = self.root.allowed()
        ranked = sorted(((logprobs[t].item(), t) for t in allowed), reverse=True)[:self.width]
        for score, token in ranked:
            cursor = self.root.clone()
            cursor.accept(token)
            self.slots.append((score, cursor))
        if self.cancelled or all(c.done() for _, c in self.slots):
            return self._finish()
        return [c.prefix[-1] for _, c in self.slots]

    def step(self, logits):
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        candidates = []
        for row, (score, cursor) in enumerate(self.slots):
            if cursor.done():          # a shorter SID finished earlier: carried along unchanged
                candidates.append((score, row, None))
                continue
            allowed = cursor.allowed()
            if allowed:
                step = logprobs[row, torch.tensor(allowed)].tolist()
                candidates.extend((score + lp, row, t) for lp, t in zip(step, allowed))
        candidates.sort(key=lambda c: -c[0])
        slots, kept = [], []
        for score, row, token in candidates[:self.width]:
            cursor = self.slots[row][1].clone()
            if token is not None:
                cursor.accept(token)
            slots.append((score, cursor))
            kept.append(row)
        self.slots = slots
        if self.cancelled or all(c.done() for _, c in slots):
            return self._finish()
        return [(row, c.prefix[-1]) for row, (_, c) in zip(kept, slots)]

    def fail(self, error):
        if not self.future.done():
            self.future.set_exception(error)


class _Call:
    """Any other model work, run in the scheduler's thread between steps."""

    def __init__(self, fn: Callable, args: tuple):
        self.fn, self.args = fn, args
        self.future: Future = Future()


class _Score:
    """Teacher-forced scores of candidate SID paths; every session's waiting requests are scored
    in one batched call (``engine.decoding.score_paths``)."""

    def __init__(self, prompts: Sequence[Sequence[int]], paths: Sequence[Sequence[Sequence[int]]]):
        self.prompts, self.paths = list(prompts), list(paths)
        self.future: Future = Future()


class _GrowLayer(DynamicLayer):
    """One layer of the running batch's keys and values, in buffers with room to grow: a decode
    step writes its column in place instead of copying the whole cache (``DynamicLayer`` grows by
    concatenation, a copy of every row at every step)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int):
        super().__init__()
        self.device, self.is_initialized = keys.device, True
        self.buffers, self.length = (keys, values), length
        self._views()

    def _views(self) -> None:
        keys, values = self.buffers
        self.keys, self.values = keys[:, :, :self.length], values[:, :, :self.length]

    def update(self, key_states, value_states, *args, **kwargs):
        keys, values = self.buffers
        new = key_states.shape[2]
        if self.length + new > keys.shape[2]:
            room = max(new, keys.shape[2] // 2, 32)
            keys = torch.cat([keys, keys.new_zeros(*keys.shape[:2], room, keys.shape[3])], dim=2)
            values = torch.cat([values, values.new_zeros(*values.shape[:2], room, values.shape[3])], dim=2)
            self.buffers = (keys, values)
        keys[:, :, self.length:self.length + new] = key_states
        values[:, :, self.length:self.length + new] = value_states
        self.length += new
        self._views()
        return self.keys, self.values


def _growing_cache(parts: list[list[tuple[torch.Tensor, torch.Tensor]]], width: int, room: int = 64) -> Cache:
    """Row blocks (each a list of per-layer keys and values, any length up to ``width``) stacked
    into one growing cache, each block right-aligned (left padding), with ``room`` free columns."""
    rows = sum(block[0][0].shape[0] for block in parts)
    layers = []
    for n in range(len(parts[0])):
        k0 = parts[0][n][0]
        keys = k0.new_zeros(rows, k0.shape[1], width + room, k0.shape[3])
        values = torch.zeros_like(keys)
        at = 0
        for block in parts:
            k, v = block[n]
            keys[at:at + k.shape[0], :, width - k.shape[2]:width] = k
            values[at:at + k.shape[0], :, width - v.shape[2]:width] = v
            at += k.shape[0]
        layers.append(_GrowLayer(keys, values, width))
    return Cache(layers=layers)


def _layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _pad_left(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


class BatchScheduler:
    """Runs reasoning streams and beam searches from many threads as one batch (module docstring).

    ``max_rows`` caps the running batch: a job that would pass it waits for rows to free up (a
    job wider than the cap runs alone)."""

    def __init__(self, model, tokenizer, trie: SIDTrie, slots: SlotGrammar | None = None, max_rows: int = 256,
                 prefix_cache_bytes: int = 512 * 2**20):
        self.model, self.tokenizer, self.trie, self.slots = model, tokenizer, trie, slots
        self.max_rows = max_rows
        self.device = next(model.parameters()).device
        self._waiting: list = []
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        # The running batch: one cache row per (job, row within the job).
        self._cache = None
        self._mask: torch.Tensor | None = None          # [rows, columns], 0 where a row has no token
        self._positions: torch.Tensor | None = None     # [rows], the last fed token's position
        self._owners: list[tuple[_Job, int]] = []
        self._feed: list[int] = []                      # the token each row feeds at the next step
        self.prefixes = PrefixCache(prefix_cache_bytes)
        self.min_prefix = 16             # shorter shared prefixes are not worth a separate forward
        self.stats = {"steps": 0, "rows": 0, "max_rows": 0, "prefills": 0, "calls": 0, "scores": 0,
                      "prefill_tokens": 0, "prefix_tokens": 0}

    # -- submitting (any thread) --------------------------------------------------------------
    def _submit(self, job) -> None:
        with self._wake:
            if self._closed:
                raise RuntimeError("the batch scheduler is closed")
            self._waiting.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="thinkrec-scheduler", daemon=True)
                self._thread.start()
            self._wake.notify()

    def stream(self, prompt: Sequence[int], exclude: set[Hashable], max_new_tokens: int = 160,
               temperature: float = 0.0, stop_ids: Sequence[int] | None = None,
               cite: set[Hashable] | None = None) -> Iterator[int]:
        """Reasoning token ids as the batch decodes them, up to and including the first stop token.
        Leaving the loop early (a client gone) frees the row at the next step."""
        stops = set(stop_ids) if stop_ids else {self.tokenizer.think_end_id, self.tokenizer.end_id}
        job = _Reasoning(self.tokenizer, self.trie, prompt, exclude, max_new_tokens, temperature, stops, cite,
                         self.slots)
        self._submit(job)
        try:
            while True:
                token = job.out.get()
                if token is _DONE:
                    return
                if isinstance(token, BaseException):
                    raise token
                yield token
        finally:
            job.cancelled = True

    def beams(self, prompt: Sequence[int], exclude: set[Hashable], k: int, width: int,
              restrict: TrieFilter | None = None) -> Future:
        """A future for the top ``k`` distinct items after ``prompt`` (ending with ``<|item_begin|>``)."""
        job = _Beams(prompt, self.trie, exclude, k, max(k, width), restrict)
        if not job.root.allowed():     # nothing left to recommend: no rows needed
            job.future.set_result([])
            return job.future
        self._submit(job)
        return job.future

    def score(self, prompts: Sequence[Sequence[int]], paths: Sequence[Sequence[Sequence[int]]]) -> list[list[float]]:
        """``engine.decoding.score_paths`` for these prompts, batched with other sessions' requests."""
        job = _Score(prompts, paths)
        self._submit(job)
        return job.future.result()

    def call(self, fn: Callable, *args):
        """``fn(*args)`` in the scheduler's thread, between two steps; its result (or its error)."""
        job = _Call(fn, args)
        self._submit(job)
        return job.future.result()

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)

    # -- the loop (scheduler thread) ---------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._waiting and not self._owners and not self._closed:
                    self._wake.wait()
                if self._closed and not self._waiting and not self._owners:
                    return
                admitted, rows = [], len(self._owners)
                for job in list(self._waiting):
                    need = 1 if isinstance(job, _Reasoning) else (job.width if isinstance(job, _Beams) else 0)
                    if rows and rows + need > self.max_rows:
                        continue            # waits for rows to free up
                    admitted.append(job)
                    self._waiting.remove(job)
                    rows += need
            try:
                with torch.no_grad():
                    self._step(admitted)
            except Exception as error:       # one bad step fails its jobs, never the thread
                for job in admitted + [owner for owner, row in self._owners if row == 0]:
                    if isinstance(job, (_Call, _Score)):
                        if not job.future.done():
                            job.future.set_exception(error)
                    else:
                        job.fail(error)
                self._reset()

    def _reset(self) -> None:
        self._cache, self._mask, self._positions, self._owners, self._feed = None, None, None, [], []

    def _step(self, admitted: list) -> None:
        calls = [job for job in admitted if isinstance(job, _Call)]
        for job in calls:
            self.stats["calls"] += 1
            try:
                job.future.set_result(job.fn(*job.args))
            except Exception as error:
                job.future.set_exception(error)
        scores = [job for job in admitted if isinstance(job, _Score)]
        if scores:
            self._score(scores)
        joining = [job for job in admitted if isinstance(job, _Job)]
        if joining:
            self._prefill(joining)
        if self._owners:
            self._decode()

    # -- prefix cache ----------------------------------------------------------------------------
    def _known(self, prompt: list[int]) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], int]:
        """Keys and values for the longest prefix of ``prompt`` this scheduler has computed (an
        earlier stage of the same reasoning, the item prompt after it, a prompt scored before),
        and that prefix's length (0: nothing useful cached). At least one token is left to run,
        since its logits are what the caller needs."""
        found = self.prefixes.lookup(prompt)
        if found is None:
            return [], 0
        layers, common = found
        common = min(common, len(prompt) - 1)
        if common < self.min_prefix:
            return [], 0
        self.stats["prefix_tokens"] += common
        return [(k[:, :, :common], v[:, :, :common]) for k, v in layers], common

    def _forward_ragged(self, pasts: list[list], inputs: list[list[int]], last_only: bool = False):
        """One forward for rows that each continue their own cached prefix (``pasts[i]``: layers of
        shape [1, heads, c_i, dim], or [] for none) with their own tokens ``inputs[i]``. Prefixes
        are left-padded and inputs right-padded to common widths; the attention mask hides every
        pad, and each row keeps its own positions. Returns (logits [rows, width, vocab], the
        forward's cache, the mask, and the columns where each row's tokens lie). ``last_only``:
        logits only at each row's last token ([rows, 1, vocab]), which is all a prefill needs."""
        rows = len(inputs)
        lengths = [layers[0][0].shape[2] if layers else 0 for layers in pasts]
        past_width, width = max(lengths), max(len(tokens) for tokens in inputs)
        ids = torch.full((rows, width), self.tokenizer.pad_id, dtype=torch.long, device=self.device)
        mask = torch.zeros((rows, past_width + width), dtype=torch.long, device=self.device)
        positions = torch.zeros((rows, width), dtype=torch.long, device=self.device)
        for row, (tokens, length) in enumerate(zip(inputs, lengths)):
            ids[row, :len(tokens)] = torch.tensor(tokens, device=self.device)
            mask[row, past_width - length:past_width + len(tokens)] = 1
            positions[row] = length + torch.arange(width, device=self.device)
        cache = None
        if past_width:
            template = next(layers for layers in pasts if layers)
            padded = []
            for n, (k0, v0) in enumerate(template):
                keys = [_pad_left(layers[n][0], past_width, 2) if layers else k0.new_zeros(1, *k0.shape[1:2], past_width, k0.shape[3])
                        for layers in pasts]
                values = [_pad_left(layers[n][1], past_width, 2) if layers else v0.new_zeros(1, *v0.shape[1:2], past_width, v0.shape[3])
                          for layers in pasts]
                padded.append((torch.cat(keys), torch.cat(values)))
            cache = DynamicCache(ddp_cache_data=padded)
        keep = (torch.tensor([[len(tokens) - 1] for tokens in inputs], device=self.device) if last_only else 0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, **with_cache(self.model, cache),
                         use_cache=True, logits_to_keep=keep)
        spans = [(past_width - length, past_width + len(tokens)) for tokens, length in zip(inputs, lengths)]
        return out.logits, cache_of(out), mask, spans

    def _run_prompts(self, prompts: list[list[int]]) -> list[tuple[torch.Tensor, list]]:
        """Each prompt's last logits ([vocab]) and its keys and values ([1, heads, length, dim] per
        layer), all in one forward: what the prefix cache knows of each is not run again."""
        known = [self._known(prompt) for prompt in prompts]
        logits, cache, _, spans = self._forward_ragged([layers for layers, _ in known],
                                                       [prompt[common:] for prompt, (_, common) in zip(prompts, known)],
                                                       last_only=True)
        layers = _layers(cache)
        results = []
        for row, (prompt, (_, common), (begin, end)) in enumerate(zip(prompts, known, spans)):
            own = [(k[row:row + 1, :, begin:end], v[row:row + 1, :, begin:end]) for k, v in layers]
            results.append((logits[row, -1], own))
            self.prefixes.store(prompt, own)
        self.stats["prefill_tokens"] += sum(len(p) for p in prompts)
        return results

    # -- scoring, prefill, decode -------------------------------------------------------------------
    def _score(self, jobs: list[_Score]) -> None:
        """Teacher-forced scores for every waiting request: the prompts in one forward (from the
        prefix cache where it can), then each prompt's candidates as one tree (:meth:`_score_tree`)."""
        self.stats["scores"] += 1
        pairs = [(list(prompt), [list(p) for p in paths]) for job in jobs for prompt, paths in zip(job.prompts, job.paths)]
        try:
            firsts = self._run_prompts([prompt for prompt, _ in pairs]) if pairs else []
            scores = [self._score_tree(last, layers, paths) for (_, paths), (last, layers) in zip(pairs, firsts)]
        except Exception as error:
            for job in jobs:
                job.future.set_exception(error)
            return
        at = 0
        for job in jobs:
            job.future.set_result(scores[at:at + len(job.prompts)])
            at += len(job.prompts)

    def _score_tree(self, last: torch.Tensor, layers: list, paths: list[list[int]]) -> list[float]:
        """Summed log-probabilities of ``paths`` after a prompt (its last logits and its keys and
        values). Every distinct proper prefix of the paths is one token of a single row after the
        prompt; a 4D mask lets each see the prompt, its own ancestors and itself, never a
        sibling, so the prompt's keys and values are used once instead of copied per candidate."""
        first = torch.log_softmax(last.float(), dim=-1)
        nodes: dict[tuple[int, ...], int] = {}
        for path in paths:
            for j in range(1, len(path)):
                nodes.setdefault(tuple(path[:j]), len(nodes))
        if not nodes:
            return [first[p[0]].item() for p in paths]
        length, count = layers[0][0].shape[2], len(nodes)
        mask = torch.zeros((1, 1, count, length + count), dtype=torch.bool, device=self.device)
        mask[..., :length] = True
        ids, positions = [], []
        for prefix, n in nodes.items():
            ids.append(prefix[-1])
            positions.append(length + len(prefix) - 1)
            for j in range(1, len(prefix) + 1):
                mask[0, 0, n, length + nodes[prefix[:j]]] = True
        out = self.model(input_ids=torch.tensor([ids], device=self.device), attention_mask=mask,
                         position_ids=torch.tensor([positions], device=self.device),
                         **with_cache(self.model, DynamicCache(ddp_cache_data=layers)), use_cache=True)
        logprobs = torch.log_softmax(out.logits[0].float(), dim=-1)
        return [first[p[0]].item() + sum(logprobs[nodes[tuple(p[:j])], p[j]].item() for j in range(1, len(p)))
                for p in paths]

    def _prefill(self, jobs: list[_Job]) -> None:
        """The newcomers' prompts (from the prefix cache where possible); their rows join the batch."""
        self.stats["prefills"] += 1
        joined = []
        for job, (last, layers) in zip(jobs, self._run_prompts([job.prompt for job in jobs])):
            tokens = job.start(last[None])
            if tokens:
                joined.append((job, tokens, layers))
        if joined:
            self._merge(joined)

    def _merge(self, joined: list[tuple[_Job, list[int], list]]) -> None:
        """Add each job's rows (its prompt's keys and values, once per row) to the running batch,
        everything left-padded to the widest row."""
        widths = [layers[0][0].shape[2] for _, _, layers in joined]
        width = max(widths + ([self._mask.shape[1]] if self._mask is not None else []))
        parts = [] if self._cache is None else [(_layers(self._cache), self._mask)]
        positions = [] if self._positions is None else [self._positions]
        for job, tokens, layers in joined:
            rows, length = len(tokens), layers[0][0].shape[2]
            parts.append(([(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in layers],
                          torch.ones(rows, length, dtype=torch.long, device=self.device)))
            positions.append(torch.full((rows,), length - 1, dtype=torch.long, device=self.device))
            self._owners += [(job, row) for row in range(rows)]
            self._feed += tokens
        self._cache = _growing_cache([layers for layers, _ in parts], width)
        self._mask = torch.cat([_pad_left(mask, width, 1) for _, mask in parts])
        self._positions = torch.cat(positions)

    def _decode(self) -> None:
        """One forward over every running row, then each job's postprocessing."""
        rows = len(self._owners)
        self.stats["steps"] += 1
        self.stats["rows"] += rows
        self.stats["max_rows"] = max(self.stats["max_rows"], rows)
        tokens = torch.tensor(self._feed, device=self.device)[:, None]
        mask = torch.cat([self._mask, torch.ones_like(self._mask[:, :1])], dim=1)
        positions = self._positions + 1
        out = self.model(input_ids=tokens, attention_mask=mask, position_ids=positions[:, None],
                         **with_cache(self.model, self._cache), use_cache=True)
        logits = out.logits[:, -1]
        layers = _layers(cache_of(out))
        keep, feed, owners = [], [], []
        start = 0
        while start < rows:
            job = self._owners[start][0]
            end = start
            while end < rows and self._owners[end][0] is job:
                end += 1
            survivors = job.step(logits[start:end])
            if not survivors and isinstance(job, _Reasoning) and not job.cancelled:
                # A finished reasoning's keys and values cover everything it fed (all but its
                # last token): the next stage and the item prompt start from them.
                fed = job.sequence[:-1]
                length = int(mask[start].sum())
                if length == len(fed):
                    self.prefixes.store(fed, [(k[start:start + 1, :, -length:], v[start:start + 1, :, -length:])
                                              for k, v in layers])
            for n, (parent, token) in enumerate(survivors):
                keep.append(start + parent)
                owners.append((job, n))
                feed.append(token)
            start = end
        if not keep:
            self._reset()
            return
        if keep == list(range(rows)):      # nobody left, nothing reordered: the cache stays as it is
            positions, cache = positions, cache_of(out)
        else:
            index = torch.tensor(keep, device=self.device)
            layers = [(k[index], v[index]) for k, v in layers]
            mask, positions, cache = mask[index], positions[index], None
            # Columns no remaining row attends to (their rows left) are dropped.
            first = int(mask.any(dim=0).nonzero()[0])
            if first:
                layers = [(k[:, :, first:], v[:, :, first:]) for k, v in layers]
                mask = mask[:, first:]
            cache = _growing_cache([layers], mask.shape[1])
        self._cache = cache
        self._mask, self._positions, self._owners, self._feed = mask, positions, owners, feed


class PrefixCache:
    """Keys and values of recent token sequences, for the longest shared prefix of a new prompt.

    A turn asks the model about the same context again and again: each reasoning stage continues
    the last, the item prompt continues the reasoning, candidates are scored after prompts that
    beam search has just run. Bounded by bytes, least recently used first out."""

    def __init__(self, max_bytes: int = 512 * 2**20):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[int, ...], tuple[np.ndarray, list]] = OrderedDict()
        self._bytes = 0

    @staticmethod
    def _size(layers) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers)

    def store(self, tokens: Sequence[int], layers: list) -> None:
        key = tuple(tokens)
        if key in self._entries:
            self._entries.move_to_end(key)
            return
        # Own copies: the batch's tensors are views of a larger cache that is about to be dropped.
        layers = [(k.contiguous().clone(), v.contiguous().clone()) for k, v in layers]
        self._entries[key] = (np.asarray(key, dtype=np.int64), layers)
        self._bytes += self._size(layers)
        while self._bytes > self.max_bytes and len(self._entries) > 1:
            _, (_, dropped) = self._entries.popitem(last=False)
            self._bytes -= self._size(dropped)

    def lookup(self, prompt: Sequence[int]) -> tuple[list, int] | None:
        """(layers, length of the prefix shared with ``prompt``) for the best entry, or None."""
        query = np.asarray(prompt, dtype=np.int64)
        best, best_key = 0, None
        for key, (tokens, _) in self._entries.items():
            m = min(len(tokens), len(query))
            if m <= best:
                continue
            differ = np.flatnonzero(tokens[:m] != query[:m])
            common = int(differ[0]) if len(differ) else m
            if common > best:
                best, best_key = common, key
        if best_key is None:
            return None
        self._entries.move_to_end(best_key)
        return self._entries[best_key][1], best


def wait_all(futures: Sequence[Future], timeout: float | None = None) -> list:
    """Results of many futures in order (the first error is raised)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    return [f.result(None if deadline is None else max(0.0, deadline - time.monotonic())) for f in futures]
