"""Constrained decoding: the gated trie constraint for free generation, and beam search over the
SID steps that turns a prompt into a ranked list of distinct catalog items.

Gated constraint (:class:`GatedTrieProcessor`, a transformers ``LogitsProcessor``): text and
reasoning are free, SID tokens are not allowed outside an item; after ``<|item_begin|>`` only the
trie's allowed tokens are, then ``<|item_end|>``. Items seen in the history or already produced in
this reply are excluded. A dead prefix (nothing allowed) ends the item at once and is recorded as
an error — decoding never falls back to unconstrained sampling.

Beam search (:func:`beam_search_items`): the prompt ends with ``<|item_begin|>``; each step keeps the
``num_beams`` best partial SIDs by summed log-probability, every candidate token coming from its
beam's trie cursor. Because a full SID path is one item, the finished beams are distinct items;
the top ``k`` are the recommendation. The step itself (:func:`beam_step`) is shared with the batch
scheduler and the vLLM client, so every backend ranks by the same rule.

Scoring (:func:`score_trees`, :func:`score_levels`): given candidate or admissible items as a
prefix tree, each path's summed log-probability, one forward per tree level. Re-scoring candidates
(:func:`score_paths`), exact ranking and the scheduler's batched scoring all use it.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor

from engine.sid import ItemGate, SIDTrie, TrieCursor, TrieFilter
from engine.slots import SlotGrammar


# transformers 5 renamed the forward argument and output field ``past_key_values`` to ``cache``
# (the old name warns, and goes in 5.40). These two pass and read whichever the installed version has.
@functools.cache
def _cache_name(model_class: type) -> str:
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def with_cache(model, cache) -> dict:
    """The keyword argument that hands ``cache`` to ``model``'s forward."""
    return {_cache_name(type(model)): cache}


def cache_of(out):
    """The key/value cache a forward returned (``use_cache=True``)."""
    return out["cache"] if "cache" in out else out["past_key_values"]


def build_token_trie(tokenizer, sid_codes: dict[str, Sequence[int]]) -> SIDTrie:
    """The catalog's trie over *token ids* (what decoders see)."""
    return SIDTrie((item_id, tokenizer.sid_token_ids(codes)) for item_id, codes in sid_codes.items())


class GatedTrieProcessor(LogitsProcessor):
    """Masks logits so every ``<|item_begin|>…<|item_end|>`` span spells a real, allowed item."""

    def __init__(self, tokenizer, trie: SIDTrie, prompt_length: int, excludes: Sequence[set[Hashable]],
                 restricts: Sequence[TrieFilter | None] | None = None, slots: SlotGrammar | None = None,
                 cites: Sequence[set[Hashable] | None] | None = None):
        self.prompt_length = prompt_length
        self.end_id = tokenizer.item_end_id
        self.sid_token_ids = torch.tensor(sorted(tokenizer.sid_code_of), dtype=torch.long)
        restricts = list(restricts) if restricts is not None else [None] * len(excludes)
        # A reasoning row's slot walk knows the history it may cite (its restriction's items).
        self.gates = [ItemGate(trie, tokenizer.item_begin_id, tokenizer.item_end_id, e, r,
                               slots.state(c) if slots is not None else None)
                      for e, r, c in zip(excludes, restricts, cites or [None] * len(excludes))]
        self.processed = [0] * len(excludes)
        self.resumed = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # One gate per sequence: generate() must not widen the batch (num_beams or
        # num_return_sequences > 1 would pair rows with the wrong gates).
        if input_ids.shape[0] != len(self.gates):
            raise RuntimeError(f"{input_ids.shape[0]} sequences for {len(self.gates)} constraint gates")
        if not self.resumed:
            # A prompt may end inside a span (``…<|item_begin|>``): each gate starts where it stands.
            for row, gate in enumerate(self.gates):
                gate.resume(input_ids[row, :self.prompt_length].tolist())
            self.resumed = True
        generated = input_ids[:, self.prompt_length:]
        if self.sid_token_ids.device != scores.device:
            self.sid_token_ids = self.sid_token_ids.to(scores.device)   # once, not per row and step
        for row, gate in enumerate(self.gates):
            for token in generated[row, self.processed[row]:].tolist():
                gate.advance(token)
            self.processed[row] = generated.shape[1]
            keep = gate.allowed()
            if keep is None:
                # Outside an item: free text, but no stray SID tokens and no unopened item end.
                scores[row, self.sid_token_ids] = float("-inf")
                scores[row, self.end_id] = float("-inf")
                for token in gate.banned():
                    scores[row, token] = float("-inf")
                continue
            # Done or dead: only <|item_end|>; the gate counts a dead one as an error.
            mask = torch.full_like(scores[row], float("-inf"))
            mask[torch.tensor(keep, dtype=torch.long, device=scores.device)] = 0.0
            scores[row] = scores[row] + mask
        return scores


