"""Checkpoint metadata and resume state as every stage writes them (training/checkpointing.py), and
the stage-to-trainer argument hand-over; no model is trained here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.checkpoint import CheckpointMeta
from training.checkpointing import STATE_DIR, child_meta, finished_stage, resume_state, save_resume_state
from training.trainer import TrainArgs, stage_train_args


def _parent() -> CheckpointMeta:
    return CheckpointMeta(stage="pretrain", dataset="themed", dataset_fingerprint="f" * 16, sid_levels=3,
                          sid_codebook_size=8, preset="tiny", args={"lr": 3e-3}, steps=7, train_seconds=2.5,
                          history_items=12, created_at="2020-01-01T00:00:00+00:00")


def test_child_meta_keeps_the_catalog_and_records_the_parent_in_history():
    parent = _parent()
    child = child_meta(parent, Path("ckpt/pretrain"), "sft", {"lr": 5e-4}, {"steps": 3, "seconds": 1.0},
                       lora=True)
    assert (child.stage, child.parent, child.args, child.steps, child.lora) == ("sft", "ckpt/pretrain", {"lr": 5e-4}, 3, True)
    assert child.final_loss is None                       # a GRPO summary has no loss
    assert (child.dataset_fingerprint, child.sid_levels, child.history_items) == ("f" * 16, 3, 12)
    assert child.history == [{"stage": "pretrain", "args": {"lr": 3e-3}, "steps": 7, "train_seconds": 2.5}]
    assert child.created_at != parent.created_at and parent.stage == "pretrain"    # the parent is left alone
    assert child_meta(child, "ckpt/sft", "rl", {}, {"steps": 1, "seconds": 0.1}).history[-1]["stage"] == "sft"


def test_finished_stage_reads_a_saved_checkpoint(tmp_path):
    assert finished_stage(tmp_path) is None
    _parent().save(tmp_path)
    assert finished_stage(tmp_path) == "pretrain"


class FakeAccelerator:
    """What resume_state needs from accelerate: a state folder written and read back."""

    def __init__(self):
        self.loaded = None

    def save_state(self, folder: str) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "weights").write_text("saved")

    def load_state(self, folder: str) -> None:
        self.loaded = (Path(folder) / "weights").read_text()

    def print(self, *args) -> None:
        pass


def test_resume_state_gives_back_what_was_saved(tmp_path):
    accelerator = FakeAccelerator()
    assert resume_state(accelerator, tmp_path, "test", 10) is None and accelerator.loaded is None
    save_resume_state(accelerator, tmp_path, {"step": 4, "log": [{"step": 4, "loss": 1.5}]})
    assert (tmp_path / STATE_DIR).is_dir()
    assert resume_state(accelerator, tmp_path, "test", 10) == {"step": 4, "log": [{"step": 4, "loss": 1.5}]}
    assert accelerator.loaded == "saved"


def test_stage_train_args_takes_only_the_fields_a_stage_declares():
    @dataclass
    class StageArgs:
        lr: float = 1e-4
        epochs: float = 0.5
        data: str = "somewhere"            # not a trainer field: left out

    train_args = stage_train_args(StageArgs(), warmup_steps=3)
    assert (train_args.lr, train_args.epochs, train_args.warmup_steps) == (1e-4, 0.5, 3)
    assert train_args.batch_tokens == TrainArgs().batch_tokens     # undeclared: the trainer's default
