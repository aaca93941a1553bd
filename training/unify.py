"""The unify step of ``thinkrec train rl`` (mode ``unify``): rejection-sampling fine-tuning merges the
next-item and dialogue specialists into one model.

While a specialist trains, :func:`best_of_group` keeps the best rollout of each group that
succeeded; its GRPO run writes them to ``KEPT_FILE``. :func:`unify` then fine-tunes one model on
both specialists' kept rollouts plus a replay of non-thinking SFT answers, so the non-thinking mode
learnt in SFT is not forgotten.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from engine.checkpoint import CheckpointMeta
from training.checkpointing import child_meta, load_model, save_checkpoint

if TYPE_CHECKING:
    from training.rl_args import RLArgs
    from training.rollouts import Rollout

KEPT_FILE = "rollouts.jsonl"      # in each GRPO run's folder: the kept rollouts, one JSON row each


def best_of_group(rollouts: list[Rollout], group_size: int, min_format: float = 1.0) -> list[Rollout]:
    """Rejection sampling: each group's best rollout, kept when it beat the group mean and
    succeeded — the target in its list, or (dialogue) the request met by most of its items."""
    kept = []
    for start in range(0, len(rollouts), group_size):
        group = rollouts[start:start + group_size]
        best = max(group, key=lambda r: r.reward)
        mean = sum(r.reward for r in group) / len(group)
        succeeded = best.parts.get("rank", 0) > 0 or (best.prompt.request is not None
                                                       and best.parts.get("instruction", 0) >= 0.8)
        if best.reward > mean + 1e-9 and succeeded and best.parts.get("format", 0) >= min_format:
            kept.append(best)
    return kept


def read_kept(folder: Path) -> list[dict]:
    path = folder / KEPT_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def unify(args: RLArgs, view, tokenizer, parent: CheckpointMeta, specialists: dict[str, Path], out: Path) -> Path:
    """Rejection-sampling fine-tuning on the specialists' kept rollouts (plus non-thinking replay)."""
    from training.sft import SFTArgs, build_examples, load_teacher
    from training.trainer import Example, TrainArgs, train

    rng = random.Random(args.seed)
    examples = []
    for task, folder in specialists.items():
        for row in read_kept(folder):
            examples.append(Example(row["ids"], [0] * row["prompt_len"] + [1] * (len(row["ids"]) - row["prompt_len"]),
                                    f"rft_{task}"))
    if not examples:
        raise ValueError("the specialists kept no successful rollouts to unify; train them longer")
    sft_args = SFTArgs(data=args.data, seed=args.seed)
    plain = [e for e in build_examples(view, tokenizer, load_teacher(None, view), sft_args, parent.history_items)
             if e.task == "no_think"]
    examples += rng.sample(plain, min(len(plain), int(len(examples) * args.unify_replay)))
    counts = {}
    for e in examples:
        counts[e.task] = counts.get(e.task, 0) + 1
    start = str(specialists["next_item"]) if args.unify_from == "next_item" else args.init
    print(f"unify: {len(examples):,} examples {counts}, fine-tuning {start}")
    train_args = TrainArgs(epochs=args.unify_epochs, lr=args.unify_lr, warmup_steps=5, batch_tokens=6144,
                           precision=args.precision, seed=args.seed, save_every=20, log_every=5)
    summary = train(load_model(start), examples, tokenizer.pad_id, out, train_args, title="unify")
    # The fine-tuning is not evaluated as it goes, so its curve is empty; the key keeps every RL
    # checkpoint's arguments alike.
    record = asdict(args) | {"valid_ndcg@10_curve": [], "unify_examples": counts,
                             "specialists": {t: str(p) for t, p in specialists.items()}}
    meta = child_meta(CheckpointMeta.load(Path(start)), start, "unified", record, summary)
    save_checkpoint(summary["model"], tokenizer, meta, out)
    print(f"unify: {summary['steps']} steps in {summary['seconds']:.0f} s -> {out}")
    return out
