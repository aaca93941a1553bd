"""Where the item head learns: every item span the loss already trains outside a think block.

An item span ``<|item_begin|> <a_..> <b_..> <c_..> <|item_end|>`` whose SID tokens are training
targets is also a target for the item head: the hidden state at ``<|item_begin|>`` should give
that item (full cross-entropy over the catalog). That covers the answers' next items and, with
the history loss, each history item predicted from the ones listed before it (SASRec's dense
objective). Spans inside ``<think>…</think>`` are citations of the history, not predictions, and
are left out.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


class ItemTargets:
    def __init__(self, tokenizer, sid_codes: dict[str, Sequence[int]], item_ids: Sequence[str]):
        row_of = {str(item): row for row, item in enumerate(item_ids)}
        self.row_of_path = {tuple(tokenizer.sid_token_ids(codes)): row_of[str(item)]
                            for item, codes in sid_codes.items() if str(item) in row_of}
        self.begin, self.end = tokenizer.item_begin_id, tokenizer.item_end_id
        self.think, self.think_end = tokenizer.think_id, tokenizer.think_end_id
        self.max_depth = max((len(p) for p in self.row_of_path), default=0)

    def _outside_think(self, input_ids: torch.Tensor) -> torch.Tensor:
        inside = (input_ids == self.think).long().cumsum(1) > (input_ids == self.think_end).long().cumsum(1)
        return (input_ids == self.begin) & ~inside

    def _item_at(self, ids: list[int], col: int) -> int | None:
        path = []
        for token in ids[col + 1:col + 2 + self.max_depth]:
            if token == self.end:
                break
            path.append(token)
        return self.row_of_path.get(tuple(path))

    def all_spans(self, input_ids: torch.Tensor) -> dict[int, list[tuple[int, int]]]:
        """Every catalog item span outside think blocks, trained or not, per batch row in order:
        ``{row: [(position of <|item_begin|>, head row of the item), ...]}``."""
        rows, cols = torch.nonzero(self._outside_think(input_ids), as_tuple=True)
        ids = input_ids.tolist()
        spans: dict[int, list[tuple[int, int]]] = {}
        for r, c in zip(rows.tolist(), cols.tolist()):
            item = self._item_at(ids[r], c)
            if item is not None:
                spans.setdefault(r, []).append((c, item))
        return spans

    def find(self, input_ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(batch rows, positions of ``<|item_begin|>``, head rows of the items) for every trained span."""
        trained = torch.zeros_like(labels, dtype=torch.bool)
        trained[:, :-1] = labels[:, 1:] != -100
        rows, cols = torch.nonzero(self._outside_think(input_ids) & trained, as_tuple=True)
        keep_r, keep_c, items = [], [], []
        ids = input_ids.tolist()
        for r, c in zip(rows.tolist(), cols.tolist()):
            item = self._item_at(ids[r], c)
            if item is not None:
                keep_r.append(r)
                keep_c.append(c)
                items.append(item)
        device = input_ids.device
        return (torch.tensor(keep_r, dtype=torch.long, device=device), torch.tensor(keep_c, dtype=torch.long, device=device),
                torch.tensor(items, dtype=torch.long, device=device))

    def loss(self, head, hidden: torch.Tensor, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        """Mean cross-entropy of the head at the trained spans (None when the batch has none)."""
        rows, cols, items = self.find(input_ids, labels)
        if not len(items):
            return None
        return F.cross_entropy(head.logits(hidden[rows, cols]).float(), items)
