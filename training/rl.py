"""Stage 3 — reinforcement learning with GRPO on recommendation rewards, specialize-then-unify.

    thinkrec train rl --data artifacts/ml-100k --init checkpoints/ml-100k-tiny/sft \
        --out checkpoints/ml-100k-tiny/rl --preset tiny
    thinkrec train rl ... --mode mixed --out checkpoints/ml-100k-tiny/rl-mixed

One GRPO step: take P prompts (a user's history at a training position, for dialogue prompts with
a request the true next item satisfies); for each, sample G reasoning paths from the policy
(temperature sampling under the gated SID constraint); after each path, beam search over the SID
steps under the catalog trie gives a ranked list — the very :class:`~engine.recommender.Recommender`
code eval and the app use. The completion the policy is scored on is the reasoning plus the top
``answer_items`` items. Rewards (:mod:`training.rewards`) are combined with weights — the
rank-aware hit of the beam list, SID prefix credit, format, instruction following, and the
probability the path gives the true next item (dense: it separates paths that both miss); advantages
are the reward minus the group mean, over the group's standard deviation. Groups whose rewards are
all equal carry no signal: their share is logged and they are left out of the update. The loss is
PPO's clipped surrogate per token (reasoning and item tokens), minus ``kl_coef`` times the k3
estimate of the KL to the frozen starting model, averaged over the tokens of a minibatch; the
rollout batch is split into ``minibatches`` optimizer steps, so later minibatches are slightly
off-policy and the clip matters.

Modes:
  unify (default)  specialize-then-unify: GRPO on next-item recommendation (``OUT/next_item``), GRPO
                   on dialogue steering (``OUT/dialogue``), both from ``init``; then rejection-sampling
                   fine-tuning merges them: the best rollout of each group that succeeded (hit the
                   target, or for dialogue met the request) becomes an SFT example, and
                   ``unify_from`` is fine-tuned on both specialists' examples plus a replay of the
                   non-thinking SFT answers (so the non-thinking mode is kept). Result in ``OUT``.
  mixed            one GRPO run over both tasks' prompts, as many steps as the two specialists.
  next_item, dialogue  one specialist only, written to ``OUT``.

Every run is resumable (state every ``save_every`` steps; a finished specialist is reused), logs
reward / KL / entropy / length / zero-variance share per step and NDCG@10 on a fixed slice of the
valid users every ``eval_every`` steps, and draws them into ``rl_curves.png``.

This file holds the arguments, one GRPO run and the modes; the parts live beside it:
training/rollouts.py (prompts, rollouts, rewards), training/grpo.py (advantages, the loss, one
policy update), training/unify.py (rejection sampling and the unify step), training/plots.py.
"""

from __future__ import annotations

import copy
import json
import random
import time
from dataclasses import asdict
from pathlib import Path

from engine.checkpoint import CheckpointMeta
from training.checkpointing import (child_meta, finished_stage, load_model, load_parent, resume_state,
                                    save_checkpoint, save_resume_state)
from training.rl_args import TASKS, RLArgs, resolved
from training.grpo import group_advantages, update_policy
from training.plots import plot_rl
from training.rollouts import Prompt, build_prompts, rollout, score
from training.unify import KEPT_FILE, best_of_group, unify

# -- one GRPO run ----------------------------------------------------------------------------

def _valid_ndcg(recommender, rows, args: RLArgs) -> float:
    from training.metrics import hit_ndcg

    answers = recommender.recommend([r["history"] for r in rows], k=args.k, num_beams=args.num_beams,
                                    thinking=True, max_reasoning_tokens=args.max_reasoning_tokens, batch_size=32)
    return hit_ndcg([[str(i.item_id) for i in a.items] for a in answers], [r["target"] for r in rows], (10,))["ndcg@10"]


