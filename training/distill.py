"""Distillation from the collaborative teacher (SASRec) into the language model.

At every trained next-item span (the ones :class:`training.item_targets.ItemTargets` finds), the
teacher reads the items listed before it in the same example and gives a distribution over the
catalog, with those items masked out (they are seen). Two soft targets come from it:

- **per SID level**: the target for the next code is the teacher's probability mass under each
  child of the true prefix (items whose first ``l`` codes match the true item's), renormalised;
  the student's log-softmax over the vocabulary at that position is scored against it;
- **the item head** (when the model has one): the teacher's distribution itself.

The loss adds ``weight`` × the soft cross-entropies to the hard ones (the one-hot targets stay at
weight 1), so ``weight`` is the mixing weight of soft against hard. ``temperature`` softens the
teacher (``softmax(scores / T)``).

Only rows whose example comes from a task in ``tasks`` are distilled: the user-sequence windows,
where the next items are the user's real next items. Answers that follow a request (steering) or a
reasoning trace are not what an unconditioned teacher predicts, so they keep their hard targets.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

DISTILLED_TASKS = frozenset({"sequence_window"})


class Distiller:
    def __init__(self, tokenizer, sid_codes: dict[str, Sequence[int]], item_ids: Sequence[str], teacher,
                 weight: float = 0.5, temperature: float = 1.0, tasks: frozenset[str] = DISTILLED_TASKS):
        if weight < 0 or temperature <= 0:
            raise ValueError(f"distillation needs weight >= 0 and temperature > 0 (got {weight}, {temperature})")
        self.weight, self.temperature, self.tasks = weight, temperature, tasks
        self.teacher = teacher
        self.item_ids = [str(i) for i in item_ids]
        known = [i for i in self.item_ids if i in teacher.item_row]
        if len(known) < len(self.item_ids):
            missing = sorted(set(self.item_ids) - set(known))[:5]
            raise ValueError(f"the teacher does not know {len(self.item_ids) - len(known)} catalog items "
                             f"(e.g. {missing}): it was trained on another dataset build")
        # Teacher score column of each student row (teacher rows are 1-based, 0 is padding).
        self.teacher_col = torch.tensor([teacher.item_row[i] for i in self.item_ids], dtype=torch.long)
        depth = max(len(sid_codes[i]) for i in self.item_ids)
        paths = [tokenizer.sid_token_ids(sid_codes[i]) for i in self.item_ids]
        if any(len(p) != depth for p in paths):
            raise ValueError("distillation needs SIDs of one length")
        self.paths = torch.tensor(paths, dtype=torch.long)            # (items, depth) token ids
        self.depth = depth

    def teacher_probs(self, prefixes: list[list[str]], device) -> torch.Tensor:
        """(len(prefixes), items) teacher probabilities in the student's item order, seen items 0."""
        network = self.teacher.network
        was_training = network.training
        network.eval()
        with torch.no_grad():
            states = network(self.teacher.encode(prefixes))[:, -1]
            scores = network.item_scores(states).float()[:, self.teacher_col.to(states.device)].to(device)
        network.train(was_training)
        row_of = {item: row for row, item in enumerate(self.item_ids)}
        for n, prefix in enumerate(prefixes):
            seen = [row_of[i] for i in prefix if i in row_of]
            if seen:
                scores[n, seen] = float("-inf")
        return torch.softmax(scores / self.temperature, dim=-1)

    def loss(self, targets, logits: torch.Tensor, hidden: torch.Tensor, input_ids: torch.Tensor,
             labels: torch.Tensor, rows_allowed: torch.Tensor, head=None) -> torch.Tensor | None:
        """``weight`` × (mean soft CE over SID levels + soft CE of the head), over the trained spans of
        allowed rows that have at least one item before them; None when there are none."""
        spans = targets.all_spans(input_ids)
        trained_r, trained_c, _ = targets.find(input_ids, labels)
        trained = set(zip(trained_r.tolist(), trained_c.tolist()))
        allowed = rows_allowed.tolist()
        prefixes, where, items = [], [], []
        for row, row_spans in spans.items():
            if not allowed[row]:
                continue
            for n, (col, item_row) in enumerate(row_spans):
                if n == 0 or (row, col) not in trained:
                    continue
                prefixes.append([self.item_ids[r] for _, r in row_spans[:n]])
                where.append((row, col))
                items.append(item_row)
        if not prefixes:
            return None
        device = logits.device
        q = self.teacher_probs(prefixes, device)                                  # (m, items)
        rows = torch.tensor([r for r, _ in where], device=device)
        cols = torch.tensor([c for _, c in where], device=device)
        true = self.paths.to(device)[torch.tensor(items, device=device)]         # (m, depth)
        paths = self.paths.to(device)
        total = logits.new_zeros((), dtype=torch.float32)
        matches = torch.ones_like(q, dtype=torch.bool)
        for level in range(self.depth):
            # Mass under each child of the true prefix at this level.
            mass = q * matches
            target = torch.zeros(len(q), logits.shape[-1], device=device)
            target.scatter_add_(1, paths[:, level].expand(len(q), -1), mass)
            norm = target.sum(-1, keepdim=True)
            keep = norm.squeeze(-1) > 0
            log_p = F.log_softmax(logits[rows, cols + level].float(), dim=-1)
            soft = -(target / norm.clamp_min(1e-12) * log_p).sum(-1)
            total = total + (soft * keep).sum() / keep.sum().clamp_min(1) / self.depth
            matches = matches & (paths[:, level].unsqueeze(0) == true[:, level:level + 1])
        if head is not None:
            head_log_p = head.log_probs(hidden[rows, cols])
            total = total - (q * head_log_p.masked_fill(q == 0, 0.0)).sum(-1).mean()
        return self.weight * total