@dataclass
class RankedItem:
    item_id: Hashable
    score: float                 # summed log-probability of the SID tokens
    token_ids: tuple[int, ...]


def _left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(prompts), width), dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long, device=device)
        mask[row, width - len(prompt):] = 1
    return ids, mask


Beam = tuple[float, TrieCursor]          # (summed log-probability, where the beam stands in the trie)
TokenLogprobs = Callable[[int, list[int]], Iterable[tuple[int, float]]]


def beam_step(beams: Sequence[Beam], token_logprobs: TokenLogprobs, width: int) -> tuple[list[Beam], list[int]]:
    """One step of beam search over the trie, the one rule every decoder here uses (in-process,
    the batch scheduler, the vLLM client). Each unfinished beam grows by each token its cursor
    allows (``token_logprobs(n, allowed)``: (token, log-probability) pairs for beam ``n``); a
    finished beam (a shorter SID) is carried along unchanged; the ``width`` best by summed
    log-probability are kept. Returns the kept beams and, for each, the index of the beam it
    continues. A search starts from ``[(0.0, root)]``."""
    candidates = []
    for n, (score, cursor) in enumerate(beams):
        if cursor.done():
            candidates.append((score, n, None))
            continue
        allowed = cursor.allowed()
        if allowed:
            candidates.extend((score + lp, n, token) for token, lp in token_logprobs(n, allowed))
    candidates.sort(key=lambda c: -c[0])
    kept, parents = [], []
    for score, n, token in candidates[:width]:
        cursor = beams[n][1].clone()
        if token is not None:
            cursor.accept(token)
        kept.append((score, cursor))
        parents.append(n)
    return kept, parents


def beams_done(beams: Sequence[Beam]) -> bool:
    return all(cursor.done() for _, cursor in beams)


def finished_items(beams: Sequence[Beam], k: int) -> list[RankedItem]:
    """The ``k`` best finished beams as ranked items (distinct: a full SID path is one item)."""
    finished = sorted(((score, c) for score, c in beams if c.done()), key=lambda sc: -sc[0])
    return [RankedItem(c.item, float(score), tuple(c.prefix)) for score, c in finished[:k]]


def row_logprobs(logprobs: torch.Tensor, first_row: int = 0) -> TokenLogprobs:
    """``token_logprobs`` for beams whose log-probabilities are rows ``first_row + n`` of a tensor."""
    def pairs(n: int, allowed: list[int]) -> Iterable[tuple[int, float]]:
        index = torch.tensor(allowed, device=logprobs.device)
        return zip(allowed, logprobs[first_row + n, index].tolist())
    return pairs


@torch.no_grad()
def _beam_chunk(model, prompts, trie: SIDTrie, excludes, num_beams: int, k: int, pad_id: int,
                filters: Sequence[TrieFilter | None]) -> list[list[RankedItem]]:
    device = next(model.parameters()).device
    ids, attention = _left_pad(prompts, pad_id, device)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=True)
    cache, logprobs = cache_of(out), torch.log_softmax(out.logits[:, -1].float(), dim=-1)
    last_position = positions[:, -1]
    # Each user's beams are consecutive rows of the batch, from ``first[u]`` on (one prompt row at first).
    beams = [[(0.0, trie.cursor(exclude=excludes[u], restrict=filters[u]))] for u in range(len(prompts))]
    first = list(range(len(prompts)))
    while True:
        parents, starts = [], []
        for u in range(len(beams)):
            beams[u], picked = beam_step(beams[u], row_logprobs(logprobs, first[u]), num_beams)
            starts.append(len(parents))
            parents += [first[u] + p for p in picked]
        first = starts
        if all(beams_done(b) for b in beams):
            break
        index = torch.tensor(parents, device=device)
        cache.batch_select_indices(index)
        attention = torch.cat([attention[index], torch.ones_like(attention[index][:, :1])], dim=1)
        last_position = last_position[index] + 1
        tokens = torch.tensor([[c.prefix[-1]] for user in beams for _, c in user], device=device)
        out = model(input_ids=tokens, attention_mask=attention, position_ids=last_position[:, None],
                    **with_cache(model, cache), use_cache=True)
        cache, logprobs = cache_of(out), torch.log_softmax(out.logits[:, -1].float(), dim=-1)
    return [finished_items(b, k) for b in beams]


