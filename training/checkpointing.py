"""Checkpoint folders as the stages write and read them: the parent checkpoint a stage starts from,
the ``thinkrec.json`` metadata each stage records, the resume state a killed run picks up from
(``OUT/trainer_state``), and the finished folder (model, tokenizer, metadata).

Every stage (pretrain, SFT, each GRPO run, the unify step) goes through these functions, so every
checkpoint has the same layout and loads the same way in transformers, vLLM and the engine.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from data.manifest import Manifest
from engine.checkpoint import META_FILE, CheckpointMeta, check_matches
from engine.tokenizer import ThinkrecTokenizer

STATE_DIR = "trainer_state"          # inside OUT: accelerate's saved state plus PROGRESS_FILE
PROGRESS_FILE = "progress.json"      # the loop's own counters and log, next to that state


# -- starting from a checkpoint --------------------------------------------------------------

def load_parent(init: str | Path, view) -> tuple[CheckpointMeta, ThinkrecTokenizer]:
    """The metadata and tokenizer of the checkpoint a stage starts from. A checkpoint trained on
    another catalog than ``view``'s is refused before any training time is spent on it."""
    meta = CheckpointMeta.load(Path(init))
    check_matches(meta, view.manifest, Path(init), view.folder)
    return meta, ThinkrecTokenizer.load(init)


def load_model(path: str | Path):
    """A saved checkpoint's model, ready to train further (local files only, never a model hub),
    with its item head attached when it has one."""
    from transformers import AutoModelForCausalLM

    from engine.item_head import ItemHead, attach

    model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
    return attach(model, ItemHead.load(path))


def finished_stage(out: str | Path) -> str | None:
    """The stage of a checkpoint already saved in ``out`` (None if there is none), so a rerun can
    reuse finished work instead of training it again."""
    return CheckpointMeta.load(Path(out)).stage if (Path(out) / META_FILE).exists() else None


# -- metadata --------------------------------------------------------------------------------

def first_meta(manifest: Manifest, stage: str, args: dict, summary: dict, **fields) -> CheckpointMeta:
    """Metadata of a stage trained from no checkpoint (pre-training): the catalog comes from the
    dataset's manifest, so the engine can later refuse this model with any other catalog."""
    return CheckpointMeta(stage=stage, dataset=manifest.dataset, dataset_fingerprint=manifest.fingerprint,
                          sid_levels=manifest.sid.levels, sid_codebook_size=manifest.sid.codebook_size,
                          args=args, steps=summary["steps"], train_seconds=summary["seconds"],
                          final_loss=summary.get("final_loss"), **fields)


def child_meta(parent: CheckpointMeta, parent_path: str | Path, stage: str, args: dict, summary: dict,
               **fields) -> CheckpointMeta:
    """Metadata of a stage trained from ``parent``. The catalog, SID layout and prompt window carry
    over unchanged; the parent's own record (stage, args, steps, time) joins ``history``, so the
    last checkpoint tells how every stage before it was trained."""
    return parent.model_copy(update={
        "stage": stage, "parent": str(parent_path), "args": args, "steps": summary["steps"],
        "train_seconds": summary["seconds"], "final_loss": summary.get("final_loss"),
        "created_at": CheckpointMeta.model_fields["created_at"].default_factory(),
        "history": parent.history + [{"stage": parent.stage, "args": parent.args, "steps": parent.steps,
                                      "train_seconds": parent.train_seconds}]} | fields)


# -- resuming a killed run -------------------------------------------------------------------

def resume_state(accelerator, out: str | Path, title: str, total_steps: int) -> dict | None:
    """Restore the model, optimizer and scheduler a killed run saved under ``out`` (call it after
    ``accelerator.prepare``) and return the loop's progress record; None when there is none."""
    state_dir = Path(out) / STATE_DIR
    progress_file = state_dir / PROGRESS_FILE
    if not progress_file.exists():
        return None
    accelerator.load_state(str(state_dir))
    progress = json.loads(progress_file.read_text())
    accelerator.print(f"Resuming {title} at step {progress['step']}/{total_steps} from {state_dir}")
    return progress


def save_resume_state(accelerator, out: str | Path, progress: dict) -> None:
    """Save what :func:`resume_state` restores; ``progress`` needs a ``step`` and whatever else the
    loop must have back to continue exactly where it was."""
    state_dir = Path(out) / STATE_DIR
    accelerator.save_state(str(state_dir))
    (state_dir / PROGRESS_FILE).write_text(json.dumps(progress))


# -- the finished checkpoint -----------------------------------------------------------------

def save_checkpoint(model, tokenizer: ThinkrecTokenizer, meta: CheckpointMeta, out: str | Path) -> Path:
    """Write model, tokenizer and thinkrec.json to ``out`` and drop the resume state.

    A LoRA model is merged first: vLLM cannot serve LoRA with resized embeddings, and a merged
    model loads in transformers as an ordinary one."""
    from peft import PeftModel

    from engine.item_head import ITEM_HEAD_FILE, attach, detached_for_saving

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    model.generation_config.pad_token_id = tokenizer.pad_id
    model.generation_config.eos_token_id = tokenizer.end_id
    # The item head is written beside the weights, so they stay a plain causal LM (transformers, vLLM).
    model, head = detached_for_saving(model)
    model.save_pretrained(str(out))
    (out / ITEM_HEAD_FILE).unlink(missing_ok=True)
    if head is not None:
        head.save(out)
        attach(model, head)
    tokenizer.save(out)
    meta.save(out)
    shutil.rmtree(out / STATE_DIR, ignore_errors=True)
    return out
