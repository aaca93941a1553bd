"""The RL stage's settings (``thinkrec train rl``), on their own so that the GRPO update, the
rollouts and the unify step can name them without importing the stage that runs them."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from engine.reasoning import FULL_REASONING_TOKENS

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
    # The app's full budget, so rollouts reason as the app does: under a smaller cap the engine
    # writes levels 1-2 in their shorter form, text the app never shows.
    max_reasoning_tokens: int = FULL_REASONING_TOKENS   # cap on sampled reasoning tokens
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
    w_level3: float = 0.5               # reward weight: level 3's stated categories and decade match the next item
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
