"""The training loop every stage shares: token-budget batches of (ids, loss_mask) examples,
AdamW with warmup + cosine decay, gradient accumulation, accelerate for device placement (CPU, one
GPU, several GPUs with ``accelerate launch``), bf16 on GPUs, a progress bar, periodic checkpoints
that a killed run resumes from (training/checkpointing.py), a JSONL log and a loss-curve PNG.

Stages call :func:`train` with their examples; they own what the examples are.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from tqdm.auto import tqdm

from training.checkpointing import STATE_DIR, resume_state, save_resume_state
from training.plots import plot_curve


@dataclass
class Example:
    ids: list[int]
    mask: list[int]                 # 1 where the token is a training target
    task: str = ""


@dataclass
class TrainArgs:
    epochs: float = 1.0             # fractional epochs allowed (e.g. 0.5)
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 30
    weight_decay: float = 0.01
    batch_tokens: int = 4096        # padded tokens per micro-batch
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    max_len: int = 512
    precision: str = "auto"         # auto (bf16 where the GPU or CPU has native bf16) | fp32 | bf16
    seed: int = 0
    save_every: int = 200           # optimizer steps between resumable checkpoints (0: never)
    log_every: int = 10
    max_steps: int = 0              # stop early after this many optimizer steps (0: no limit)
    head_loss_weight: float = 1.0   # weight of the item head's cross-entropy beside the token loss


def stage_train_args(stage_args, **overrides) -> TrainArgs:
    """TrainArgs from the fields a stage's argument dataclass shares with it (epochs, lr, ...)."""
    stage_fields = {f.name for f in fields(stage_args)}
    shared = {f.name: getattr(stage_args, f.name) for f in fields(TrainArgs) if f.name in stage_fields}
    return TrainArgs(**(shared | overrides))


def summary_line(title: str, summary: dict, out) -> str:
    return (f"{title}: {summary['steps']} steps in {summary['seconds']:.0f} s "
            f"({summary['tokens_per_s']:.0f} tokens/s), final loss {summary['final_loss']:.3f} -> {out}")


def make_batches(examples: Sequence[Example], batch_tokens: int, max_len: int, seed: int, epoch: int) -> list[list[int]]:
    """Indices grouped by similar length so padding is small; order shuffled per (seed, epoch)."""
    rng = random.Random(seed * 1000 + epoch)
    order = sorted(range(len(examples)), key=lambda i: (min(len(examples[i].ids), max_len), rng.random()))
    batches, current, width = [], [], 0
    for index in order:
        length = min(len(examples[index].ids), max_len)
        if current and max(width, length) * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current, width = [], 0
        current.append(index)
        width = max(width, length)
    if current:
        batches.append(current)
    rng.shuffle(batches)
    return batches


