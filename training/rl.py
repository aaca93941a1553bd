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
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from engine.checkpoint import CheckpointMeta

# Budgets per model size; the tiny one fits `thinkrec train rl` in < 30 min on 2 CPU cores.
BUDGETS = {
    "tiny": {"next_item_steps": 55, "dialogue_steps": 20, "group_size": 8, "prompts_per_step": 8},
    "small": {"next_item_steps": 200, "dialogue_steps": 80, "group_size": 8, "prompts_per_step": 16},
    "medium": {"next_item_steps": 400, "dialogue_steps": 150, "group_size": 8, "prompts_per_step": 32},
}
TASKS = ("next_item", "dialogue")


@dataclass
class RLArgs:
    data: str = "artifacts/ml-100k"     # dataset artifact folder (thinkrec data build)
    init: str = "checkpoints/ml-100k-tiny/sft"  # checkpoint to start from (the SFT stage's output)
    out: str = "checkpoints/ml-100k-tiny/rl"    # output checkpoint folder
    preset: str = "tiny"                # budget for the model size: tiny, small, medium (steps, group, prompts)
    mode: str = "unify"                 # unify (specialize then unify), mixed, next_item or dialogue
    next_item_steps: int = 0            # GRPO steps on next-item prompts (0: the preset's)
    dialogue_steps: int = 0             # GRPO steps on dialogue prompts (0: the preset's)
    group_size: int = 0                 # G: sampled reasoning paths per prompt (0: the preset's)
    prompts_per_step: int = 0           # P: prompts per GRPO step (0: the preset's)
    minibatches: int = 2                # optimizer steps per rollout batch
    temperature: float = 0.8            # sampling temperature of the reasoning (near greedy, which eval uses)
    max_reasoning_tokens: int = 160     # cap on sampled reasoning tokens
    k: int = 10                         # ranked list length the rewards see
    num_beams: int = 10                 # beam width over the SID steps in rollouts
    answer_items: int = 3               # top items written after the reasoning (their tokens are trained)
    lr: float = 1e-4                    # policy learning rate (constant after warmup)
    warmup_steps: int = 5               # optimizer steps of linear warmup
    clip: float = 0.2                   # PPO clip range of the probability ratio
    kl_coef: float = 0.04               # weight of the KL penalty to the starting model
    max_grad_norm: float = 1.0
    scale_advantages: bool = True       # divide by the group's std (False: mean-centred only)
    w_rank: float = 1.0                 # reward weight: rank-aware hit (NDCG-style)
    w_prefix: float = 0.3               # reward weight: hierarchical SID prefix credit
    w_format: float = 0.2               # reward weight: format (levels, closed, valid items)
    w_instruction: float = 0.5          # reward weight: items satisfy the dialogue request
    w_likelihood: float = 1.0           # reward weight: probability of the true next item after the reasoning
    positions_per_user: int = 3         # latest training positions per user used as prompts
    dialogue_share: float = 0.35        # share of dialogue prompts in mixed mode
    keep_min_format: float = 1.0        # format reward a rollout needs to be kept for the unify step
    unify_from: str = "next_item"       # model the unify step fine-tunes: next_item (specialist) or init
    unify_epochs: float = 2.0           # epochs of rejection-sampling fine-tuning
    unify_lr: float = 5e-5              # peak learning rate of the unify fine-tuning (2e-4 forgot: see RESULTS)
    unify_replay: float = 1.0           # non-thinking SFT answers replayed, relative to the rollouts kept
    eval_users: int = 200               # valid users scored (think mode, NDCG@10) during training
    eval_every: int = 25                # GRPO steps between those evaluations (0: only start and end)
    precision: str = "auto"             # auto (bf16 where native), fp32 or bf16
    seed: int = 0                       # seed for prompts, sampling and data order
    save_every: int = 10                # GRPO steps between resumable checkpoints (0: never)


def resolved(args: RLArgs) -> RLArgs:
    """``args`` with the preset's budget filled in where a field was left at 0."""
    if args.preset not in BUDGETS:
        raise ValueError(f"unknown preset '{args.preset}' (choose from {', '.join(BUDGETS)})")
    if args.mode not in ("unify", "mixed", *TASKS):
        raise ValueError(f"unknown mode '{args.mode}' (choose from unify, mixed, {', '.join(TASKS)})")
    if args.unify_from not in ("next_item", "init"):
        raise ValueError(f"--unify-from must be next_item or init, got '{args.unify_from}'")
    filled = {name: getattr(args, name) or value for name, value in BUDGETS[args.preset].items()}
    return RLArgs(**(asdict(args) | filled))


