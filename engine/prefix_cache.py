"""Keys and values of recent token sequences, found by the hashes of their block-aligned prefixes.

A turn asks the model about the same context again and again: each reasoning stage continues the
last, the item prompt continues the reasoning, candidates are scored after prompts that beam search
has just run. :class:`PrefixCache` keeps what was computed so a new prompt runs only its new tail.

Lookup does not scan the entries. Every stored sequence is indexed under a chained hash of each of
its prefixes whose length is a multiple of ``block`` (hash of block 1, hash of that and block 2, …);
a prompt computes the same chain and walks it from its longest block down, so the first hit is the
entry sharing the most whole blocks. The exact shared length (which may run into a partial block)
is then counted against that one entry. Bounded by bytes, least recently used first out.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np


def block_hashes(tokens: Sequence[int], block: int) -> list[int]:
    """The chained hash of each prefix of ``tokens`` of length block, 2·block, …"""
    hashes, running = [], 0
    for end in range(block, len(tokens) + 1, block):
        running = hash((running, tuple(tokens[end - block:end])))
        hashes.append(running)
    return hashes


class PrefixCache:
    def __init__(self, max_bytes: int = 512 * 2**20, block: int = 16):
        self.max_bytes, self.block = max_bytes, block
        self._entries: OrderedDict[tuple[int, ...], tuple[np.ndarray, list, list[int]]] = OrderedDict()
        # hash of a block-aligned prefix -> the entries holding it (insertion-ordered, newest last)
        self._index: dict[int, dict[tuple[int, ...], None]] = {}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def _size(layers) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers)

    def store(self, tokens: Sequence[int], layers: list) -> None:
        """Keep ``layers`` (per layer keys and values, [1, heads, len(tokens), dim]) for ``tokens``."""
        key = tuple(tokens)
        if key in self._entries:
            self._entries.move_to_end(key)
            return
        # Own copies: the batch's tensors are views of a larger cache that is about to be dropped.
        layers = [(k.contiguous().clone(), v.contiguous().clone()) for k, v in layers]
        hashes = block_hashes(key, self.block)
        self._entries[key] = (np.asarray(key, dtype=np.int64), layers, hashes)
        for h in hashes:
            self._index.setdefault(h, {})[key] = None
        self._bytes += self._size(layers)
        while self._bytes > self.max_bytes and len(self._entries) > 1:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: tuple[int, ...]) -> None:
        _, layers, hashes = self._entries.pop(key)
        self._bytes -= self._size(layers)
        for h in hashes:
            holders = self._index.get(h)
            if holders is not None:
                holders.pop(key, None)
                if not holders:
                    del self._index[h]

    def lookup(self, prompt: Sequence[int]) -> tuple[list, int] | None:
        """(layers, length of the prefix shared with ``prompt``) for the entry sharing the most whole
        blocks with it, or None when none shares a block."""
        hashes = block_hashes(prompt, self.block)
        for n in range(len(hashes) - 1, -1, -1):
            holders = self._index.get(hashes[n])
            if holders:
                key = next(reversed(holders))
                break
        else:
            return None
        tokens, layers, _ = self._entries[key]
        query = np.asarray(prompt, dtype=np.int64)
        m = min(len(tokens), len(query))
        differ = np.flatnonzero(tokens[:m] != query[:m])
        common = int(differ[0]) if len(differ) else m
        if common == 0:          # a hash collision, not a shared prefix
            return None
        self._entries.move_to_end(key)
        return layers, common
