"""Issue 14 proxy: how far does dense next-item training alone take the tiny LM?

Trains a fresh tiny model on SequenceWindows only (the serving layout, every position a target)
with one warmup + cosine schedule over ``--epochs`` passes, and scores non-thinking NDCG@10 on the
valid split after every pass, through the engine's own recommender (trie, beam search, history
excluded). Writes the per-pass log as JSON.

    python docs/experiments/dense_proxy.py --data artifacts/ml-100k-cf --epochs 8 --out results/proxy.json
    python docs/experiments/dense_proxy.py ... --history 50 --stop-after 4    # first 4 passes of an 8-pass schedule
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
from training.trainer import TrainArgs, _schedule, collate, make_batches


def score(model, tokenizer, view, rows, history_items: int, num_beams: int = 20) -> dict:
    model.eval()
    recommender = Recommender(model, tokenizer, view.codes, history_items=history_items, facets=view.facets,
                              category_word=view.category_word)
    with torch.no_grad():
        answers = recommender.recommend([r["history"] for r in rows], k=20, num_beams=num_beams, batch_size=16)
    model.train()
    ranked = [[str(i.item_id) for i in a.items] for a in answers]
    return hit_ndcg(ranked, [r["target"] for r in rows], (10, 20))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="artifacts/ml-100k")
    parser.add_argument("--epochs", type=int, default=8, help="passes the schedule is laid over")
    parser.add_argument("--stop-after", type=int, default=0, help="stop after this many passes (0: all)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--history", type=int, default=20, help="history items a prompt lists")
    parser.add_argument("--users", type=int, default=0, help="valid users scored (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/proxy.json")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    view = DatasetView.load(args.data)
    rows = view.valid[:args.users] if args.users else view.valid
    teacher = DeterministicTeacher(view.facts, view.embeddings, view.category_word)
    tokenizer = make_tokenizer(view, teacher, PretrainArgs(data=args.data, seed=args.seed))
    examples = SequenceWindows(tokenizer, view, args.history).build(random.Random(args.seed))
    print(f"{len(examples)} examples, {sum(len(e.ids) for e in examples)} tokens a pass", flush=True)
    model = make_model(tokenizer, "tiny", None, False, seed=args.seed)
    schedule = TrainArgs(epochs=args.epochs, lr=args.lr, warmup_steps=30, seed=args.seed)
    per_pass = len(make_batches(examples, schedule.batch_tokens, schedule.max_len, args.seed, 0))
    total = per_pass * args.epochs
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
                                  lr=args.lr, betas=(0.9, 0.95))
    log, started, step = [], time.perf_counter(), 0
    for epoch in range(args.stop_after or args.epochs):
        losses = []
        for batch_indices in make_batches(examples, schedule.batch_tokens, schedule.max_len, args.seed, epoch):
            batch = collate([examples[i] for i in batch_indices], tokenizer.pad_id, schedule.max_len)
            for group in optimizer.param_groups:
                group["lr"] = args.lr * _schedule(step, total, schedule)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
            step += 1
        train_seconds = time.perf_counter() - started
        scoring = time.perf_counter()
        metrics = score(model, tokenizer, view, rows, args.history)
        started += time.perf_counter() - scoring          # scoring time is not training time
        record = {"epoch": epoch + 1, "train_seconds": round(train_seconds, 1),
                  "loss": round(sum(losses[-50:]) / len(losses[-50:]), 4), **{k: round(v, 5) for k, v in metrics.items()}}
        log.append(record)
        print(json.dumps(record), flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"args": vars(args), "log": log}, indent=2) + "\n")


if __name__ == "__main__":
    main()