# -- prompts ---------------------------------------------------------------------------------

@dataclass
class Prompt:
    task: str
    history: list[str]
    target: str
    user_text: str | None = None
    request: object | None = None        # training.teacher.Request for dialogue prompts


def build_prompts(view, tokenizer, task: str, positions_per_user: int, seed: int) -> list[Prompt]:
    from training.tasks import DialogueSteering, training_positions

    positions = training_positions(view, positions_per_user)
    if task == "next_item":
        return [Prompt(task, p.history, p.target) for p in positions]
    rng = random.Random(seed)
    steering = DialogueSteering(tokenizer, view, teacher=None)
    prompts = []
    for position in positions:
        request = steering.request_for(position, rng)
        if request is not None:
            prompts.append(Prompt(task, position.history, position.target, request.text, request))
    return prompts


# -- rollouts, rewards, advantages -----------------------------------------------------------

@dataclass
class Rollout:
    prompt: Prompt
    ids: list[int]                       # prompt + completion
    prompt_len: int
    items: list[str]
    reasoning: str
    closed: bool = True                  # the reasoning ended with </think> (not cut by the cap)
    target_logprob: float = 0.0          # log p(true next item's SID | prompt, reasoning)
    reward: float = 0.0
    parts: dict | None = None
    advantage: float = 0.0


def rollout(recommender, prompts: list[Prompt], args: RLArgs, seed: int) -> list[Rollout]:
    """G sampled reasoning paths per prompt, each followed by beam search over the SID steps."""
    import torch

    tok = recommender.tokenizer
    group = args.group_size
    expanded = [p for p in prompts for _ in range(group)]
    torch.manual_seed(seed)
    answers = recommender.recommend([p.history for p in expanded], k=args.k, num_beams=args.num_beams,
                                    thinking=True, user_texts=[p.user_text for p in expanded],
                                    # A request's hard parts restrict the items here as in the app.
                                    constraints=[p.request.constraints() if p.request is not None else None
                                                 for p in expanded],
                                    max_reasoning_tokens=args.max_reasoning_tokens, sample=True,
                                    temperature=args.temperature, batch_size=len(expanded))
    out, scored = [], []
    for prompt, answer in zip(expanded, answers):
        body = [t for t in answer.reasoning_ids if t not in (tok.think_end_id, tok.end_id)]
        completion = body + [tok.think_end_id]
        for item in answer.items[:args.answer_items]:
            completion += [tok.item_begin_id, *item.token_ids, tok.item_end_id]
        completion.append(tok.end_id)
        closed = bool(answer.reasoning_ids) and answer.reasoning_ids[-1] == tok.think_end_id
        out.append(Rollout(prompt, answer.prompt_ids + completion, len(answer.prompt_ids),
                           [str(i.item_id) for i in answer.items], answer.reasoning, closed))
        # Teacher-forced below: the true next item right after this reasoning path.
        scored.append(answer.prompt_ids + body + [tok.think_end_id, tok.item_begin_id])
    targets = [tok.sid_token_ids(recommender.sid_codes[p.target]) for p in expanded]
    for r, value in zip(out, target_logprobs(recommender.model, scored, targets, tok.pad_id)):
        r.target_logprob = value
    return out


def target_logprobs(model, prefixes: list[list[int]], targets: list[list[int]], pad_id: int,
                    batch_size: int = 32) -> list[float]:
    """Summed log-probability of each ``target`` token sequence right after its prefix."""
    import torch

    device = next(model.parameters()).device
    values: list[float] = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(prefixes), batch_size):
            rows = [p + t for p, t in zip(prefixes[start:start + batch_size], targets[start:start + batch_size])]
            ids, attention = _right_pad(rows, pad_id, device)
            logits = model(input_ids=ids, attention_mask=attention).logits
            for i, (prefix, target) in enumerate(zip(prefixes[start:start + batch_size],
                                                     targets[start:start + batch_size])):
                # Position t predicts token t + 1: the target's tokens are predicted from len(prefix) - 1 on.
                logp = torch.log_softmax(logits[i, len(prefix) - 1:len(prefix) - 1 + len(target)].float(), dim=-1)
                values.append(float(logp[torch.arange(len(target)), torch.tensor(target, device=device)].sum()))
    model.train(was_training)
    return values


