"""The GRPO maths: group-relative advantages, per-token log-probabilities, the clipped surrogate
with a k3 KL penalty to the frozen starting model, and one policy update over the minibatches of a
rollout batch. Tensors in, tensors out; training/rl.py runs the loop around them.
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from training.rl_args import RLArgs


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


def right_pad(rows: list[list[int]], pad_id: int, device):
    """Token rows as one (ids, attention) batch, padded on the right."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        attention[i, :len(r)] = 1
    return ids.to(device), attention.to(device)


def pad_rollouts(rollouts: list, pad_id: int, device):
    """(ids, attention, mask): the mask is 1 where a completion token is predicted (not the prompt)."""
    import torch

    ids, attention = right_pad([r.ids for r in rollouts], pad_id, device)
    mask = torch.zeros(ids.shape, dtype=torch.float32, device=device)
    for row, r in enumerate(rollouts):
        mask[row, r.prompt_len:len(r.ids)] = 1.0
    # Position t predicts token t+1: the loss mask moves one to the left.
    return ids, attention, mask[:, 1:]


def token_logprobs(model, ids, attention, with_entropy: bool = False):
    """Log-probability of each next token (and, if asked, the entropy there, for the logs only)."""
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
            ids, attention = right_pad(rows, pad_id, device)
            logits = model(input_ids=ids, attention_mask=attention).logits
            for i, (prefix, target) in enumerate(zip(prefixes[start:start + batch_size],
                                                     targets[start:start + batch_size])):
                # Position t predicts token t + 1: the target's tokens are predicted from len(prefix) - 1 on.
                logp = torch.log_softmax(logits[i, len(prefix) - 1:len(prefix) - 1 + len(target)].float(), dim=-1)
                values.append(float(logp[torch.arange(len(target)), torch.tensor(target, device=device)].sum()))
    model.train(was_training)
    return values


def update_policy(model, reference, optimizer, scheduler, accelerator, rows: list, pad_id: int,
                  args: RLArgs, rng: random.Random) -> dict:
    """One rollout batch as ``args.minibatches`` optimizer steps. The old log-probabilities are taken
    once before the first step, so later minibatches are a little off-policy: that is what the clip
    is for. Returns the mean loss, KL, clip share, entropy and gradient norm."""
    import torch

    device = accelerator.device
    ids, attention, mask = pad_rollouts(rows, pad_id, device)
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
