"""Stage 2 — supervised fine-tuning on three-level chain-of-thought recommendations, the same
positions without reasoning (empty think block), and dialogue steering; a slice of the alignment
tasks is replayed so perception is not forgotten.

    thinkrec train sft --data artifacts/ml-100k --init checkpoints/ml-100k-tiny/pretrain \
        --out checkpoints/ml-100k-tiny/sft
    thinkrec train sft ... --teacher my_module:make_chat_model   # a LangChain chat model writes rationales
"""

from __future__ import annotations

import importlib
import random
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class SFTArgs:
    data: str = "artifacts/ml-100k"     # dataset artifact folder (thinkrec data build)
    init: str = "checkpoints/ml-100k-tiny/pretrain"  # checkpoint to start from (the pretrain stage's output)
    out: str = "checkpoints/ml-100k-tiny/sft"  # output checkpoint folder
    teacher: str | None = None          # "module:factory" returning a langchain BaseChatModel
    positions_per_user: int = 2         # next-item positions per user answered with reasoning
    non_thinking: str = "windows"       # windows: every position of every user sequence (SequenceWindows); latest: plain_positions_per_user positions
    sequence_passes: int = 2            # non_thinking=windows: passes over the sequences per SFT epoch
    plain_positions_per_user: int = 6   # non_thinking=latest: positions per user answered without reasoning
    plain_items: int = 5                # items in a non-thinking answer (true next item first)
    cot_items: int = 3                  # items after the reasoning (true next item first)
    replay: float = 0.2                 # share of alignment examples mixed back in
    history_loss: bool = True           # non_thinking=latest: answers also learn every history item of their prompt (windows always do)
    lora: bool = False
    lora_rank: int = 16                 # LoRA rank (alpha = 2 x rank)
    epochs: float = 1.0                 # passes over the corpus (fractions allowed)
    lr: float = 5e-4                    # peak learning rate (warmup then cosine decay); 1.5e-3 undid pre-training's next-item skill
    batch_tokens: int = 6144            # padded tokens per micro-batch
    grad_accum: int = 1                 # micro-batches per optimizer step
    max_len: int = 512                  # longest example in tokens (longer ones keep their end)
    precision: str = "auto"             # auto (bf16 where native), fp32 or bf16
    gradient_checkpointing: bool = False  # trade compute for memory on large bases
    seed: int = 0                       # seed for data order, initialisation and sampling
    save_every: int = 200               # optimizer steps between resumable checkpoints (0: never)
    max_steps: int = 0
    head_loss_weight: float = 1.0       # the item head's loss weight (when the init checkpoint has one)


def load_teacher(spec: str | None, view):
    from training.teacher import DeterministicTeacher

    from engine.prompt import item_span

    # Levels 1-2 cite history items as item spans (the engine constrains them to the history and
    # shows each as its title), from the same 20 latest items the prompt shows.
    base = DeterministicTeacher(view.facts, view.embeddings, view.category_word,
                                cite=lambda item_id: item_span(view.codes[item_id]))
    if not spec:
        return base
    from training.langchain_teacher import LangChainTeacher

    module, _, factory = spec.partition(":")
    if not factory:
        raise ValueError(f"--teacher must look like module:factory, got '{spec}'")
    return LangChainTeacher(getattr(importlib.import_module(module), factory)(), base)


def build_examples(view, tokenizer, teacher, args: SFTArgs, history_items: int = 20):
    """The SFT corpus; prompts list the latest ``history_items`` (the parent checkpoint's window)."""
    from training.pretrain import build_examples as alignment_examples
    from training.tasks import DialogueSteering, NextItemCoT, SequenceWindows

    if args.non_thinking not in ("windows", "latest"):
        raise ValueError(f"--non-thinking must be windows or latest, got '{args.non_thinking}'")
    rng = random.Random(args.seed)
    windows = args.non_thinking == "windows"
    examples = NextItemCoT(tokenizer, view, teacher, args.positions_per_user,
                           0 if windows else args.plain_positions_per_user,
                           args.plain_items, args.cot_items, args.history_loss, history_items).build(rng)
    for _ in range(args.sequence_passes if windows else 0):
        for example in SequenceWindows(tokenizer, view, history_items, answer_items=args.plain_items).build(rng):
            example.task = "no_think"
            examples.append(example)
    examples += DialogueSteering(tokenizer, view, teacher, history_items=history_items).build(rng)
    replay, _ = alignment_examples(view, tokenizer, args.seed, history_items=history_items)
    examples += rng.sample(replay, int(len(replay) * args.replay))
    return examples


def run(args: SFTArgs) -> Path:
    import torch

    from training.checkpointing import child_meta, load_model, load_parent, save_checkpoint
    from training.dataset_view import DatasetView
    from training.langchain_teacher import LangChainTeacher
    from training.model_setup import wrap_lora
    from training.trainer import stage_train_args, summary_line, train

    view = DatasetView.load(args.data)
    parent, tokenizer = load_parent(args.init, view)
    torch.manual_seed(args.seed)
    model = load_model(args.init)
    if args.gradient_checkpointing:
        model.activation_checkpointing_enable()
    if args.lora:
        model = wrap_lora(model, args.lora_rank)
    teacher = load_teacher(args.teacher, view)
    examples = build_examples(view, tokenizer, teacher, args, parent.history_items)
    counts = {}
    for e in examples:
        counts[e.task] = counts.get(e.task, 0) + 1
    print(f"sft: {len(examples):,} examples ({counts}), {sum(len(e.ids) for e in examples):,} tokens")
    train_args = stage_train_args(args, warmup_steps=20)
    from engine.item_head import head_of
    from training.item_targets import ItemTargets

    head = head_of(model)
    targets = ItemTargets(tokenizer, view.codes, head.item_ids) if head is not None else None
    summary = train(model, examples, tokenizer.pad_id, Path(args.out), train_args, title="sft", item_targets=targets)
    meta = child_meta(parent, args.init, "sft", asdict(args), summary, lora=args.lora)
    if isinstance(teacher, LangChainTeacher):     # how often the chat model's words were unusable
        meta.args["teacher_fallbacks"] = dict(teacher.fallbacks)
    save_checkpoint(summary["model"], tokenizer, meta, Path(args.out))
    print(summary_line("sft", summary, args.out))
    return Path(args.out)

