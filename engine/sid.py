"""Semantic IDs as tokens, and the prefix trie that keeps generation inside the catalog.

An item's SID is one token per level: ``<a_12><b_200><c_33>`` (a ``<d_..>`` level appears only
when a dataset needs it to make every item unique). :class:`SIDTrie` holds every item's token
path; a :class:`TrieCursor` walks it one token at a time with the contract the decoders use
(``accept``, ``allowed``, ``done``, ``reset``). Excluded items (already shown, already seen) are
pruned from ``allowed()`` by subtree counts, so a cursor never offers a path that can only end in
an excluded item. A token outside ``allowed()`` kills the cursor: it then allows nothing, and the
caller ends the item with an error; it never falls back to unconstrained decoding.

Python and numpy, no torch: ``python -m pytest tests/test_sid_trie.py``.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence

import numpy as np

# The SID text format is data's (the build writes it, the catalog parses it); re-exported here so
# the engine's modules keep one import for everything SID.
from data.sid_text import (ITEM_BEGIN, ITEM_END, LEVEL_NAMES, all_sid_token_strings, parse_sid,  # noqa: F401
                           sid_string, sid_tokens)


class _Node:
    __slots__ = ("children", "count", "item", "index")

    def __init__(self, index: int = 0) -> None:
        self.children: dict[Hashable, _Node] = {}
        self.count = 0          # items in this subtree
        self.item = None        # set on leaves
        self.index = index      # position in the trie's node numbering (filters count per index)


class _SparseCounts(dict):
    """Allowed-item counts for only the nodes on a few items' paths; every other node counts 0."""

    def __missing__(self, index: int) -> int:
        return 0


class TrieFilter:
    """The items a request allows (a genre, a year range, ...), as allowed-item counts per trie
    node. A cursor with a filter treats every other item as excluded: it offers only tokens that
    lead to at least one allowed item, so every walk ends in an allowed item — or offers nothing
    when no allowed item is left (the caller then returns fewer items, never unfiltered ones).

    Built with numpy from the nodes on the allowed items' paths (one ``bincount``), so a filter
    holding 30 % of a 10^6-item catalog costs tens of milliseconds, not a Python loop per item.
    """

    __slots__ = ("trie", "counts", "size", "_open_children")

    def __init__(self, trie: SIDTrie, counts: Sequence[int]):
        # A list over all nodes (``restrict``) or a sparse mapping defaulting to 0 (``restrict_to``).
        self.trie, self.counts = trie, counts
        self.size = counts[trie.root.index]
        self._open_children: dict[int, list] = {}   # node index -> child tokens with allowed items

    def allows(self, item: Hashable) -> bool:
        leaf = self.trie._leaf_index.get(item)
        return leaf is not None and self.counts[leaf] > 0

    def open_children(self, node: _Node) -> list:
        """Child tokens of ``node`` that lead to an allowed item (cached per node: beams revisit)."""
        tokens = self._open_children.get(node.index)
        if tokens is None:
            counts = self.counts
            tokens = self._open_children[node.index] = [t for t, child in node.children.items()
                                                        if counts[child.index]]
        return tokens


class SIDTrie:
    """Prefix trie over item token paths. Tokens may be strings or token ids."""

    def __init__(self, paths: Iterable[tuple[Hashable, Sequence[Hashable]]]):
        self.root = _Node(0)
        self.num_nodes = 1
        self._leaf_path: dict[Hashable, tuple] = {}
        self._leaf_index: dict[Hashable, int] = {}      # item -> its leaf's node index (filters count per index)
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
                child = node.children.get(token)
                if child is None:
                    child = node.children[token] = _Node(self.num_nodes)
                    self.num_nodes += 1
                node = child
            if node.item is not None or node.children:
                raise ValueError(f"items {node.item!r} and {item!r} share the SID {path}")
            node.item = item
            self._leaf_path[item] = path
            node = self.root
            node.count += 1
            for token in path:
                node = node.children[token]
                node.count += 1
            self._leaf_index[item] = node.index

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

    def cursor(self, exclude: Iterable[Hashable] = (), restrict: TrieFilter | None = None) -> TrieCursor:
        return TrieCursor(self, exclude, restrict)

    @property
    def items(self) -> list:
        return list(self._leaf_path)

    def node_paths(self, items: Sequence[Hashable]) -> np.ndarray:
        """Node indices on each item's path (root first), one row per item in ``items`` order,
        padded with -1 where a SID is shorter; an item missing from the trie is a row of -1.
        Computed once per item order and reused by :meth:`restrict`."""
        depth = 1 + max((len(p) for p in self._leaf_path.values()), default=0)
        missing = [-1] * depth
        rows = []
        for item in items:
            path = self._leaf_path.get(item)
            if path is None:
                rows.append(missing)
                continue
            node = self.root
            row = [node.index]
            for token in path:
                node = node.children[token]
                row.append(node.index)
            rows.append(row + [-1] * (depth - len(row)))
        paths = np.array(rows, dtype=np.int64).reshape(len(rows), depth)
        return paths

    def restrict(self, node_paths: np.ndarray, mask: np.ndarray) -> TrieFilter:
        """A filter allowing the items whose rows of ``node_paths`` are True in ``mask``."""
        chosen = node_paths[np.asarray(mask, dtype=bool)].ravel()
        counts = np.bincount(chosen[chosen >= 0], minlength=self.num_nodes)
        return TrieFilter(self, counts.tolist())

    def restrict_to(self, items: Iterable[Hashable]) -> TrieFilter:
        """A filter allowing exactly ``items`` (unknown ones are ignored).

        Meant for small sets (a user's history, cited during reasoning): the counts are built from
        the items' own paths, sparse, so the cost is O(len(items) × depth) whatever the catalog
        size (a 25-item filter over 10^6 items: microseconds, not the ~130 ms a dense
        ``restrict`` pass costs). Large sets from facets go through :meth:`restrict`."""
        counts = _SparseCounts()
        for item in set(items):
            path = self._leaf_path.get(item)
            if path is None:
                continue
            node = self.root
            counts[node.index] += 1
            for token in path:
                node = node.children[token]
                counts[node.index] += 1
        return TrieFilter(self, counts)

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

    __slots__ = ("trie", "node", "prefix", "dead", "_excluded_below", "_excluded", "_blocked", "restrict")

    def __init__(self, trie: SIDTrie, exclude: Iterable[Hashable] = (), restrict: TrieFilter | None = None):
        self.trie = trie
        # Items outside the filter count as excluded: a node is open while it holds an allowed
        # item that is not excluded. Exclusions of items the filter already rules out are no-ops.
        self.restrict = restrict
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
        if self.restrict is not None and not self.restrict.allows(item):
            return
        self._excluded.add(item)
        parent = self.trie.root
        self._excluded_below[id(parent)] = self._excluded_below.get(id(parent), 0) + 1
        for token in self.trie._leaf_path[item]:
            node = parent.children[token]
            excluded = self._excluded_below[id(node)] = self._excluded_below.get(id(node), 0) + 1
            if excluded >= self._size(node):
                self._blocked.setdefault(id(parent), set()).add(token)
            parent = node

    def _size(self, node: _Node) -> int:
        """Items below ``node`` that this walk may end in, before exclusions."""
        return node.count if self.restrict is None else self.restrict.counts[node.index]

    def _open(self, node: _Node) -> bool:
        return self._size(node) > self._excluded_below.get(id(node), 0)

    def remaining(self) -> int:
        """How many items a walk from the root can still end in (filter and exclusions applied)."""
        root = self.trie.root
        return self._size(root) - self._excluded_below.get(id(root), 0)

    def allowed(self) -> list:
        """Tokens that keep the walk on a path to at least one allowed, non-excluded item."""
        if self.dead or self.node.item is not None:
            return []
        tokens = list(self.node.children) if self.restrict is None else self.restrict.open_children(self.node)
        blocked = self._blocked.get(id(self.node))
        if not blocked:
            return list(tokens)
        return [token for token in tokens if token not in blocked]

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
        other.restrict = self.restrict
        # Shared on purpose: exclusions belong to the request (seen and shown items), not a beam.
        other._excluded_below, other._excluded, other._blocked = self._excluded_below, self._excluded, self._blocked
        return other


