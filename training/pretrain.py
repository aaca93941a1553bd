"""Stage 1 — perception / itemic alignment pre-training: item tokens come to mean their titles and
attributes, and user histories become predictable, before any reasoning is taught.

    thinkrec train pretrain --data artifacts/ml-100k --out checkpoints/ml-100k-tiny/pretrain --preset tiny

From scratch (``--preset``) the BPE tokenizer is trained here on the dataset's text; with
``--base-model PATH`` the base's tokenizer is extended with thinkrec's tokens instead.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from engine.tokenizer import ThinkrecTokenizer


@dataclass
class PretrainArgs:
    data: str = "artifacts/ml-100k"     # dataset artifact folder (thinkrec data build)
    out: str = "checkpoints/ml-100k-tiny/pretrain"  # output checkpoint folder
    preset: str = "tiny"                # model size from scratch: tiny, small, medium
    base_model: str | None = None       # a local pretrained model folder (then preset is ignored)
    lora: bool = False                  # LoRA on the base (embeddings and head fully trained)
    lora_rank: int = 16                 # LoRA rank (alpha = 2 x rank)
    vocab_size: int = 4096              # BPE size when training from scratch
    epochs: float = 2.0                 # passes over the corpus (fractions allowed)
    lr: float = 3e-3                    # peak learning rate (warmup then cosine decay)
    batch_tokens: int = 6144            # padded tokens per micro-batch
    grad_accum: int = 1                 # micro-batches per optimizer step
    max_len: int = 512                  # longest example in tokens (longer ones keep their end)
    precision: str = "auto"             # auto (bf16 where native), fp32 or bf16
    gradient_checkpointing: bool = False  # trade compute for memory on large bases
    seed: int = 0                       # seed for data order, initialisation and sampling
    save_every: int = 200               # optimizer steps between resumable checkpoints (0: never)
    max_steps: int = 0                  # stop after this many steps (0: run all epochs)
    history_items: int = 20             # latest history items a prompt lists (recorded in the checkpoint; later stages and the engine use it)
    sequence_passes: int = 0            # passes over every user sequence (SequenceWindows) per epoch of the perception tasks (0: sized by the data, see sequence_tokens)
    sequence_tokens: int = 1_500_000    # with sequence_passes 0: as many passes as make this many next-item tokens an epoch (at least 3, at most 40)
    item_head: bool = True              # an item-ID head beside the SID tokens (engine/item_head.py), trained with full cross-entropy
    head_loss_weight: float = 1.0       # its loss weight beside the token loss
    distill_weight: float = 0.0         # weight of a SASRec teacher's soft targets at next-item spans (0: none; training/distill.py)
    distill_temperature: float = 1.0    # the teacher's softmax temperature
    teacher: str | None = None          # a saved SASRec (thinkrec train baseline) to distil from


MIN_SEQUENCE_PASSES, MAX_SEQUENCE_PASSES = 3, 40


def sized_passes(tokens_per_pass: int, budget: int) -> int:
    """Passes over the user sequences that make about ``budget`` tokens: a small or sparse dataset
    gets more passes over its few sequences, a large one no fewer than 3. On ML-100K (844 k
    tokens a pass) 1.5 M tokens is 3 passes (the floor); thinned to 15 % of its ratings (95 k a pass), 16."""
    if tokens_per_pass <= 0:
        return MIN_SEQUENCE_PASSES
    return max(MIN_SEQUENCE_PASSES, min(MAX_SEQUENCE_PASSES, math.ceil(budget / tokens_per_pass)))


def build_examples(view, tokenizer, seed: int, sequence_passes: int = 1, history_items: int = 20,
                   sequence_tokens: int = 1_500_000):
    """Perception tasks once, user sequences ``sequence_passes`` times (the same windows, each pass
    with its own asks): next-item prediction needs many more passes than learning what an item is.
    ``sequence_passes`` 0: sized by the data (:func:`sized_passes` of ``sequence_tokens``).
    Returns the examples and the passes used."""
    from training.tasks import ItemQA, ItemText, ItemToText, Persona, SequenceWindows, TextToItem

    rng = random.Random(seed)
    examples = []
    for task in (ItemToText, TextToItem, ItemQA, Persona, ItemText):
        examples += task(tokenizer, view).build(rng)
    first = SequenceWindows(tokenizer, view, history_items).build(rng)
    passes = sequence_passes or sized_passes(sum(len(e.ids) for e in first), sequence_tokens)
    examples += first
    for _ in range(passes - 1):
        examples += SequenceWindows(tokenizer, view, history_items).build(rng)
    return examples, passes


def make_tokenizer(view, teacher, args) -> ThinkrecTokenizer:
    from training.tasks import tokenizer_corpus

    levels, size = view.manifest.sid.levels, view.manifest.sid.codebook_size
    if args.base_model:
        return ThinkrecTokenizer.from_base_model(args.base_model, levels, size)
    return ThinkrecTokenizer.train(tokenizer_corpus(view, teacher, seed=args.seed), levels, size, args.vocab_size)


def run(args: PretrainArgs) -> Path:
    from training.checkpointing import first_meta, save_checkpoint
    from training.dataset_view import DatasetView
    from training.item_targets import ItemTargets
    from training.model_setup import make_model
    from training.teacher import DeterministicTeacher
    from training.trainer import stage_train_args, summary_line, train

    view = DatasetView.load(args.data)
    teacher = DeterministicTeacher(view.facts, view.embeddings, view.category_word)
    tokenizer = make_tokenizer(view, teacher, args)
    examples, passes = build_examples(view, tokenizer, args.seed, args.sequence_passes, args.history_items,
                                      args.sequence_tokens)
    args = replace(args, sequence_passes=passes)      # the checkpoint records what was run
    print(f"pretrain: {len(examples):,} examples, {sum(len(e.ids) for e in examples):,} tokens, "
          f"{passes} passes over the user sequences an epoch, vocab {len(tokenizer):,}")
    item_ids = list(view.codes) if args.item_head else None
    model = make_model(tokenizer, args.preset, args.base_model, args.lora, args.lora_rank, args.seed,
                       args.gradient_checkpointing, item_ids=item_ids)
    train_args = stage_train_args(args)
    distiller = None
    if args.distill_weight > 0:
        from training.distill import Distiller
        from training.sasrec import SASRecModel

        if not args.teacher or not Path(args.teacher).exists():
            raise FileNotFoundError(f"distillation needs a saved SASRec teacher (--teacher), not {args.teacher!r}: "
                                    "train one with thinkrec train baseline")
        distiller = Distiller(tokenizer, view.codes, list(view.codes), SASRecModel.load(args.teacher),
                              args.distill_weight, args.distill_temperature)
    targets = (ItemTargets(tokenizer, view.codes, item_ids or list(view.codes))
               if item_ids or distiller is not None else None)
    summary = train(model, examples, tokenizer.pad_id, Path(args.out), train_args, title="pretrain",
                    item_targets=targets, distiller=distiller)
    meta = first_meta(view.manifest, "pretrain", asdict(args), summary, preset=None if args.base_model else args.preset,
                      base_model=args.base_model, lora=args.lora, history_items=args.history_items)
    save_checkpoint(summary["model"], tokenizer, meta, Path(args.out))
    print(summary_line("pretrain", summary, args.out))
    return Path(args.out)

