"""Distillation from the SASRec teacher (training/distill.py): the per-level soft targets are the
teacher's mass under each child prefix, and pre-training with a teacher logs the soft loss."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn


class Tok:
    item_begin_id, item_end_id, think_id, think_end_id = 1, 2, 3, 4

    @staticmethod
    def sid_token_ids(codes):
        return [10 + codes[0], 20 + codes[1]]


class FixedTeacher:
    """A teacher whose scores do not depend on the prefix: rows a, b, c score 0, 1, 2."""

    item_row = {"a": 1, "b": 2, "c": 3}

    def __init__(self):
        self.network = nn.Module()
        self.network.forward = lambda rows: torch.zeros(len(rows), rows.shape[1], 1)
        self.network.item_scores = lambda states: torch.tensor([[-50.0, 0.0, 1.0, 2.0]]).expand(len(states), -1)

    def encode(self, prefixes):
        return torch.zeros(len(prefixes), 3, dtype=torch.long)


def test_soft_targets_are_the_teachers_mass_under_each_child_prefix():
    from training.distill import Distiller
    from training.item_targets import ItemTargets

    codes = {"a": (0, 0), "b": (0, 1), "c": (1, 0)}
    targets = ItemTargets(Tok(), codes, ["a", "b", "c"])
    distiller = Distiller(Tok(), codes, ["a", "b", "c"], FixedTeacher(), weight=0.5, temperature=1.0)
    # history: a (untrained, first) then b (trained): b is predicted from [a].
    ids = torch.tensor([[1, 10, 20, 2, 1, 10, 21, 2]])
    labels = torch.full_like(ids, -100)
    labels[0, 5:7] = ids[0, 5:7]
    logits = torch.randn(1, ids.shape[1], 32, requires_grad=True)
    loss = distiller.loss(targets, logits, torch.zeros(1, 8, 4), ids, labels, torch.tensor([True]))
    # a is seen, so the teacher spreads softmax(1, 2) over b and c.
    q_b, q_c = torch.softmax(torch.tensor([1.0, 2.0]), 0).tolist()
    log_p0 = F.log_softmax(logits[0, 4], -1)      # at <|item_begin|>: the first code
    log_p1 = F.log_softmax(logits[0, 5], -1)      # after code 0: the second code
    level0 = -(q_b * log_p0[10] + q_c * log_p0[11])
    level1 = -log_p1[21]                           # under prefix 0 only b is left
    assert loss.item() == pytest.approx(0.5 * (level0 + level1).item() / 2, rel=1e-5)
    loss.backward()
    assert logits.grad[0, 4, 11] < 0 and logits.grad[0, 4, 10] < 0    # both children pulled up
    # A row of another task, or a span with nothing before it, gets no soft target.
    assert distiller.loss(targets, logits, torch.zeros(1, 8, 4), ids, labels, torch.tensor([False])) is None


def test_a_teacher_for_another_catalog_is_refused():
    from training.distill import Distiller

    with pytest.raises(ValueError, match="another dataset build"):
        Distiller(Tok(), {"a": (0, 0), "z": (1, 1)}, ["a", "z"], FixedTeacher())


def test_pretraining_with_a_teacher_logs_the_soft_loss(built_dataset, tmp_path):
    from training.dataset_view import DatasetView
    from training.pretrain import PretrainArgs, run
    from training.sasrec import SASRecConfig, train_sasrec

    view = DatasetView.load(built_dataset)
    teacher = train_sasrec(list(view.items), [r["item_ids"] for r in view.train], None, SASRecConfig(epochs=1),
                           progress=False)
    teacher.save(tmp_path / "sasrec.pt")
    out = tmp_path / "pretrain"
    run(PretrainArgs(data=str(built_dataset), out=str(out), max_steps=3, vocab_size=600, batch_tokens=2048,
                     save_every=0, distill_weight=0.5, teacher=str(tmp_path / "sasrec.pt")))
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert any(r.get("distill_loss", 0) > 0 for r in log)
    with pytest.raises(FileNotFoundError, match="teacher"):
        run(PretrainArgs(data=str(built_dataset), out=str(tmp_path / "p2"), max_steps=1, vocab_size=600,
                         distill_weight=0.5, teacher=str(tmp_path / "missing.pt")))