class ItemGate:
    """The gated constraint for one sequence being generated: text is free outside an item; after
    ``<|item_begin|>`` a cursor walks the trie until ``<|item_end|>``. Items finished in this
    sequence join the exclusions (no repeats). The transformers processor and the vLLM plugin both
    keep one gate per sequence, so the two backends constrain decoding the same way.
    """

    __slots__ = ("trie", "begin", "end", "exclude", "cursor", "items", "errors", "restrict", "slots")

    def __init__(self, trie: SIDTrie, begin: Hashable, end: Hashable, exclude: Iterable[Hashable] = (),
                 restrict: TrieFilter | None = None, slots=None):
        self.trie, self.begin, self.end = trie, begin, end
        self.restrict = restrict
        # Reasoning only: an ``engine.slots.SlotState`` that holds the text between spans to the
        # catalog's vocabulary where the reasoning names interests, trends and attributes.
        self.slots = slots
        self.exclude = set(exclude)
        self.cursor: TrieCursor | None = None     # set while inside an item span
        self.items: list = []
        self.errors = 0                           # items closed on a dead or unfinished path

    def advance(self, token: Hashable) -> None:
        if self.cursor is None:
            if token == self.begin:
                scope = self.slots.span_filter() if self.slots is not None else None
                self.cursor = self.trie.cursor(exclude=self.exclude, restrict=scope or self.restrict)
            elif self.slots is not None:
                self.slots.advance(token)
            return
        if token == self.end:
            if self.cursor.done():
                self.items.append(self.cursor.item)
                self.exclude.add(self.cursor.item)
                if self.slots is not None:
                    self.slots.cited.add(self.cursor.item)
            else:
                self.errors += 1
            self.cursor = None
        else:
            self.cursor.accept(token)

    def resume(self, prompt: Sequence[Hashable]) -> ItemGate:
        """Start from a prompt that may end inside an item (``…<|item_begin|><a_3>``): replay the
        tokens after its last ``<|item_begin|>`` when no ``<|item_end|>`` follows it."""
        if self.slots is not None:
            self.slots.resume(prompt)
        for start in range(len(prompt) - 1, -1, -1):
            if prompt[start] == self.end:
                break
            if prompt[start] == self.begin:
                for token in prompt[start:]:
                    self.advance(token)
                break
        return self

    def banned(self) -> list:
        """Tokens free text must not take now: a level opener that goes back or repeats a level;
        ``<|item_begin|>`` in level 3 (it states, it does not cite) and when an interest's evidence
        has no history item left to cite (a span could only end empty)."""
        if self.cursor is not None or self.slots is None:
            return []
        out = self.slots.banned_sections()
        scope = self.slots.span_filter()
        if self.slots.section == "recommendation" or (
                scope is not None and self.trie.cursor(exclude=self.exclude, restrict=scope).remaining() == 0):
            out.append(self.begin)
        return out

    def allowed(self) -> list | None:
        """None outside an item (free text; the caller bans SID tokens and ``<|item_end|>``) unless a
        vocabulary slot is open (then its tokens); inside, the trie's tokens — or only ``<|item_end|>`` once the item is complete or dead."""
        if self.cursor is None:
            return self.slots.allowed() if self.slots is not None else None
        return self.cursor.allowed() or [self.end]