def beam_search_items(model, prompts: Sequence[Sequence[int]], trie: SIDTrie,
                      excludes: Sequence[set[Hashable]], pad_id: int, k: int = 10,
                      num_beams: int | None = None, batch_size: int = 16,
                      filters: Sequence[TrieFilter | None] | None = None) -> list[list[RankedItem]]:
    """Top-``k`` distinct catalog items per prompt (each prompt ends with ``<|item_begin|>``).
    ``filters`` (one per prompt, or None) restrict the items to those a request allows: fewer
    than ``k`` come back when fewer exist, never items outside the filter."""
    num_beams = max(k, num_beams or k)
    filters = list(filters) if filters is not None else [None] * len(prompts)
    was_training = model.training
    model.eval()
    results: list[list[RankedItem]] = []
    try:
        for start in range(0, len(prompts), batch_size):
            results += _beam_chunk(model, prompts[start:start + batch_size], trie,
                                   excludes[start:start + batch_size], num_beams, k, pad_id,
                                   filters[start:start + batch_size])
    finally:
        model.train(was_training)
    return results


@torch.no_grad()
def score_paths(model, prompts: Sequence[Sequence[int]], paths: Sequence[Sequence[Sequence[int]]], pad_id: int,
                batch_size: int = 16, head=None, head_weight: float = 0.0,
                items: Sequence[Sequence[Hashable]] | None = None) -> list[list[float]]:
    """Summed log-probability of each candidate token path after its prompt (teacher forcing):
    ``paths[u]`` are user ``u``'s candidates (SIDs, ending where an item ends). The numbers are
    the ones beam search ranks by, so beams and re-scored candidates compare directly. The
    candidates are a small :class:`ItemTree` scored by :func:`score_trees`, the one tree scorer.
    With an item ``head`` and ``head_weight``, each candidate (``items[u]``, parallel to ``paths``)
    also gets ``head_weight`` × the head's log-probability."""
    with_head = head is not None and bool(head_weight)
    if with_head and items is None:
        raise ValueError("score_paths: the item head needs the candidates' item ids")
    trees = [ItemTree.of(items[u] if with_head else range(len(cands)), cands) for u, cands in enumerate(paths)]
    was_training = model.training
    model.eval()
    try:
        out: list[list[float]] = []
        for start in range(0, len(prompts), batch_size):
            out += score_trees(model, prompts[start:start + batch_size], trees[start:start + batch_size], pad_id,
                               head if with_head else None, head_weight if with_head else 0.0)
        return out
    finally:
        model.train(was_training)


