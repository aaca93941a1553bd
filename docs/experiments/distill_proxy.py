"""Issue 25 proxy for distillation: does SASRec's soft target make the tiny LM rank better on a
step it has never read?

The valid split flatters memorisation: its prompt is the end of a training sequence the model read
many times. The test split's prompt holds one more item (the valid target) that no training context
held. This proxy rebuilds that shape from the training sequences alone, so choices never touch
valid or test targets:

- inner train: each user's train sequence without its last two items;
- inner valid (SASRec's early stopping): the second-last item from the inner train sequence;
- inner test (the score): the last item, from the sequence that ends with the inner-valid item.

A fresh tiny model with the item head is trained on ``SequenceWindows`` of the inner train
(``--passes`` passes, one warmup + cosine schedule) through the project's trainer, with or without
the SASRec teacher, and scored by the engine's recommender (exact ranking, head included).

    python docs/experiments/distill_proxy.py --weight 0 --out results/distill_w0.json
    python docs/experiments/distill_proxy.py --weight 0.5 --temperature 1 --out results/distill_w05.json
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from engine.recommender import Recommender
from training.dataset_view import DatasetView
from training.distill import Distiller
from training.item_targets import ItemTargets
from training.metrics import hit_ndcg
from training.model_setup import make_model
from training.pretrain import PretrainArgs, make_tokenizer
from training.sasrec import SASRecConfig, train_sasrec
from training.tasks import SequenceWindows
from training.teacher import DeterministicTeacher
from training.trainer import TrainArgs, train


def inner_view(view: DatasetView) -> tuple[DatasetView, list[tuple[list[str], str]], list[tuple[list[str], str]]]:
    users = [r for r in view.train if len(r["item_ids"]) >= 4]
    inner_train = [dict(r, item_ids=r["item_ids"][:-2]) for r in users]
    inner_valid = [(r["item_ids"][:-2], r["item_ids"][-2]) for r in users]
    inner_test = [(r["item_ids"][:-1], r["item_ids"][-1]) for r in users]
    return replace(view, train=inner_train), inner_valid, inner_test


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="artifacts/ml-100k")
    parser.add_argument("--passes", type=float, default=4)
    parser.add_argument("--weight", type=float, default=0.5, help="distillation weight (0: none)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--head-weight", type=float, default=1.0, help="ranking weight of the head")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=0)
    parser.add_argument("--teacher", default="results/distill_teacher.pt", help="cached inner SASRec")
    parser.add_argument("--out", default="results/distill_proxy.json")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    view = DatasetView.load(args.data)
    inner, inner_valid, inner_test = inner_view(view)

    from training.sasrec import SASRecModel

    if Path(args.teacher).exists():
        sasrec = SASRecModel.load(args.teacher)
    else:
        sasrec = train_sasrec(list(view.items), [r["item_ids"] for r in inner.train], inner_valid,
                              SASRecConfig(seed=args.seed))
        sasrec.save(args.teacher)
    sasrec_ranked = sasrec.recommend_batch([h for h, _ in inner_test], 20)
    sasrec_scores = hit_ndcg(sasrec_ranked, [t for _, t in inner_test], (10, 20))
    print("sasrec inner test", sasrec_scores, flush=True)

    teacher = DeterministicTeacher(view.facts, view.embeddings, view.category_word)
    tokenizer = make_tokenizer(view, teacher, PretrainArgs(data=args.data, seed=args.seed))
    examples = SequenceWindows(tokenizer, inner, 20).build(random.Random(args.seed))
    item_ids = list(view.codes)
    model = make_model(tokenizer, "tiny", None, False, seed=args.seed, item_ids=item_ids)
    targets = ItemTargets(tokenizer, view.codes, item_ids)
    distiller = (Distiller(tokenizer, view.codes, item_ids, sasrec, args.weight, args.temperature)
                 if args.weight > 0 else None)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        summary = train(model, examples, tokenizer.pad_id, Path(folder),
                        TrainArgs(epochs=args.passes, seed=args.seed, save_every=0, max_steps=args.max_steps),
                        title="proxy", item_targets=targets, distiller=distiller)
    seconds = time.perf_counter() - started
    model = summary["model"].eval()
    recommender = Recommender(model, tokenizer, view.codes, history_items=20, facets=view.facets,
                              category_word=view.category_word, head_weight=args.head_weight)
    with torch.no_grad():
        answers = recommender.recommend([h for h, _ in inner_test], k=20, batch_size=16)
    ranked = [[str(i.item_id) for i in a.items] for a in answers]
    scores = hit_ndcg(ranked, [t for _, t in inner_test], (10, 20))
    record = {"args": vars(args), "train_seconds": round(seconds, 1), "final_loss": summary["final_loss"],
              "thinkrec": scores, "sasrec": sasrec_scores,
              "ratio_ndcg@10": scores["ndcg@10"] / max(sasrec_scores["ndcg@10"], 1e-9)}
    print(json.dumps(record), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
