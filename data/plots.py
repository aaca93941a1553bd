"""Pictures of a dataset build: how evenly each SID level uses its codes, and how much a
shared prefix means shared content. Written beside the artifacts as ``sid_usage.png``."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_sid_usage(codes: np.ndarray, codebook_size: int, coherence: list[float], baseline: float,
                   path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = codes.shape[1]
    fig, axes = plt.subplots(1, levels + 1, figsize=(4 * (levels + 1), 3.4))
    for level in range(levels):
        counts = np.bincount(codes[:, level], minlength=codebook_size)
        ax = axes[level]
        ax.bar(np.arange(len(counts)), counts, width=1.0, color="#4c72b0")
        ax.axhline(len(codes) / codebook_size, color="#dd8452", linestyle="--", label="perfectly even")
        ax.set_title(f"level {'abcd'[level]}: items per code")
        ax.set_xlabel("code")
        ax.set_xlim(-0.5, codebook_size - 0.5)
        if level == 0:
            ax.set_ylabel("items")
            ax.legend(loc="lower right", fontsize=8)
    ax = axes[-1]
    depths = np.arange(1, len(coherence) + 1)
    ax.plot(depths, coherence, marker="o", label="items sharing the prefix")
    ax.axhline(baseline, color="grey", linestyle=":", label="all item pairs")
    ax.set_xticks(depths)
    ax.set_xlabel("shared prefix length")
    ax.set_ylabel("mean cosine similarity")
    ax.set_title("prefix coherence")
    ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
