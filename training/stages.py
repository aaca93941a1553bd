"""Glue between the CLI and the stage scripts: ``train all`` (pretrain then SFT), the SASRec
baseline, and error handling that turns known failures into one clear line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import typer

from training.evaluate import EvalArgs
from training.pretrain import PretrainArgs
from training.sft import SFTArgs


@dataclass
class AllArgs:
    data: str = "artifacts/ml-100k"     # dataset artifact folder (thinkrec data build)
    out: str = "checkpoints/ml-100k-tiny"   # pretrain/ and sft/ are written inside
    preset: str = "tiny"                # model size from scratch: tiny, small, medium
    base_model: str | None = None           # a local pretrained model folder instead of a preset
    lora: bool = False
    pretrain_epochs: float = 2.0        # epochs of perception pre-training
    sft_epochs: float = 1.0             # epochs of reasoning SFT
    sequence_passes: int = 0            # passes over every user sequence per pre-training epoch (0: sized by the data, see sequence_tokens)
    sequence_tokens: int = 1_500_000    # with sequence_passes 0: next-item tokens per pre-training epoch (3 to 40 passes)
    history_items: int = 20             # latest history items a prompt lists
    precision: str = "auto"             # auto (bf16 where native), fp32 or bf16
    seed: int = 0                       # seed for data order, initialisation and sampling
    item_head: bool = True              # an item-ID head beside the SID tokens (engine/item_head.py)
    head_loss_weight: float = 1.0       # the item head's loss weight beside the token loss
    distill_weight: float = 0.0         # pre-training distils SASRec's soft targets at this weight (0: off); SASRec is trained first
    distill_temperature: float = 1.0    # the teacher's softmax temperature


@dataclass
class BaselineArgs:
    data: str = "artifacts/ml-100k"     # dataset artifact folder (thinkrec data build)
    out: str = "checkpoints/ml-100k-tiny/sasrec.pt"  # output checkpoint folder
    epochs: int = 200                       # upper bound; early stopping on valid NDCG@10
    seed: int = 0                       # seed for data order, initialisation and sampling


def _guard(run, args):
    from data.records import DataFormatError
    from engine.checkpoint import CheckpointMismatch

    try:
        return run(args)
    except (CheckpointMismatch, FileNotFoundError, DataFormatError, ValueError) as error:
        typer.secho(f"error: {error}", fg="red", err=True)
        raise typer.Exit(1)


def run_pretrain(args: PretrainArgs):
    from training import pretrain

    return _guard(pretrain.run, args)


def run_sft(args: SFTArgs):
    from training import sft

    return _guard(sft.run, args)


def run_rl(args):
    from training import rl

    return _guard(rl.run, args)


def ensure_dataset(data: str) -> None:
    """Build the default dataset on first use, so `train all` works from a fresh clone."""
    folder = Path(data)
    if (folder / "manifest.json").exists():
        return
    if folder.name != "ml-100k":
        raise FileNotFoundError(f"{folder} has no manifest.json; build it first with thinkrec data build --out {folder}")
    from data.build import build
    from data.manifest import BuildConfig

    build(BuildConfig(dataset="ml-100k"), folder)


def run_all(args: AllArgs):
    _guard(ensure_dataset, args.data)
    out = Path(args.out)
    pre = PretrainArgs(data=args.data, out=str(out / "pretrain"), preset=args.preset, base_model=args.base_model,
                       lora=args.lora, epochs=args.pretrain_epochs, precision=args.precision, seed=args.seed,
                       sequence_passes=args.sequence_passes, sequence_tokens=args.sequence_tokens,
                       history_items=args.history_items, item_head=args.item_head,
                       head_loss_weight=args.head_loss_weight, distill_weight=args.distill_weight,
                       distill_temperature=args.distill_temperature)
    if args.distill_weight > 0:
        # The teacher first: it is also the SASRec that eval and the Compare tab use.
        pre.teacher = str(out / "sasrec.pt")
        if not Path(pre.teacher).exists():
            run_baseline(BaselineArgs(data=args.data, out=pre.teacher, seed=args.seed))
    sft = SFTArgs(data=args.data, init=str(out / "pretrain"), out=str(out / "sft"), lora=args.lora,
                  epochs=args.sft_epochs, precision=args.precision, seed=args.seed,
                  head_loss_weight=args.head_loss_weight)
    run_pretrain(pre)
    done = run_sft(sft)
    # SASRec: the Compare tab's baseline and eval's (and distillation's) teacher, so the app never
    # has to train anything when it starts.
    if not (out / "sasrec.pt").exists():
        run_baseline(BaselineArgs(data=args.data, out=str(out / "sasrec.pt"), seed=args.seed))
    return done


def run_baseline(args: BaselineArgs):
    def train(args: BaselineArgs):
        from training.dataset_view import DatasetView
        from training.sasrec import fit_on

        model = fit_on(DatasetView.load(args.data), args.epochs, args.seed)
        model.save(args.out)
        print(f"sasrec: best valid epoch {model.best_epoch} -> {args.out}")
        return Path(args.out)

    return _guard(train, args)


def run_eval(args: EvalArgs):
    from training import evaluate

    return _guard(evaluate.run, args)