@torch.no_grad()
def generate_reasoning(model, tokenizer, prompts: Sequence[Sequence[int]], trie: SIDTrie,
                       excludes: Sequence[set[Hashable]], max_new_tokens: int = 160,
                       do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                       batch_size: int = 32, stop_ids: Sequence[int] | None = None,
                       cites: Sequence[set[Hashable] | None] | None = None,
                       slots: SlotGrammar | None = None) -> list[list[int]]:
    """Generate each prompt's reasoning up to and including ``</think>`` (gated constraint on), or
    up to the first of ``stop_ids``. ``cites`` (one per prompt): the items its spans may name (the
    user's history: reasoning can cite nothing else), each at most once. ``slots``: the catalog
    vocabulary the reasoning names interests and attributes with (``engine/slots.py``)."""
    restricts = [trie.restrict_to(c) if c is not None else None for c in cites] if cites is not None else None
    from transformers import GenerationConfig, LogitsProcessorList

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    outputs: list[list[int]] = []
    stops = list(stop_ids) if stop_ids else [tokenizer.think_end_id, tokenizer.end_id]
    # Every decoding setting explicit: one left as None is filled from the checkpoint's
    # generation_config (top_k would become 50, num_beams could widen the batch past the gates).
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=do_sample, num_beams=1,
                              num_return_sequences=1, temperature=temperature if do_sample else 1.0,
                              # top_k 0 = no top-k cut when sampling; greedy ignores it (50 is the
                              # library default, which keeps transformers from warning about it).
                              top_p=top_p if do_sample else 1.0, top_k=0 if do_sample else 50,
                              eos_token_id=stops, pad_token_id=tokenizer.pad_id)
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            ids, attention = _left_pad(chunk, tokenizer.pad_id, device)
            gate = GatedTrieProcessor(tokenizer, trie, ids.shape[1], excludes[start:start + batch_size],
                                      restricts[start:start + batch_size] if restricts is not None else None,
                                      slots, cites[start:start + batch_size] if cites is not None else None)
            generated = model.generate(input_ids=ids, attention_mask=attention, generation_config=config,
                                       logits_processor=LogitsProcessorList([gate]))
            for row in generated[:, ids.shape[1]:].tolist():
                kept = []
                for token in row:
                    if token == tokenizer.pad_id:
                        break
                    kept.append(token)
                    if token in stops:
                        break
                outputs.append(kept)
    finally:
        model.train(was_training)
    return outputs


@torch.no_grad()
def stream_reasoning(model, tokenizer, prompt: Sequence[int], trie: SIDTrie, exclude: set[Hashable],
                     max_new_tokens: int = 160, temperature: float = 0.0, stop_ids: Sequence[int] | None = None,
                     cite: set[Hashable] | None = None, slots: SlotGrammar | None = None):
    """Yield reasoning token ids one at a time (greedy, or sampled with ``temperature`` > 0) under
    the gated constraint, stopping after ``</think>`` or ``<|end|>``; a KV cache keeps each step
    to one token of work, which is what makes the first token arrive fast."""
    device = next(model.parameters()).device
    stops = set(stop_ids) if stop_ids else {tokenizer.think_end_id, tokenizer.end_id}
    gate = GatedTrieProcessor(tokenizer, trie, len(prompt), [set(exclude)],
                              [trie.restrict_to(cite) if cite is not None else None], slots, [cite])
    ids = torch.tensor([list(prompt)], device=device)
    out = model(input_ids=ids, use_cache=True)
    cache, sequence = cache_of(out), ids
    for _ in range(max_new_tokens):
        scores = gate(sequence, out.logits[:, -1].float())
        if temperature > 0:
            token = int(torch.multinomial(torch.softmax(scores / temperature, dim=-1), 1))
        else:
            token = int(scores.argmax(dim=-1))
        yield token
        if token in stops:
            return
        step = torch.tensor([[token]], device=device)
        sequence = torch.cat([sequence, step], dim=1)
        out = model(input_ids=step, **with_cache(model, cache), use_cache=True)
        cache = cache_of(out)


# -- exact ranking of the admissible catalog ----------------------------------------------------

@dataclass
class ItemTree:
    """The admissible items of one request (unseen, inside its filter) as a prefix tree: ``levels[d]``
    lists the distinct non-leaf prefixes of length ``d + 1``, each needing one forward step to give
    its children's log-probabilities; ``items`` and ``paths`` every admissible item and its SID."""
    items: list
    paths: list[tuple[int, ...]]
    levels: list[list[tuple[int, ...]]]

    @property
    def steps(self) -> int:
        return sum(len(level) for level in self.levels)

    @classmethod
    def of(cls, items: Sequence, paths: Sequence[Sequence[int]]) -> ItemTree:
        """The tree of just these items (candidates to score, not a whole admissible set)."""
        paths = [tuple(p) for p in paths]
        depth = max((len(p) for p in paths), default=0)
        levels = [list(dict.fromkeys(p[:d] for p in paths if len(p) > d)) for d in range(1, depth)]
        return cls(list(items), paths, [level for level in levels if level])


