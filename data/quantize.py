"""Semantic IDs by balanced residual k-means, then made unique per item.

Each level clusters the residual left by the levels before it (faiss k-means), and assigns items
to centroids under a capacity so every code is used about equally: an even code distribution
keeps SID prefixes informative and the trie bushy. Items that still share a full code tuple are
separated by reassigning the last level inside their prefix group (nearest free code first); only
if a prefix group holds more items than the codebook has codes does an extra level ``d`` appear.

Used by ``thinkrec data build`` (``--quantizer rkmeans``, the default; ``rqvae`` is the torch
alternative in :mod:`data.rqvae`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import numpy as np


@dataclass
class Quantization:
    codes: np.ndarray            # (num_items, levels) int64
    last_residuals: np.ndarray   # (num_items, dim): what the last level quantized
    last_codebook: np.ndarray    # (codebook_size, dim): the last level's centroids
    method: str


@dataclass
class UniqueSIDs:
    codes: np.ndarray            # (num_items, levels [+1]) int64, every row distinct
    collisions_before: int       # items whose code tuple repeated an earlier item's
    reassigned: int              # items moved to another last-level code
    extra_level: bool            # whether a disambiguation level had to be added
    utilization: list[float]     # per level: share of codes used
    perplexity: list[float]      # per level: exp(entropy) of code usage / codebook size


def codebook_size_for(num_items: int, levels: int, max_size: int = 256) -> int:
    """Smallest power of two whose ``levels``-deep code space is ~16x the catalog, in [8, max].

    The headroom leaves about one item per last-level prefix group, so collisions are rare and
    the last level can always separate them.
    """
    needed = math.ceil((16 * max(num_items, 1)) ** (1.0 / levels))
    return int(min(max_size, max(8, 2 ** math.ceil(math.log2(needed)))))


def balanced_assign(x: np.ndarray, centroids: np.ndarray, capacity: int, candidates: int = 16) -> np.ndarray:
    """Assign each row to a centroid with at most ``capacity`` rows per centroid.

    Greedy by regret: rows that lose most by not getting their nearest centroid choose first.
    """
    num_rows, num_codes = len(x), len(centroids)
    if capacity * num_codes < num_rows:
        raise ValueError(f"capacity {capacity} x {num_codes} codes cannot hold {num_rows} rows")
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(centroids)
    k = min(num_codes, candidates)
    dist, cand = index.search(x, k)
    regret = dist[:, 1] - dist[:, 0] if k > 1 else np.zeros(num_rows, dtype=np.float32)
    order = np.argsort(-regret, kind="stable")
    load = np.zeros(num_codes, dtype=np.int64)
    labels = np.full(num_rows, -1, dtype=np.int64)
    leftovers = []
    for row in order:
        for code in cand[row]:
            if load[code] < capacity:
                labels[row] = code
                load[code] += 1
                break
        else:
            leftovers.append(row)
    if leftovers:  # all candidate centroids were full: fall back to the whole codebook
        full_dist, full_cand = index.search(x[leftovers], num_codes)
        for row, codes in zip(leftovers, full_cand):
            code = next(c for c in codes if load[c] < capacity)
            labels[row] = code
            load[code] += 1
    return labels


def _train_centroids(x: np.ndarray, num_codes: int, seed: int, niter: int) -> np.ndarray:
    if len(x) <= num_codes:
        # Too few rows to cluster: every row is its own centroid, the rest are spread points.
        rng = np.random.default_rng(seed)
        extra = rng.normal(scale=float(x.std() or 1.0), size=(num_codes - len(x), x.shape[1]))
        return np.vstack([x, extra]).astype(np.float32)
    kmeans = faiss.Kmeans(x.shape[1], num_codes, niter=niter, seed=seed, verbose=False,
                          max_points_per_centroid=100_000)
    kmeans.train(x)
    return kmeans.centroids.copy()


def residual_kmeans(embeddings: np.ndarray, levels: int, codebook_size: int, seed: int = 0,
                    niter: int = 25, balance_slack: float = 0.0, balance_rounds: int = 3,
                    progress=None) -> Quantization:
    """Balanced residual k-means over ``embeddings`` (num_items, dim)."""
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    num_items = len(x)
    residual = x.copy()
    codes = np.zeros((num_items, levels), dtype=np.int64)
    capacity = max(1, math.ceil(num_items / codebook_size * (1.0 + balance_slack)))
    last_residuals, last_codebook = residual, None
    for level in range(levels):
        centroids = _train_centroids(residual, codebook_size, seed + level, niter)
        for _ in range(balance_rounds):
            labels = balanced_assign(residual, centroids, capacity)
            # Move each centroid to the mean of what it holds, so residuals stay centred.
            sums = np.zeros_like(centroids)
            np.add.at(sums, labels, residual)
            counts = np.bincount(labels, minlength=codebook_size)
            held = counts > 0
            centroids[held] = sums[held] / counts[held, None]
        codes[:, level] = labels
        last_residuals, last_codebook = residual.copy(), centroids.copy()
        residual = residual - centroids[labels]
        if progress is not None:
            progress(level + 1, levels)
    return Quantization(codes, last_residuals, last_codebook, "rkmeans")


def _usage_stats(column: np.ndarray, size: int) -> tuple[float, float]:
    counts = np.bincount(column, minlength=size).astype(np.float64)
    used = float((counts > 0).sum()) / size
    p = counts[counts > 0] / counts.sum()
    perplexity = float(np.exp(-(p * np.log(p)).sum())) / size
    return used, perplexity


def _count_repeats(codes: np.ndarray) -> int:
    return int(len(codes) - len(np.unique(codes, axis=0)))


def make_unique(quant: Quantization, codebook_size: int) -> UniqueSIDs:
    """Give every item a distinct code tuple (see module docstring for the order of remedies)."""
    codes = quant.codes.copy()
    num_items, levels = codes.shape
    collisions_before = _count_repeats(codes)
    reassigned = 0

    groups: dict[tuple, list[int]] = {}
    for row, prefix in enumerate(map(tuple, codes[:, :-1])):
        groups.setdefault(prefix, []).append(row)
    for rows in groups.values():
        last = codes[rows, -1]
        if len(rows) < 2 or len(np.unique(last)) == len(rows):
            continue
        if len(rows) > codebook_size:
            # More items than codes (e.g. identical item texts): spread them evenly over the
            # last level first, so the extra level below needs as few codes as possible.
            spread = balanced_assign(quant.last_residuals[rows], quant.last_codebook,
                                     math.ceil(len(rows) / codebook_size))
            reassigned += int((spread != last).sum())
            codes[rows, -1] = spread
            continue
        # Nearest free code first across the whole group: an item keeps its code unless a
        # closer item claims it, so displacement is as small as this greedy order allows.
        diff = quant.last_residuals[rows][:, None, :] - quant.last_codebook[None, :, :]
        dist = (diff * diff).sum(-1)
        taken: set[int] = set()
        new_codes = {}
        for flat in np.argsort(dist, axis=None, kind="stable"):
            i, code = divmod(int(flat), codebook_size)
            if i in new_codes or code in taken:
                continue
            new_codes[i] = code
            taken.add(code)
            if len(new_codes) == len(rows):
                break
        for i, row in enumerate(rows):
            if codes[row, -1] != new_codes[i]:
                reassigned += 1
            codes[row, -1] = new_codes[i]

    extra_level = _count_repeats(codes) > 0
    if extra_level:
        # Prefix groups larger than the codebook: number the members of each repeated tuple.
        seen: dict[tuple, int] = {}
        extra = np.zeros(num_items, dtype=np.int64)
        for row, key in enumerate(map(tuple, codes)):
            extra[row] = seen.get(key, 0)
            seen[key] = extra[row] + 1
        if extra.max() >= codebook_size:
            raise ValueError("more items share one SID than the codebook has codes; raise the codebook size")
        codes = np.hstack([codes, extra[:, None]])
    assert _count_repeats(codes) == 0

    stats = [_usage_stats(codes[:, level], codebook_size) for level in range(codes.shape[1])]
    return UniqueSIDs(codes, collisions_before, reassigned, extra_level,
                      [s[0] for s in stats], [s[1] for s in stats])


def mean_pairwise_cosine(vectors: np.ndarray) -> float:
    """Mean cosine similarity over distinct pairs of unit vectors, in O(n * dim)."""
    n = len(vectors)
    if n < 2:
        return float("nan")
    total = vectors.sum(axis=0, dtype=np.float64)
    return float((total @ total - n) / (n * (n - 1)))


def prefix_coherence(embeddings: np.ndarray, codes: np.ndarray) -> list[float]:
    """Per depth d < levels: mean pairwise cosine of items sharing their first d codes.

    The full depth is left out: every item's full SID is unique, so no pairs share it.
    Compared with :func:`mean_pairwise_cosine` over the whole catalog, it says how much a shared
    SID prefix means shared content; it should rise with depth.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    result = []
    for depth in range(1, codes.shape[1]):
        _, group = np.unique(codes[:, :depth], axis=0, return_inverse=True)
        group = group.ravel()
        sums = np.zeros((group.max() + 1, x.shape[1]))
        np.add.at(sums, group, x)
        sizes = np.bincount(group).astype(np.float64)
        pairs = sizes * (sizes - 1)
        if pairs.sum() == 0:
            break
        result.append(float(((sums * sums).sum(axis=1) - sizes).sum() / pairs.sum()))
    return result


