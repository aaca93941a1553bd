"""The curves each training run draws beside its checkpoint: ``loss_curve.png`` for the supervised
stages (training/trainer.py) and ``rl_curves.png`` for each GRPO run (training/rl.py).

Both read the run's own log records (dicts with a ``step``), so a resumed run draws its whole
history, not only the part after the restart.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")     # files only: training runs on machines without a display
    import matplotlib.pyplot as plt

    return plt


def plot_curve(log: list[dict], path: Path, title: str, keys: Sequence[str] = ("loss",)) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key in keys:
        points = [(r["step"], r[key]) for r in log if key in r]
        if points:
            ax.plot(*zip(*points), label=key)
    ax.set_xlabel("optimizer step")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_rl(log: list[dict], path: Path, title: str) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5))
    rewards = ["reward", "r_rank", "r_prefix", "r_format", "r_instruction", "r_likelihood", "r_level3"]
    panels = [("reward", rewards), ("KL to reference", ["kl"]),
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