def admissible_tree(trie: SIDTrie, exclude: set[Hashable], restrict: TrieFilter | None,
                    max_steps: int) -> ItemTree | None:
    """The admissible items' tree, or None when it needs more than ``max_steps`` forward steps (the
    walk stops there, so the check costs at most that much)."""
    items, paths, levels = [], [], []
    frontier = [trie.cursor(exclude=exclude, restrict=restrict)]
    steps, depth = 0, 0
    while frontier:
        deeper = []
        for cursor in frontier:
            for token in cursor.allowed():
                child = cursor.clone()
                child.accept(token)
                if child.done():
                    items.append(child.item)
                    paths.append(tuple(child.prefix))
                else:
                    deeper.append(child)
        if deeper:
            steps += len(deeper)
            if steps > max_steps:
                return None
            levels.append([tuple(c.prefix) for c in deeper])
        frontier, depth = deeper, depth + 1
    return ItemTree(items, paths, levels)


def _tree_chunk_mask(attention: torch.Tensor, ancestors: torch.Tensor, cached: int, width: int,
                     dtype: torch.dtype) -> torch.Tensor:
    """Additive 4-D mask for ``width`` tree tokens after ``cached`` cached positions: each token sees
    its row's real prompt tokens (``attention``), its ancestors' cached positions (``ancestors``,
    (B, width, depth), -1 for none) and itself; nothing else (not its siblings)."""
    rows = attention.shape[0]
    allowed = torch.zeros(rows, width, cached + width, dtype=torch.bool, device=attention.device)
    allowed[:, :, :attention.shape[1]] = attention.bool()[:, None, :]
    if ancestors.shape[-1]:
        index = ancestors.clamp(min=0)
        allowed.scatter_(2, index, ancestors >= 0)
        allowed[:, :, 0] |= attention.bool()[:, 0:1].expand(rows, width)   # undo a scatter of False at 0
    diagonal = torch.arange(width, device=attention.device)
    allowed[:, diagonal, cached + diagonal] = True
    mask = torch.zeros(allowed.shape, dtype=dtype, device=attention.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


@torch.no_grad()
def score_trees(model, prompts: Sequence[Sequence[int]], trees: Sequence[ItemTree], pad_id: int,
                head=None, head_weight: float = 0.0, max_mask_cells: int = 1 << 25,
                parts: bool = False, extra: int = 0, admissible: Sequence | None = None,
                path_of: Callable | None = None) -> list[list[float]]:
    """Every admissible item's full SID log-probability after its prompt (each prompt ends with
    ``<|item_begin|>``), plus ``head_weight`` × the item head's log-probability when there is a head.

    One forward over the prompts; then :func:`score_levels`, one forward per tree level for all
    prompts at once.
    ``parts``: return (SID scores, head log-probabilities) per prompt instead of their weighted sum.
    ``extra`` > 0 (with a head): from the same prompt pass, the head's ``extra`` best items that
    ``admissible[u]`` accepts join tree ``u`` (``trees`` is a list, its entries replaced; ``path_of(item)``
    gives a SID) and are scored with the rest.
    """
    from engine.item_head import last_hidden

    device = next(model.parameters()).device
    lm_head = model.get_output_embeddings()
    ids, attention = _left_pad(prompts, pad_id, device)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    hidden, out = last_hidden(model, input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=True)
    cache = cache_of(out)
    first = torch.log_softmax(lm_head(hidden[:, -1]).float(), dim=-1)
    # The head's log-probabilities, once: they pick the extra candidates and score every item.
    head_lp = head.log_probs(hidden[:, -1]) if head is not None and (extra or head_weight or parts) else None
    if head_lp is not None and extra:
        for u, row in enumerate(torch.argsort(head_lp, dim=-1, descending=True).tolist()):
            tree, ok, picked = trees[u], admissible[u], []
            have = set(tree.items)
            for column in row:
                item = head.item_ids[column]
                if item not in have and ok(item):
                    picked.append(item)
                    if len(picked) == extra:
                        break
            trees[u] = ItemTree.of(tree.items + picked, tree.paths + [tuple(path_of(i)) for i in picked])
    scores = [[first[u, path[0]].item() for path in tree.paths] for u, tree in enumerate(trees)]
    head_scores = [[0.0] * len(tree.items) for tree in trees]
    if head_lp is not None and (head_weight or parts):
        for u, tree in enumerate(trees):
            rows = torch.tensor([head.row_of[str(i)] for i in tree.items], dtype=torch.long, device=device)
            head_scores[u] = head_lp[u, rows].tolist() if len(rows) else []
    score_levels(model, cache, attention, positions[:, -1], trees, scores, pad_id, max_mask_cells)
    if parts:
        return list(zip(scores, head_scores))
    return [[s + head_weight * h for s, h in zip(sid, extra)] for sid, extra in zip(scores, head_scores)]


@torch.no_grad()
def score_levels(model, cache, attention: torch.Tensor, last_position: torch.Tensor, trees: Sequence[ItemTree],
                 scores: list[list[float]], pad_id: int, max_mask_cells: int = 1 << 25) -> None:
    """Adds to ``scores[u]`` (each tree path's first-token log-probability) the log-probabilities of
    the rest of each path: one forward per tree level for all prompts at once, each distinct prefix
    one token that attends to its prompt's cached keys and values (``cache``, real columns marked by
    ``attention``, the prompt's last position ``last_position``) and to its own ancestors (tree
    attention through a 4-D mask), so no prompt cache is copied. The deepest level is not kept in
    the cache (nothing attends to it); levels wider than the mask budget go in chunks. The batch
    scheduler calls this with a prompt from its prefix cache."""
    from engine.item_head import last_hidden

    device = attention.device
    lm_head = model.get_output_embeddings()
    dtype = next(model.parameters()).dtype
    num_levels = max((len(t.levels) for t in trees), default=0)
    where: list[dict[tuple, int]] = [dict() for _ in trees]      # prefix -> its cached position
    users = len(trees)
    for depth in range(num_levels):
        level = [t.levels[depth] if depth < len(t.levels) else [] for t in trees]
        width = max(len(nodes) for nodes in level)
        if not width:
            break
        keep = depth + 1 < num_levels
        # Which item's score each node's children feed: (user, item index, node column, child token).
        feeds = [[] for _ in range(users)]
        column_of = [{prefix: n for n, prefix in enumerate(nodes)} for nodes in level]
        for u, tree in enumerate(trees):
            for n, path in enumerate(tree.paths):
                if len(path) > depth + 1:
                    feeds[u].append((n, column_of[u][path[:depth + 1]], path[depth + 1]))
        chunk = max(1, min(width, max_mask_cells // max(1, users * (cache.get_seq_length() + width))))
        for start in range(0, width, chunk):
            stop = min(width, start + chunk)
            cached = cache.get_seq_length()
            tokens = torch.full((users, stop - start), pad_id, dtype=torch.long, device=device)
            ancestors = torch.full((users, stop - start, max(depth, 0)), -1, dtype=torch.long, device=device)
            for u, nodes in enumerate(level):
                for c, prefix in enumerate(nodes[start:stop]):
                    tokens[u, c] = prefix[-1]
                    for d in range(depth):
                        ancestors[u, c, d] = where[u][prefix[:d + 1]]
            mask = _tree_chunk_mask(attention, ancestors, cached, stop - start, dtype)
            node_positions = (last_position + depth + 1)[:, None].expand(users, stop - start)
            step_hidden, step_out = last_hidden(model, input_ids=tokens, attention_mask=mask, position_ids=node_positions,
                                                use_cache=True, **with_cache(base_decoder(model), cache))
            cache = cache_of(step_out)
            logprobs = torch.log_softmax(lm_head(step_hidden).float(), dim=-1)
            for u in range(users):
                picked = [(n, c - start, t) for n, c, t in feeds[u] if start <= c < stop]
                if picked:
                    cols = torch.tensor([c for _, c, _ in picked], device=device)
                    toks = torch.tensor([t for _, _, t in picked], device=device)
                    for (n, _, _), lp in zip(picked, logprobs[u, cols, toks].tolist()):
                        scores[u][n] += lp
            if keep:
                for u, nodes in enumerate(level):
                    for c, prefix in enumerate(nodes[start:stop]):
                        where[u][prefix] = cached + c
                # Later levels attend over these cached columns: the mask's prompt part keeps its width.
                attention = torch.cat([attention, torch.zeros(users, stop - start, dtype=attention.dtype,
                                                              device=device)], dim=1)
            else:
                cache.crop(-(stop - start))       # a negative count drops that many (transformers 5)


def base_decoder(model):
    from engine.item_head import base_of

    return base_of(model).get_decoder()

