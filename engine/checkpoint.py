"""Checkpoint folders: a Hugging Face model + tokenizer + ``thinkrec.json``, and the check that a
checkpoint belongs to the catalog it is served with.

A model speaks one catalog's SIDs; served with another catalog it would name the wrong items with
full confidence. So loading compares the checkpoint's recorded dataset fingerprint and SID layout
with the dataset folder's manifest and refuses a mismatch, saying what differs.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, Field

from data.manifest import Manifest
from engine.tokenizer import ThinkrecTokenizer

META_FILE = "thinkrec.json"


class CheckpointMismatch(ValueError):
    """The checkpoint was trained on another catalog (or SID layout) than the one given."""


class CheckpointMeta(BaseModel):
    stage: str                               # pretrain | sft | rl | unified
    dataset: str
    dataset_fingerprint: str
    sid_levels: int
    sid_codebook_size: int
    preset: str | None = None
    base_model: str | None = None
    lora: bool = False
    parent: str | None = None                # checkpoint this stage started from
    args: dict = Field(default_factory=dict)  # the stage's arguments, as given
    steps: int = 0
    train_seconds: float = 0.0
    final_loss: float | None = None
    history_items: int = 20                  # latest history items a prompt lists (the window it was trained on)
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    history: list[dict] = Field(default_factory=list)   # earlier stages' (stage, args, steps)

    def save(self, folder: Path) -> None:
        (Path(folder) / META_FILE).write_text(self.model_dump_json(indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> CheckpointMeta:
        path = Path(folder) / META_FILE
        if not path.exists():
            raise FileNotFoundError(f"{folder} is not a thinkrec checkpoint (no {META_FILE}); "
                                    "train one with: thinkrec train all --data DIR --out DIR")
        return cls.model_validate(json.loads(path.read_text()))


def check_matches(meta: CheckpointMeta, manifest: Manifest, checkpoint: Path, data: Path) -> None:
    problems = []
    if meta.dataset_fingerprint != manifest.fingerprint:
        problems.append(f"dataset fingerprint {meta.dataset_fingerprint} (trained on '{meta.dataset}') "
                        f"!= {manifest.fingerprint} of {data} ('{manifest.dataset}')")
    if (meta.sid_levels, meta.sid_codebook_size) != (manifest.sid.levels, manifest.sid.codebook_size):
        problems.append(f"SID layout {meta.sid_levels}x{meta.sid_codebook_size} != "
                        f"{manifest.sid.levels}x{manifest.sid.codebook_size}")
    if problems:
        raise CheckpointMismatch(
            f"checkpoint {checkpoint} does not match the catalog in {data}: " + "; ".join(problems)
            + ". Its item tokens would name the wrong items; use the dataset folder it was trained "
              "on, or train a checkpoint for this one.")


def load_checked(checkpoint: str | Path, data: str | Path) -> tuple[ThinkrecTokenizer, CheckpointMeta]:
    """(tokenizer, meta) after checking the checkpoint against ``data``'s manifest — all a client of
    a model server needs; :func:`load_checkpoint` adds the weights."""
    checkpoint, data = Path(checkpoint), Path(data)
    meta = CheckpointMeta.load(checkpoint)
    check_matches(meta, Manifest.load(data), checkpoint, data)
    return ThinkrecTokenizer.load(checkpoint), meta


def load_checkpoint(checkpoint: str | Path, data: str | Path, device: str | None = None, dtype=None):
    """(model, tokenizer, meta) after checking the checkpoint against ``data``'s manifest."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer, meta = load_checked(checkpoint, data)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    from data.catalog import Catalog
    from engine.item_head import ItemHead, attach

    model = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=dtype, local_files_only=True).to(device)
    # The item-ID head, when the checkpoint has one, must score exactly this catalog's items.
    attach(model, ItemHead.load(checkpoint, expected_items=list(Catalog(data).sid_codes())))
    model.eval()
    return model, tokenizer, meta