def collaborative_embeddings(item_ids: list[str], sequences: list[list[str]], window: int = 5,
                             dim: int = 0, seed: int = 0) -> np.ndarray:
    """Item vectors from how items sit together in the training sequences: co-occurrence within
    ``window`` positions (nearer pairs weigh more), positive PMI, then a truncated SVD. Sized by
    the data: ``dim`` 0 picks min(64, items // 16, at least 8). Items never seen in training get a
    zero vector (their SID then rests on their text alone). Rows are L2-normalised."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import svds

    index = {item: n for n, item in enumerate(item_ids)}
    n = len(item_ids)
    rows, cols, weights = [], [], []
    for sequence in sequences:
        positions = [index[i] for i in sequence if i in index]
        for a in range(len(positions)):
            for gap in range(1, window + 1):
                if a + gap >= len(positions):
                    break
                rows += [positions[a], positions[a + gap]]
                cols += [positions[a + gap], positions[a]]
                weights += [1.0 / gap] * 2
    vectors = np.zeros((n, 1), dtype=np.float32)
    if not rows:
        return vectors
    counts = coo_matrix((weights, (rows, cols)), shape=(n, n)).tocsr()
    counts.sum_duplicates()
    total = counts.sum()
    row_sums = np.asarray(counts.sum(axis=1)).ravel()
    coo = counts.tocoo()
    pmi = np.log(coo.data * total / (row_sums[coo.row] * row_sums[coo.col]))
    keep = pmi > 0
    ppmi = coo_matrix((pmi[keep], (coo.row[keep], coo.col[keep])), shape=(n, n)).tocsr()
    dim = dim or max(8, min(64, n // 16))
    dim = min(dim, n - 2)
    rng = np.random.default_rng(seed)
    u, s, _ = svds(ppmi.astype(np.float64), k=dim, v0=rng.standard_normal(n))
    vectors = (u * np.sqrt(s)).astype(np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.where(norms > 0, vectors / np.maximum(norms, 1e-12), 0.0).astype(np.float32)


def fuse_for_sids(text: np.ndarray, collaborative: np.ndarray, weight: float = 1.0) -> np.ndarray:
    """What the quantizer sees for collaborative SIDs: each item's text vector and its
    collaborative vector, both unit length, side by side (``weight`` scales the second)."""
    text = text / np.maximum(np.linalg.norm(text, axis=1, keepdims=True), 1e-12)
    return np.concatenate([text, weight * collaborative], axis=1).astype(np.float32)