def reward_weights(args: RLArgs) -> dict[str, float]:
    return {"rank": args.w_rank, "prefix": args.w_prefix, "format": args.w_format,
            "instruction": args.w_instruction, "likelihood": args.w_likelihood}


def score(rollouts: list[Rollout], view, args: RLArgs) -> dict[str, list[float]]:
    from training.rewards import Completion, combine

    completions = [Completion(r.items, r.reasoning, True, r.closed,
                              {"target_logprob": r.target_logprob, "target_tokens": len(view.codes[r.prompt.target])})
                   for r in rollouts]
    total, parts = combine(
        completions, reward_weights(args), k=args.k,
        targets=[r.prompt.target for r in rollouts], target_codes=[view.codes[r.prompt.target] for r in rollouts],
        codes=view.codes, histories=[r.prompt.history for r in rollouts],
        requests=[r.prompt.request for r in rollouts], facts=view.facts)
    for i, r in enumerate(rollouts):
        r.reward = total[i]
        r.parts = {name: values[i] for name, values in parts.items()}
    return parts


def group_advantages(rewards, group_size: int, scale: bool = True, eps: float = 1e-6):
    """GRPO advantages: each reward minus its group's mean (over the group's std when ``scale``).
    Returns (advantages, mask of groups with any variance) — a group of equal rewards gets zeros."""
    import torch

    r = torch.as_tensor(rewards, dtype=torch.float64).view(-1, group_size)
    centred = r - r.mean(dim=1, keepdim=True)
    std = r.std(dim=1, keepdim=True, unbiased=False)
    varied = std.squeeze(1) > eps
    advantages = centred / (std + eps) if scale else centred
    advantages[~varied] = 0.0
    return advantages.view(-1).float(), varied


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


# -- the loss --------------------------------------------------------------------------------

def _right_pad(rows: list[list[int]], pad_id: int, device):
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        attention[i, :len(r)] = 1
    return ids.to(device), attention.to(device)


def _pad(rollouts: list[Rollout], pad_id: int, device):
    import torch

    ids, attention = _right_pad([r.ids for r in rollouts], pad_id, device)
    mask = torch.zeros(ids.shape, dtype=torch.float32, device=device)
    for row, r in enumerate(rollouts):
        mask[row, r.prompt_len:len(r.ids)] = 1.0
    # Position t predicts token t+1: the loss mask moves one to the left.
    return ids, attention, mask[:, 1:]


def token_logprobs(model, ids, attention, with_entropy: bool = False):
    import torch

    logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1].float()
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, ids[:, 1:, None]).squeeze(-1)
    if not with_entropy:
        return logp, None
    with torch.no_grad():
        entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def grpo_loss(logp, old_logp, ref_logp, advantages, mask, clip: float, kl_coef: float):
    """Clipped surrogate + k3 KL to the reference, averaged over completion tokens.
    Returns (loss, stats) with the mean KL and the share of clipped tokens."""
    import torch

    ratio = torch.exp(logp - old_logp)
    adv = advantages[:, None]
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
    log_ref_ratio = ref_logp - logp
    kl = torch.exp(log_ref_ratio) - log_ref_ratio - 1
    tokens = mask.sum().clamp(min=1)
    loss = (-(surrogate - kl_coef * kl) * mask).sum() / tokens
    clipped = ((ratio - 1).abs() > clip).float()
    return loss, {"kl": float((kl.detach() * mask).sum() / tokens), "clip_frac": float((clipped * mask).sum() / tokens)}


# -- one GRPO run ----------------------------------------------------------------------------

def _valid_ndcg(recommender, rows, args: RLArgs) -> float:
    from training.metrics import hit_ndcg

    answers = recommender.recommend([r["history"] for r in rows], k=args.k, num_beams=args.num_beams,
                                    thinking=True, max_reasoning_tokens=args.max_reasoning_tokens, batch_size=32)
    return hit_ndcg([[str(i.item_id) for i in a.items] for a in answers], [r["target"] for r in rows], (10,))["ndcg@10"]


