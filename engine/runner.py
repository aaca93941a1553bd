"""The model side of continuous batching: the running batch's keys and values, and the forwards.

:class:`ModelRunner` knows rows, not jobs. The scheduler (engine/scheduler.py) decides which rows
run; the runner

- **prefills** new prompts in one ragged forward, each continuing the longest prefix the
  :class:`~engine.prefix_cache.PrefixCache` knows;
- **joins** rows to the running batch: one left-padded cache where a row's attention mask hides
  the columns before its own prompt and each row keeps its own positions, so a row computes what it
  would alone (up to float rounding);
- **decodes** one token for every running row, and if that forward fails, runs each job's rows
  alone so a failure stays with the rows that cause it;
- **keeps** the rows that go on (reordered for beam search), dropping columns nobody attends to;
- **scores** candidate paths after a prompt with the one tree scorer (``engine.decoding.score_levels``).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer

from engine.decoding import ItemTree, cache_of, score_levels, with_cache
from engine.prefix_cache import PrefixCache


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

    def rewind(self, length: int) -> None:
        """Forget columns written after ``length`` (a forward that failed part way)."""
        self.length = length
        self._views()

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


class ModelRunner:
    def __init__(self, model, pad_id: int, prefix_cache_bytes: int = 512 * 2**20, min_prefix: int = 16):
        self.model, self.pad_id = model, pad_id
        self.device = next(model.parameters()).device
        self.prefixes = PrefixCache(prefix_cache_bytes, block=min_prefix)
        self.min_prefix = min_prefix        # shorter shared prefixes are not worth a separate forward
        self.stats = {"prefill_tokens": 0, "prefix_tokens": 0, "isolated_decodes": 0}
        self.reset()

    def reset(self) -> None:
        self._cache, self._pending = None, None
        self._mask: torch.Tensor | None = None          # [rows, columns], 0 where a row has no token
        self._positions: torch.Tensor | None = None     # [rows], the last fed token's position

    @property
    def rows(self) -> int:
        return 0 if self._mask is None else self._mask.shape[0]

    # -- prompts -------------------------------------------------------------------------------
    def _known(self, prompt: list[int]) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], int]:
        """Keys and values for the longest prefix of ``prompt`` computed before, and its length (0:
        nothing useful). At least one token is left to run, since its logits are what is needed."""
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
        pad, and each row keeps its own positions. Returns (logits, the forward's cache, the columns
        where each row's tokens lie). ``last_only``: logits only at each row's last token."""
        rows = len(inputs)
        lengths = [layers[0][0].shape[2] if layers else 0 for layers in pasts]
        past_width, width = max(lengths), max(len(tokens) for tokens in inputs)
        ids = torch.full((rows, width), self.pad_id, dtype=torch.long, device=self.device)
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
                keys = [_pad_left(layers[n][0], past_width, 2) if layers else k0.new_zeros(1, k0.shape[1], past_width, k0.shape[3])
                        for layers in pasts]
                values = [_pad_left(layers[n][1], past_width, 2) if layers else v0.new_zeros(1, v0.shape[1], past_width, v0.shape[3])
                          for layers in pasts]
                padded.append((torch.cat(keys), torch.cat(values)))
            cache = DynamicCache(ddp_cache_data=padded)
        keep = (torch.tensor([[len(tokens) - 1] for tokens in inputs], device=self.device) if last_only else 0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, **with_cache(self.model, cache),
                         use_cache=True, logits_to_keep=keep)
        spans = [(past_width - length, past_width + len(tokens)) for tokens, length in zip(inputs, lengths)]
        return out.logits, cache_of(out), spans

    def run_prompts(self, prompts: list[list[int]]) -> list[tuple[torch.Tensor, list]]:
        """Each prompt's last logits ([vocab]) and its keys and values ([1, heads, length, dim] per
        layer), all in one forward: what the prefix cache knows of each is not run again."""
        known = [self._known(prompt) for prompt in prompts]
        logits, cache, spans = self._forward_ragged([layers for layers, _ in known],
                                                    [prompt[common:] for prompt, (_, common) in zip(prompts, known)],
                                                    last_only=True)
        layers = _layers(cache)
        results = []
        for row, (prompt, (begin, end)) in enumerate(zip(prompts, spans)):
            own = [(k[row:row + 1, :, begin:end], v[row:row + 1, :, begin:end]) for k, v in layers]
            results.append((logits[row, -1], own))
            self.prefixes.store(prompt, own)
        self.stats["prefill_tokens"] += sum(len(p) for p in prompts)
        return results

    def score(self, prompts: list[list[int]], paths: list[list[list[int]]]) -> list[list[float]]:
        """Summed log-probabilities of ``paths[u]`` after ``prompts[u]``: the prompts in one forward
        (from the prefix cache where it can), then each prompt's candidates as one tree
        (``engine.decoding.score_levels``)."""
        out = []
        for (last, layers), candidates in zip(self.run_prompts(prompts) if prompts else [], paths):
            tree = ItemTree.of(range(len(candidates)), candidates)
            first = torch.log_softmax(last.float(), dim=-1)
            scores = [[first[path[0]].item() for path in tree.paths]]
            length = layers[0][0].shape[2]
            attention = torch.ones((1, length), dtype=torch.long, device=self.device)
            score_levels(self.model, DynamicCache(ddp_cache_data=layers), attention,
                         torch.tensor([length - 1], device=self.device), [tree], scores, self.pad_id)
            out.append(scores[0])
        return out

    # -- the running batch ---------------------------------------------------------------------
    def join(self, blocks: list[tuple[int, list]]) -> None:
        """Add rows to the running batch: per block, ``rows`` copies of one prompt's keys and values
        (a beam search's rows share its prompt), everything left-padded to the widest row."""
        widths = [layers[0][0].shape[2] for _, layers in blocks]
        width = max(widths + ([self._mask.shape[1]] if self._mask is not None else []))
        parts = [] if self._cache is None else [(_layers(self._cache), self._mask)]
        positions = [] if self._positions is None else [self._positions]
        for rows, layers in blocks:
            length = layers[0][0].shape[2]
            parts.append(([(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in layers],
                          torch.ones(rows, length, dtype=torch.long, device=self.device)))
            positions.append(torch.full((rows,), length - 1, dtype=torch.long, device=self.device))
        self._cache = _growing_cache([layers for layers, _ in parts], width)
        self._mask = torch.cat([_pad_left(mask, width, 1) for _, mask in parts])
        self._positions = torch.cat(positions)

    def _forward(self, tokens: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache):
        out = self.model(input_ids=tokens, attention_mask=mask, position_ids=positions[:, None],
                         **with_cache(self.model, cache), use_cache=True)
        return out.logits[:, -1], cache_of(out)

    def decode(self, feed: list[int], groups: list[range]) -> tuple[torch.Tensor, list, dict[int, BaseException]]:
        """One decode forward over every running row (``feed``: the token each row feeds). Returns
        the logits ([rows, vocab]), every row's keys and values after it, and the groups (indices
        into ``groups``, each a job's rows) whose rows could not run, with the error: when the
        batched forward fails, each group runs alone, so one job's failure is its own."""
        tokens = torch.tensor(feed, device=self.device)[:, None]
        mask = torch.cat([self._mask, torch.ones_like(self._mask[:, :1])], dim=1)
        positions = self._positions + 1
        lengths = [layer.length for layer in self._cache.layers]
        try:
            logits, cache = self._forward(tokens, mask, positions, self._cache)
            self._pending = (mask, positions, cache)
            return logits, _layers(cache), {}
        except Exception:
            if len(groups) == 1:
                raise
            for layer, length in zip(self._cache.layers, lengths):
                layer.rewind(length)
        self.stats["isolated_decodes"] += 1
        old = _layers(self._cache)
        logits = None
        layers = [(k.new_zeros(k.shape[0], k.shape[1], k.shape[2] + 1, k.shape[3]),
                   v.new_zeros(v.shape[0], v.shape[1], v.shape[2] + 1, v.shape[3])) for k, v in old]
        failed: dict[int, BaseException] = {}
        for g, rows in enumerate(groups):
            index = torch.tensor(list(rows), device=self.device)
            part = DynamicCache(ddp_cache_data=[(k[index], v[index]) for k, v in old])
            try:
                part_logits, part_cache = self._forward(tokens[index], mask[index], positions[index], part)
            except Exception as error:
                failed[g] = error
                continue
            if logits is None:
                logits = part_logits.new_zeros(len(feed), part_logits.shape[-1])
            logits[index] = part_logits
            for (k, v), (pk, pv) in zip(layers, _layers(part_cache)):
                k[index], v[index] = pk, pv
        if logits is None:
            raise next(iter(failed.values()))
        self._pending = (mask, positions, None)
        return logits, layers, failed

    def keep(self, rows: list[int], layers: list) -> None:
        """After :meth:`decode`: only ``rows`` go on, in this order (a beam's survivors follow their
        parents). Columns no remaining row attends to are dropped."""
        mask, positions, cache = self._pending
        self._pending = None
        if not rows:
            self.reset()
            return
        if cache is not None and rows == list(range(mask.shape[0])):
            # nobody left, nothing reordered: the cache grew in place and stays as it is
            self._cache, self._mask, self._positions = cache, mask, positions
            return
        index = torch.tensor(rows, device=self.device)
        layers = [(k[index], v[index]) for k, v in layers]
        mask, positions = mask[index], positions[index]
        first = int(mask.any(dim=0).nonzero()[0])
        if first:
            layers = [(k[:, :, first:], v[:, :, first:]) for k, v in layers]
            mask = mask[:, first:]
        self._cache = _growing_cache([layers], mask.shape[1])
        self._mask, self._positions = mask, positions

    def row_length(self, row: int) -> int:
        """How many tokens row ``row`` has fed, after :meth:`decode` (before :meth:`keep`)."""
        return int(self._pending[0][row].sum())

    def store_prefix(self, tokens: list[int], row: int, layers: list) -> None:
        """Keep a finished row's keys and values (after :meth:`decode`) for the prompts that continue it."""
        length = len(tokens)
        self.prefixes.store(tokens, [(k[row:row + 1, :, -length:], v[row:row + 1, :, -length:]) for k, v in layers])