def grpo(model, tokenizer, view, prompts: dict[str, list[Prompt]], shares: dict[str, float], steps: int,
         args: RLArgs, out: Path, title: str, on_step=None, history_items: int = 20) -> dict:
    """Train ``model`` in place for ``steps`` GRPO steps; resumes from ``out/trainer_state``."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    from data.catalog import Catalog
    from engine.recommender import Recommender, interest_reader
    from training.trainer import mixed_precision

    out.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(mixed_precision=mixed_precision(args.precision))
    set_seed(args.seed)
    reference = copy.deepcopy(model).eval().to(accelerator.device)
    for p in reference.parameters():
        p.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr,
                                  betas=(0.9, 0.99), weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, args.warmup_steps)))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    policy = accelerator.unwrap_model(model)
    # Rollouts reason as the app does: levels 1-2 and level 3's lead written by the engine, the
    # rest of level 3 (further categories, the decade) and the items the policy's.
    catalog = Catalog(view.folder)
    recommender = Recommender(policy, tokenizer, view.codes, history_items=history_items, facets=view.facets, category_word=view.category_word,
                              same_item=catalog.duplicates(), reader=interest_reader(catalog, view.codes))
    eval_rows = view.valid[:args.eval_users]

    progress = resume_state(accelerator, out, title, steps)
    step, log, kept = (progress["step"], progress["log"], progress["kept"]) if progress else (0, [], [])
    if step == 0 and args.eval_users:
        log.append({"step": 0, "valid_ndcg@10": _valid_ndcg(recommender, eval_rows, args)})

    started = time.perf_counter()
    bar = tqdm(total=steps, initial=step, desc=title, unit="step", disable=not accelerator.is_main_process)
    while step < steps:
        step_seed = args.seed * 1_000_003 + step
        rng = random.Random(step_seed)
        tasks = rng.choices(list(shares), weights=list(shares.values()), k=args.prompts_per_step)
        batch = [rng.choice(prompts[task]) for task in tasks]
        t0 = time.perf_counter()
        rollouts = rollout(recommender, batch, args, step_seed)
        t_rollout = time.perf_counter() - t0
        parts = score(rollouts, view, args)
        advantages, varied = group_advantages([r.reward for r in rollouts], args.group_size, args.scale_advantages)
        for r, a in zip(rollouts, advantages.tolist()):
            r.advantage = a
        kept += [{"ids": r.ids, "prompt_len": r.prompt_len, "task": r.prompt.task, "reward": r.reward}
                 for r in best_of_group(rollouts, args.group_size, args.keep_min_format)]
        train_rows = [r for g, ok in enumerate(varied.tolist()) if ok
                      for r in rollouts[g * args.group_size:(g + 1) * args.group_size]]
        stats = {"loss": None, "kl": None, "clip_frac": None, "entropy": None, "grad_norm": None}
        if train_rows:
            stats = update_policy(model, reference, optimizer, scheduler, accelerator, train_rows, tokenizer.pad_id,
                                  args, random.Random(step_seed))
        step += 1
        bar.update(1)
        lengths = [len(r.ids) - r.prompt_len for r in rollouts]
        record = {"step": step, "reward": sum(r.reward for r in rollouts) / len(rollouts),
                  **{f"r_{name}": sum(v) / len(v) for name, v in parts.items()},
                  "hit_rate": sum(v > 0 for v in parts.get("rank", [0])) / len(rollouts),
                  "zero_var_share": 1 - float(varied.float().mean()), **stats,
                  "completion_tokens": sum(lengths) / len(lengths),
                  "closed_rate": sum(r.closed for r in rollouts) / len(rollouts),
                  "lr": scheduler.get_last_lr()[0], "rollout_s": round(t_rollout, 2),
                  "step_s": round(time.perf_counter() - t0, 2), "kept": len(kept)}
        if args.eval_users and ((args.eval_every and step % args.eval_every == 0) or step == steps):
            record["valid_ndcg@10"] = _valid_ndcg(recommender, eval_rows, args)
        log.append(record)
        bar.set_postfix(reward=f"{record['reward']:.3f}", kl=f"{record['kl'] or 0:.4f}",
                        zero_var=f"{record['zero_var_share']:.2f}")
        if on_step:
            on_step(record)
        if args.save_every and step % args.save_every == 0 and step < steps:
            save_resume_state(accelerator, out, {"step": step, "log": log, "kept": kept})
    bar.close()
    seconds = time.perf_counter() - started
    with (out / "rl_log.jsonl").open("w") as handle:
        for record in log:
            handle.write(json.dumps(record) + "\n")
    with (out / KEPT_FILE).open("w") as handle:
        for row in kept:
            text = tokenizer.decode(row["ids"][row["prompt_len"]:])
            handle.write(json.dumps(row | {"completion": text}) + "\n")
    plot_rl(log, out / "rl_curves.png", title)
    return {"model": accelerator.unwrap_model(model), "steps": step, "seconds": round(seconds, 1),
            "log": log, "kept": kept}


# -- the modes ------------------------------------------------------------------------------

def run_grpo(args: RLArgs, view, tokenizer, parent: CheckpointMeta, tasks: dict[str, float], steps: int,
             out: Path, title: str) -> Path:
    """One GRPO run from ``init`` over ``tasks`` (task -> share of the prompts), saved to ``out``."""
    if finished_stage(out) == "rl":
        print(f"{title}: finished earlier, reusing {out}")
        return out
    prompts = {task: build_prompts(view, tokenizer, task, args.positions_per_user, args.seed) for task in tasks}
    print(f"{title}: {steps} GRPO steps x {args.prompts_per_step} prompts x {args.group_size} paths; "
          + ", ".join(f"{len(p):,} {t} prompts" for t, p in prompts.items()))
    summary = grpo(load_model(args.init), tokenizer, view, prompts, tasks, steps, args, out, title,
                   history_items=parent.history_items)
    curve = [r["valid_ndcg@10"] for r in summary["log"] if r.get("valid_ndcg@10") is not None]
    meta = child_meta(parent, args.init, "rl", asdict(args) | {"valid_ndcg@10_curve": curve, "tasks": list(tasks)},
                      summary)
    save_checkpoint(summary["model"], tokenizer, meta, out)
    last = summary["log"][-1]
    print(f"{title}: {summary['steps']} steps in {summary['seconds']:.0f} s, reward {last['reward']:.3f}, "
          f"valid NDCG@10 {last.get('valid_ndcg@10')} -> {out}")
    return out


def run(args: RLArgs) -> Path:
    """``thinkrec train rl``: the mode's GRPO run(s) from ``init``, then (unify) the merged model."""
    import torch

    from training.dataset_view import DatasetView

    args = resolved(args)
    view = DatasetView.load(args.data)
    parent, tokenizer = load_parent(args.init, view)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    steps = {"next_item": args.next_item_steps, "dialogue": args.dialogue_steps}
    if args.mode in TASKS:
        return run_grpo(args, view, tokenizer, parent, {args.mode: 1.0}, steps[args.mode], out, f"rl {args.mode}")
    if args.mode == "mixed":
        shares = {"next_item": 1 - args.dialogue_share, "dialogue": args.dialogue_share}
        return run_grpo(args, view, tokenizer, parent, shares, sum(steps.values()), out, "rl mixed")
    specialists = {task: run_grpo(args, view, tokenizer, parent, {task: 1.0}, steps[task], out / task, f"rl {task}")
                   for task in TASKS}
    return unify(args, view, tokenizer, parent, specialists, out)