def collate(examples: Sequence[Example], pad_id: int, max_len: int) -> dict[str, torch.Tensor]:
    width = max(min(len(e.ids), max_len) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        # Keep the end of over-long examples: the answer is what the loss is for.
        seq, mask = example.ids[-max_len:], example.mask[-max_len:]
        ids[row, :len(seq)] = torch.tensor(seq)
        attention[row, :len(seq)] = 1
        labels[row, :len(seq)] = torch.tensor([t if m else -100 for t, m in zip(seq, mask)])
    return {"input_ids": ids, "attention_mask": attention, "labels": labels}


def bf16_native() -> bool:
    """bf16 autocast pays off on GPUs with bf16 and on CPUs with AVX512-BF16/AMX (~1.35x measured
    on 2 EPYC cores); elsewhere it would be emulated and slower."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def mixed_precision(precision: str) -> str:
    """accelerate's ``mixed_precision`` for a stage's ``--precision`` (auto: bf16 where native)."""
    if precision == "auto":
        precision = "bf16" if bf16_native() else "fp32"
    return "bf16" if precision == "bf16" else "no"


def _schedule(step: int, total: int, args: TrainArgs) -> float:
    if step < args.warmup_steps:
        return (step + 1) / args.warmup_steps
    progress = min(1.0, (step - args.warmup_steps) / max(1, total - args.warmup_steps))
    return args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def step_loss(model, batch: dict, item_targets=None, head_weight: float = 1.0, distiller=None,
              rows_allowed: torch.Tensor | None = None) -> tuple[torch.Tensor, float | None, float | None]:
    """The token loss, plus (when ``model`` carries an item head and ``item_targets`` finds spans)
    ``head_weight`` × the head's cross-entropy at the trained item spans, plus (with a
    ``distiller``, training/distill.py) the teacher's soft targets at the next-item spans of
    ``rows_allowed``. Returns the loss, the head's part and the distillation part (None where
    absent). One forward through the wrapped model either way."""
    from engine.item_head import head_of

    head = head_of(model) if item_targets is not None else None
    if head is None and distiller is None:
        return model(**batch).loss, None, None
    out = model(**batch, output_hidden_states=True)
    loss, head_part, distill_part = out.loss, None, None
    hidden = out.hidden_states[-1]
    if head is not None:
        head_loss = item_targets.loss(head, hidden, batch["input_ids"], batch["labels"])
        if head_loss is None:
            loss = loss + 0.0 * head.bias.sum()
        else:
            loss, head_part = loss + head_weight * head_loss, head_loss.item()
    if distiller is not None:
        allowed = rows_allowed if rows_allowed is not None else torch.ones(len(batch["input_ids"]), dtype=torch.bool)
        soft = distiller.loss(item_targets, out.logits, hidden, batch["input_ids"], batch["labels"], allowed,
                              head=head)
        if soft is not None:
            loss, distill_part = loss + soft, soft.item()
    return loss, head_part, distill_part


def train(model, examples: Sequence[Example], pad_id: int, out: Path, args: TrainArgs,
          title: str = "training", on_log: Callable[[dict], None] | None = None, item_targets=None,
          distiller=None) -> dict:
    """Train ``model`` in place; returns a summary. Resumes from ``out/trainer_state`` if present.
    ``item_targets`` (training/item_targets.py): where a model with an item head trains it.
    ``distiller`` (training/distill.py): a teacher's soft targets at the next-item spans of the
    examples whose task it distils (needs ``item_targets``)."""
    if distiller is not None and item_targets is None:
        raise ValueError("distillation needs item_targets to find the item spans")
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(gradient_accumulation_steps=args.grad_accum,
                              mixed_precision=mixed_precision(args.precision))
    set_seed(args.seed)
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95))
    batches_per_epoch = len(make_batches(examples, args.batch_tokens, args.max_len, args.seed, 0))
    total_micro = max(1, int(batches_per_epoch * args.epochs))
    total_steps = max(1, total_micro // args.grad_accum)
    if args.max_steps:
        total_steps = min(total_steps, args.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _schedule(s, total_steps, args))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    progress = resume_state(accelerator, out, title, total_steps)
    step, micro, log = (progress["step"], progress["micro"], progress["log"]) if progress else (0, 0, [])

    model.train()
    started, tokens_seen, window_loss, window_n = time.perf_counter(), 0, 0.0, 0
    window_head, window_head_n = 0.0, 0
    window_distill, window_distill_n = 0.0, 0
    bar = tqdm(total=total_steps, initial=step, desc=title, unit="step", disable=not accelerator.is_main_process)
    epoch_batches: dict[int, list[list[int]]] = {}
    while step < total_steps:
        epoch, position = divmod(micro, batches_per_epoch)
        if epoch not in epoch_batches:
            epoch_batches = {epoch: make_batches(examples, args.batch_tokens, args.max_len, args.seed, epoch)}
        chosen = [examples[i] for i in epoch_batches[epoch][position]]
        batch = collate(chosen, pad_id, args.max_len)
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        rows_allowed = (torch.tensor([e.task in distiller.tasks for e in chosen], dtype=torch.bool)
                        if distiller is not None else None)
        with accelerator.accumulate(model):
            loss, head_loss, distill_loss = step_loss(model, batch, item_targets, args.head_loss_weight,
                                                      distiller, rows_allowed)
            if head_loss is not None:
                window_head, window_head_n = window_head + head_loss, window_head_n + 1
            if distill_loss is not None:
                window_distill, window_distill_n = window_distill + distill_loss, window_distill_n + 1
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        micro += 1
        tokens_seen += int(batch["attention_mask"].sum())
        window_loss, window_n = window_loss + loss.item(), window_n + 1
        if not accelerator.sync_gradients:
            continue
        step += 1
        bar.update(1)
        if step % args.log_every == 0 or step == total_steps:
            elapsed = time.perf_counter() - started
            record = {"step": step, "loss": window_loss / window_n, "lr": scheduler.get_last_lr()[0],
                      "tokens_per_s": tokens_seen / max(elapsed, 1e-9), "epoch": micro / batches_per_epoch}
            if window_head_n:
                record["head_loss"] = window_head / window_head_n
            if window_distill_n:
                record["distill_loss"] = window_distill / window_distill_n
            window_head, window_head_n = 0.0, 0
            window_distill, window_distill_n = 0.0, 0
            log.append(record)
            bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
            window_loss, window_n = 0.0, 0
            if on_log:
                on_log(record)
        if args.save_every and step % args.save_every == 0 and step < total_steps:
            save_resume_state(accelerator, out, {"step": step, "micro": micro, "log": log})
    bar.close()

    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    seconds = time.perf_counter() - started
    with (out / "train_log.jsonl").open("w") as handle:
        for record in log:
            handle.write(json.dumps(record) + "\n")
    plot_curve(log, out / "loss_curve.png", f"{title}: training loss")
    return {"model": unwrapped, "steps": step, "seconds": round(seconds, 1),
            "final_loss": log[-1]["loss"] if log else None, "args": asdict(args),
            "tokens_per_s": round(tokens_seen / max(seconds, 1e-9), 1), "state_dir": out / STATE_DIR}
