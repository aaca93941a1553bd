"""GRPO's rollouts: the prompts RL trains on, G sampled reasoning paths per prompt, each followed
by beam search over the SID steps, and their rewards (:mod:`training.rewards`).

Rollouts come from the very :class:`~engine.recommender.Recommender` code eval and the app use, so
the policy is scored on what people would be shown. Driven by training/rl.py (``thinkrec train rl``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from training.grpo import target_logprobs

if TYPE_CHECKING:
    from training.rl_args import RLArgs


@dataclass
class Prompt:
    task: str
    history: list[str]
    target: str
    user_text: str | None = None
    request: object | None = None        # training.teacher.Request for dialogue prompts


def build_prompts(view, tokenizer, task: str, positions_per_user: int, seed: int) -> list[Prompt]:
    """The latest training positions of every user; for dialogue, only those with a request the
    true next item satisfies (so a rollout can both follow the user and hit the target)."""
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


def reward_weights(args: RLArgs) -> dict[str, float]:
    return {"rank": args.w_rank, "prefix": args.w_prefix, "format": args.w_format,
            "instruction": args.w_instruction, "likelihood": args.w_likelihood, "level3": args.w_level3}


def score(rollouts: list[Rollout], view, args: RLArgs) -> dict[str, list[float]]:
    """Set each rollout's weighted reward and its parts; returns every reward's values, for the log."""
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
