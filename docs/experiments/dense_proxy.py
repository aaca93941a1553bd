"""Issue 14 proxy: how far does dense next-item training alone take the tiny LM?

Trains a fresh tiny model on SequenceWindows only (plus, optionally, the perception tasks) and
scores non-thinking valid NDCG@10 after every epoch, through the engine's own recommender.

    python docs/experiments/dense_proxy.py --data artifacts/ml-100k --epochs 6 --out results/proxy.json
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from engine.recommender import Recommender
from training.dataset_view import DatasetView
from training.metrics import hit_ndcg
from training.model_setup import make_model
from training.pretrain import PretrainArgs, make_tokenizer
from training.tasks import SequenceWindows
from training.teacher import DeterministicTeacher
from training.trainer import TrainArgs, train


def score(model, tokenizer, view, rows, num_beams=20, history_items=20):
    model.eval()
    rec = Recommender(model, tokenizer, view.codes, history_items=history_items, facets=view.facets,
                      category_word=view.category_word)
    with torch.no_grad():
        answers = rec.recommend([r["history"] for r in rows], k=20, num_beams=num_beams, batch_size=16)
    model.train()
    ranked = [[str(i.item_id) for i in a.items] for a in answers]
    return hit_ndcg(ranked, [r["target"] for r in rows], (10, 20))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="artifacts/ml-100k")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--stop-after", type=int, default=0)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--history", type=int, default=20)
    parser.add_argument("--users", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/proxy.json")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    view = DatasetView.load(args.data)
    rows = view.valid[:args.users] if args.users else view.valid
    teacher = DeterministicTeacher(view.facts, view.embeddings, view.category_word)
    tokenizer = make_tokenizer(view, teacher, PretrainArgs(data=args.data, seed=args.seed))
    examples = SequenceWindows(tokenizer, view, args.history).build(random.Random(args.seed))
    print(f"{len(examples)} examples, {sum(len(e.ids) for e in examples)} tokens")
    model = make_model(tokenizer, "tiny", None, False, seed=args.seed)
    print("untrained", score(model, tokenizer, view, rows[:20]), flush=True)
    log = []
    started = time.perf_counter()
    # One cosine schedule over all epochs, scored at each epoch end: train() is resumable, so
    # each call runs one more epoch's worth of steps of the same schedule.
    out = Path(args.out).with_suffix("")
    state = out.parent / (out.name + "_state")
    import shutil
    shutil.rmtree(state, ignore_errors=True)
    steps_per_epoch = None
    for epoch in range(1, (args.stop_after or args.epochs) + 1):
        train_args = TrainArgs(epochs=args.epochs, lr=args.lr, batch_tokens=6144, seed=args.seed,
                               save_every=10 ** 9, warmup_steps=30)
        if steps_per_epoch is None:
            from training.trainer import make_batches
            steps_per_epoch = len(make_batches(examples, 6144, 512, args.seed, 0))
        train_args.max_steps = steps_per_epoch * epoch
        # continue the same schedule: keep model/optimizer in memory by training step ranges
        summary = train_range(model, examples, tokenizer.pad_id, train_args, steps_per_epoch * (epoch - 1))
        metrics = score(model, tokenizer, view, rows, history_items=args.history)
        record = {"epoch": epoch, "seconds": round(time.perf_counter() - started, 1),
                  "loss": summary, **{k: round(v, 5) for k, v in metrics.items()}}
        log.append(record)
        print(json.dumps(record), flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"args": vars(args), "log": log}, indent=2))


_OPT = {}


def train_range(model, examples, pad_id, args: TrainArgs, start: int) -> float:
    """Run optimizer steps [start, args.max_steps) of one schedule over ``args.epochs`` epochs."""
    import math
    from training.trainer import _schedule, collate, make_batches

    batches_per_epoch = len(make_batches(examples, args.batch_tokens, args.max_len, args.seed, 0))
    total = int(batches_per_epoch * args.epochs)
    if "opt" not in _OPT:
        decay = [p for p in model.parameters() if p.ndim >= 2]
        rest = [p for p in model.parameters() if p.ndim < 2]
        _OPT["opt"] = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
                                        lr=args.lr, betas=(0.9, 0.95))
    opt = _OPT["opt"]
    losses = []
    for step in range(start, args.max_steps):
        epoch, position = divmod(step, batches_per_epoch)
        batches = _OPT.setdefault(("b", epoch), make_batches(examples, args.batch_tokens, args.max_len, args.seed, epoch))
        batch = collate([examples[i] for i in batches[position]], pad_id, args.max_len)
        for group in opt.param_groups:
            group["lr"] = args.lr * _schedule(step, total, args)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return round(sum(losses[-50:]) / max(1, len(losses[-50:])), 4)


if __name__ == "__main__":
    main()
