"""Semantic IDs as tokens, and the prefix trie that keeps generation inside the catalog.

An item's SID is one token per level: ``<a_12><b_200><c_33>`` (a ``<d_..>`` level appears only
when a dataset needs it to make every item unique). :class:`SIDTrie` holds every item's token
path; a :class:`TrieCursor` walks it one token at a time with the contract the decoders use
(``accept``, ``allowed``, ``done``, ``reset``). Excluded items (already shown, already seen) are
pruned from ``allowed()`` by subtree counts, so a cursor never offers a path that can only end in
an excluded item. A token outside ``allowed()`` kills the cursor: it then allows nothing, and the
caller ends the item with an error; it never falls back to unconstrained decoding.

Pure Python, no torch: ``python -m pytest tests/test_sid_trie.py``.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterable, Sequence

LEVEL_NAMES = "abcd"
ITEM_BEGIN = "<|item_begin|>"
ITEM_END = "<|item_end|>"
_SID_TOKEN = re.compile(r"<([a-d])_(\d+)>")


def sid_tokens(codes: Sequence[int]) -> list[str]:
    """(12, 200, 33) -> ['<a_12>', '<b_200>', '<c_33>']"""
    if len(codes) > len(LEVEL_NAMES):
        raise ValueError(f"at most {len(LEVEL_NAMES)} SID levels, got {len(codes)}")
    return [f"<{LEVEL_NAMES[level]}_{int(code)}>" for level, code in enumerate(codes)]


def sid_string(codes: Sequence[int]) -> str:
    return "".join(sid_tokens(codes))


def parse_sid(text: str) -> tuple[int, ...]:
    """'<a_12><b_200><c_33>' (item markers and spaces allowed) -> (12, 200, 33).

    Raises ValueError with the reason when the text is not a well-formed SID.
    """
    body = text.strip().removeprefix(ITEM_BEGIN).removesuffix(ITEM_END).replace(" ", "")
    tokens = _SID_TOKEN.findall(body)
    if not tokens or "".join(f"<{l}_{c}>" for l, c in tokens) != body:
        raise ValueError(f"not a SID: {text!r} (expected tokens like <a_12><b_200><c_33>)")
    for position, (level, _) in enumerate(tokens):
        if level != LEVEL_NAMES[position]:
            raise ValueError(f"not a SID: {text!r} (level {position + 1} should be <{LEVEL_NAMES[position]}_..>)")
    return tuple(int(code) for _, code in tokens)


def all_sid_token_strings(levels: int, codebook_size: int) -> list[str]:
    """Every SID token of a layout, level by level: what the tokenizer adds as special tokens."""
    return [f"<{LEVEL_NAMES[level]}_{code}>" for level in range(levels) for code in range(codebook_size)]


class _Node:
    __slots__ = ("children", "count", "item")

    def __init__(self) -> None:
        self.children: dict[Hashable, _Node] = {}
        self.count = 0          # items in this subtree
        self.item = None        # set on leaves


class SIDTrie:
    """Prefix trie over item token paths. Tokens may be strings or token ids."""

    def __init__(self, paths: Iterable[tuple[Hashable, Sequence[Hashable]]]):
        self.root = _Node()
        self._leaf_path: dict[Hashable, tuple] = {}
        for item, path in paths:
            path = tuple(path)
            if not path:
                raise ValueError(f"item {item!r} has an empty SID")
            if item in self._leaf_path:
                raise ValueError(f"item {item!r} appears twice")
            node = self.root
            for token in path:
                if node.item is not None:
                    raise ValueError(f"SID of {item!r} extends the SID of {node.item!r}")
                node = node.children.setdefault(token, _Node())
            if node.item is not None or node.children:
                raise ValueError(f"items {node.item!r} and {item!r} share the SID {path}")
            node.item = item
            self._leaf_path[item] = path
            node = self.root
            node.count += 1
            for token in path:
                node = node.children[token]
                node.count += 1

    def __len__(self) -> int:
        return self.root.count

    def __contains__(self, item: Hashable) -> bool:
        return item in self._leaf_path

    def path(self, item: Hashable) -> tuple:
        return self._leaf_path[item]

    def lookup(self, path: Sequence[Hashable]) -> Hashable | None:
        """The item at the end of ``path``, or None if the path is not a complete SID."""
        node = self.root
        for token in path:
            node = node.children.get(token)
            if node is None:
                return None
        return node.item

    def cursor(self, exclude: Iterable[Hashable] = ()) -> TrieCursor:
        return TrieCursor(self, exclude)

    def depth_stats(self) -> list[dict]:
        """Per depth: number of nodes and mean/max branching (for the catalog's SID tree view)."""
        stats, frontier = [], [self.root]
        while frontier:
            branching = [len(n.children) for n in frontier if n.children]
            if not branching:
                break
            stats.append({"depth": len(stats), "nodes": len(frontier),
                          "mean_branching": sum(branching) / len(branching), "max_branching": max(branching)})
            frontier = [child for n in frontier for child in n.children.values()]
        return stats


class TrieCursor:
    """A walk through the trie: the grammar state of one item being generated."""

    __slots__ = ("trie", "node", "prefix", "dead", "_excluded_below", "_excluded", "_blocked")

    def __init__(self, trie: SIDTrie, exclude: Iterable[Hashable] = ()):
        self.trie = trie
        # Excluded item count per node on their paths; a child whose whole subtree is excluded
        # is not offered. Keyed by node id since nodes are shared by all cursors.
        self._excluded_below: dict[int, int] = {}
        # Per node id: child tokens whose whole subtree is excluded. Kept as exclusions are added,
        # so allowed() copies the children's keys and filters only where something is blocked
        # (a 256-way root costs ~1 µs instead of a check per child).
        self._blocked: dict[int, set] = {}
        self._excluded: set = set()
        self.reset()
        for item in exclude:
            self.exclude(item)

    def reset(self) -> None:
        self.node = self.trie.root
        self.prefix: list = []
        self.dead = False

    def exclude(self, item: Hashable) -> None:
        """Never end a walk in ``item`` (unknown items are ignored: nothing to exclude)."""
        if item not in self.trie._leaf_path or item in self._excluded:
            return
        self._excluded.add(item)
        parent = self.trie.root
        self._excluded_below[id(parent)] = self._excluded_below.get(id(parent), 0) + 1
        for token in self.trie._leaf_path[item]:
            node = parent.children[token]
            excluded = self._excluded_below[id(node)] = self._excluded_below.get(id(node), 0) + 1
            if excluded >= node.count:
                self._blocked.setdefault(id(parent), set()).add(token)
            parent = node

    def _open(self, node: _Node) -> bool:
        return node.count > self._excluded_below.get(id(node), 0)

    def allowed(self) -> list:
        """Tokens that keep the walk on a path to at least one non-excluded item."""
        if self.dead or self.node.item is not None:
            return []
        blocked = self._blocked.get(id(self.node))
        if not blocked:
            return list(self.node.children)
        return [token for token in self.node.children if token not in blocked]

    def accept(self, token: Hashable) -> bool:
        """Advance by ``token``; returns False (and kills the cursor) if it is not allowed."""
        child = None if self.dead else self.node.children.get(token)
        if child is None or not self._open(child):
            self.dead = True
            return False
        self.node = child
        self.prefix.append(token)
        return True

    def done(self) -> bool:
        """True when the walk has reached a complete item."""
        return not self.dead and self.node.item is not None

    @property
    def item(self) -> Hashable | None:
        return self.node.item if self.done() else None

    def clone(self) -> TrieCursor:
        """An independent copy (beam search forks cursors)."""
        other = TrieCursor.__new__(TrieCursor)
        other.trie, other.node, other.prefix, other.dead = self.trie, self.node, list(self.prefix), self.dead
        # Shared on purpose: exclusions belong to the request (seen and shown items), not a beam.
        other._excluded_below, other._excluded, other._blocked = self._excluded_below, self._excluded, self._blocked
        return other


class ItemGate:
    """The gated constraint for one sequence being generated: text is free outside an item; after
    ``<|item_begin|>`` a cursor walks the trie until ``<|item_end|>``. Items finished in this
    sequence join the exclusions (no repeats). The transformers processor and the vLLM plugin both
    keep one gate per sequence, so the two backends constrain decoding the same way.
    """

    __slots__ = ("trie", "begin", "end", "exclude", "cursor", "items", "errors")

    def __init__(self, trie: SIDTrie, begin: Hashable, end: Hashable, exclude: Iterable[Hashable] = ()):
        self.trie, self.begin, self.end = trie, begin, end
        self.exclude = set(exclude)
        self.cursor: TrieCursor | None = None     # set while inside an item span
        self.items: list = []
        self.errors = 0                           # items closed on a dead or unfinished path

    def advance(self, token: Hashable) -> None:
        if self.cursor is None:
            if token == self.begin:
                self.cursor = self.trie.cursor(exclude=self.exclude)
            return
        if token == self.end:
            if self.cursor.done():
                self.items.append(self.cursor.item)
                self.exclude.add(self.cursor.item)
            else:
                self.errors += 1
            self.cursor = None
        else:
            self.cursor.accept(token)

    def resume(self, prompt: Sequence[Hashable]) -> ItemGate:
        """Start from a prompt that may end inside an item (``…<|item_begin|><a_3>``): replay the
        tokens after its last ``<|item_begin|>`` when no ``<|item_end|>`` follows it."""
        for start in range(len(prompt) - 1, -1, -1):
            if prompt[start] == self.end:
                break
            if prompt[start] == self.begin:
                for token in prompt[start:]:
                    self.advance(token)
                break
        return self

    def allowed(self) -> list | None:
        """None outside an item (free text; the caller bans SID tokens and ``<|item_end|>``);
        inside, the trie's tokens — or only ``<|item_end|>`` once the item is complete or dead."""
        if self.cursor is None:
            return None
        return self.cursor.allowed() or [self.end]