def plot_rl(log: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5))
    panels = [("reward", ["reward", "r_rank", "r_prefix", "r_format", "r_instruction", "r_likelihood"]), ("KL to reference", ["kl"]),
              ("valid NDCG@10 (think)", ["valid_ndcg@10"]), ("zero-variance groups / entropy", ["zero_var_share", "entropy"])]
    for ax, (name, keys) in zip(axes.flat, panels):
        for key in keys:
            points = [(r["step"], r[key]) for r in log if r.get(key) is not None]
            if points:
                ax.plot(*zip(*points), marker="o" if key == "valid_ndcg@10" else None, label=key,
                        alpha=0.45 if key == "reward" else 1.0)
            if key == "reward" and len(points) >= 10:   # per-step rewards are noisy: show the trend
                steps, values = zip(*points)
                trend = [sum(values[max(0, i - 9):i + 1]) / len(values[max(0, i - 9):i + 1]) for i in range(len(values))]
                ax.plot(steps, trend, color="black", linewidth=2, label="reward, 10-step mean")
        ax.set_title(name)
        ax.set_xlabel("GRPO step")
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def grpo(model, tokenizer, view, prompts: dict[str, list[Prompt]], shares: dict[str, float], steps: int,
         args: RLArgs, out: Path, title: str, on_step=None, history_items: int = 20) -> dict:
    """Train ``model`` in place for ``steps`` GRPO steps; resumes from ``out/trainer_state``."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    from engine.recommender import Recommender
    from training.trainer import bf16_native

    out.mkdir(parents=True, exist_ok=True)
    precision = args.precision if args.precision != "auto" else ("bf16" if bf16_native() else "fp32")
    accelerator = Accelerator(mixed_precision="bf16" if precision == "bf16" else "no")
    set_seed(args.seed)
    reference = copy.deepcopy(model).eval().to(accelerator.device)
    for p in reference.parameters():
        p.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr,
                                  betas=(0.9, 0.99), weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, args.warmup_steps)))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    policy = accelerator.unwrap_model(model)
    from data.catalog import Catalog

    recommender = Recommender(policy, tokenizer, view.codes, history_items=history_items, facets=view.facets, category_word=view.category_word,
                              same_item=Catalog(view.folder).duplicates())
    eval_rows = view.valid[:args.eval_users]

    state_dir, progress_file = out / "trainer_state", out / "trainer_state" / "progress.json"
    step, log, kept = 0, [], []
    if progress_file.exists():
        accelerator.load_state(str(state_dir))
        saved = json.loads(progress_file.read_text())
        step, log, kept = saved["step"], saved["log"], saved["kept"]
        accelerator.print(f"Resuming {title} at step {step}/{steps} from {state_dir}")
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
            stats = _update(model, reference, optimizer, scheduler, accelerator, train_rows, tokenizer.pad_id,
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
            accelerator.save_state(str(state_dir))
            progress_file.write_text(json.dumps({"step": step, "log": log, "kept": kept}))
    bar.close()
    seconds = time.perf_counter() - started
    with (out / "rl_log.jsonl").open("w") as handle:
        for record in log:
            handle.write(json.dumps(record) + "\n")
    with (out / "rollouts.jsonl").open("w") as handle:
        for row in kept:
            text = tokenizer.decode(row["ids"][row["prompt_len"]:])
            handle.write(json.dumps(row | {"completion": text}) + "\n")
    plot_rl(log, out / "rl_curves.png", title)
    return {"model": accelerator.unwrap_model(model), "steps": step, "seconds": round(seconds, 1),
            "log": log, "kept": kept}


def _update(model, reference, optimizer, scheduler, accelerator, rows: list[Rollout], pad_id: int,
            args: RLArgs, rng: random.Random) -> dict:
    import torch

    device = accelerator.device
    ids, attention, mask = _pad(rows, pad_id, device)
    advantages = torch.tensor([r.advantage for r in rows], device=device)
    with torch.no_grad(), accelerator.autocast():
        old_logp, _ = token_logprobs(model, ids, attention)
        ref_logp, _ = token_logprobs(reference, ids, attention)
    order = list(range(len(rows)))
    rng.shuffle(order)
    chunks = [order[i::args.minibatches] for i in range(min(args.minibatches, len(rows)))]
    model.train()
    totals = {"loss": 0.0, "kl": 0.0, "clip_frac": 0.0, "entropy": 0.0, "grad_norm": 0.0}
    for chunk in chunks:
        index = torch.tensor(sorted(chunk), device=device)
        with accelerator.autocast():
            logp, entropy = token_logprobs(model, ids[index], attention[index], with_entropy=True)
        loss, stats = grpo_loss(logp, old_logp[index], ref_logp[index], advantages[index], mask[index],
                                args.clip, args.kl_coef)
        accelerator.backward(loss)
        norm = accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        m = mask[index]
        totals["loss"] += float(loss.detach())
        totals["kl"] += stats["kl"]
        totals["clip_frac"] += stats["clip_frac"]
        totals["entropy"] += float((entropy * m).sum() / m.sum().clamp(min=1))
        totals["grad_norm"] += float(norm)
        if not math.isfinite(totals["loss"]):
            raise FloatingPointError(f"GRPO loss is {totals['loss']}; lower --lr or check the checkpoint")
    return {k: v / len(chunks) for k, v in totals.items()}


# -- stages ----------------------------------------------------------------------------------

def _meta(parent: CheckpointMeta, init: str, stage: str, args: RLArgs, summary: dict) -> CheckpointMeta:
    evals = [r["valid_ndcg@10"] for r in summary.get("log", []) if r.get("valid_ndcg@10") is not None]
    return parent.model_copy(update={
        "stage": stage, "parent": init, "args": asdict(args) | {"valid_ndcg@10_curve": evals},
        "steps": summary["steps"], "train_seconds": summary["seconds"], "final_loss": summary.get("final_loss"),
        "created_at": CheckpointMeta.model_fields["created_at"].default_factory(),
        "history": parent.history + [{"stage": parent.stage, "args": parent.args, "steps": parent.steps,
                                      "train_seconds": parent.train_seconds}]})


def _load(path: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, local_files_only=True)


def _read_kept(folder: Path) -> list[dict]:
    path = folder / "rollouts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def run_grpo(args: RLArgs, view, tokenizer, parent: CheckpointMeta, tasks: dict[str, float], steps: int,
             out: Path, title: str) -> Path:
    from training.model_setup import save_checkpoint

    if (out / "thinkrec.json").exists() and CheckpointMeta.load(out).stage == "rl":
        print(f"{title}: finished earlier, reusing {out}")
        return out
    prompts = {task: build_prompts(view, tokenizer, task, args.positions_per_user, args.seed) for task in tasks}
    print(f"{title}: {steps} GRPO steps x {args.prompts_per_step} prompts x {args.group_size} paths; "
          + ", ".join(f"{len(p):,} {t} prompts" for t, p in prompts.items()))
    summary = grpo(_load(args.init), tokenizer, view, prompts, tasks, steps, args, out, title,
                   history_items=parent.history_items)
    meta = _meta(parent, args.init, "rl", args, summary)
    meta.args["tasks"] = list(tasks)
    save_checkpoint(summary["model"], tokenizer, meta, out)
    last = summary["log"][-1]
    print(f"{title}: {summary['steps']} steps in {summary['seconds']:.0f} s, reward {last['reward']:.3f}, "
          f"valid NDCG@10 {last.get('valid_ndcg@10')} -> {out}")
    return out


def unify(args: RLArgs, view, tokenizer, parent: CheckpointMeta, specialists: dict[str, Path], out: Path) -> Path:
    """Rejection-sampling fine-tuning on the specialists' kept rollouts (plus non-thinking replay)."""
    from training.model_setup import save_checkpoint
    from training.sft import SFTArgs, build_examples, load_teacher
    from training.trainer import Example, TrainArgs, train

    rng = random.Random(args.seed)
    examples = []
    for task, folder in specialists.items():
        for row in _read_kept(folder):
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
    summary = train(_load(start), examples, tokenizer.pad_id, out, train_args, title="unify")
    meta = _meta(CheckpointMeta.load(Path(start)), start, "unified", args, summary)
    meta.args["unify_examples"] = counts
    meta.args["specialists"] = {t: str(p) for t, p in specialists.items()}
    save_checkpoint(summary["model"], tokenizer, meta, out)
    print(f"unify: {summary['steps']} steps in {summary['seconds']:.0f} s -> {out}")
    return out


def run(args: RLArgs) -> Path:
    import torch

    from engine.checkpoint import check_matches
    from engine.tokenizer import ThinkrecTokenizer
    from training.dataset_view import DatasetView

    args = resolved(args)
    view = DatasetView.load(args.data)
    parent = CheckpointMeta.load(Path(args.init))
    check_matches(parent, view.manifest, Path(args.init), Path(args.data))
    tokenizer = ThinkrecTokenizer.load(args.init)
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


if __name__ == "__main__":
    from app.cli import app

    app(["train", "rl", *__import__("sys").argv[1:]])
