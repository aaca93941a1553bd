"""The FAISS index over item embeddings: nearest items and free-text search.

Rows of the index are catalog rows (``items.row`` in SQL), so a search result maps straight to
an item. ``flat`` (exact inner product) is the default and right up to ~10^5 items; ``hnsw`` and
``ivf`` trade a little recall for speed on large catalogs. A GPU is used when faiss-gpu is
installed and a GPU is present; otherwise the same calls run on the CPU.
"""

from __future__ import annotations

import math
from pathlib import Path

import faiss
import numpy as np

INDEX_KINDS = ("flat", "hnsw", "ivf")


def gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def build_index(embeddings: np.ndarray, kind: str = "flat", seed: int = 0) -> faiss.Index:
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    dim = x.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = 128
    elif kind == "ivf":
        nlist = max(1, min(4096, int(4 * math.sqrt(len(x)))))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.train(x)
        index.nprobe = min(nlist, 16)
    else:
        raise ValueError(f"unknown index kind '{kind}' (choose from {', '.join(INDEX_KINDS)})")
    index.add(x)
    return index


def save_index(index: faiss.Index, path: Path) -> None:
    faiss.write_index(index, str(path))


def to_gpu_if_available(index: faiss.Index, use_gpu: bool | None = None) -> faiss.Index:
    """The index on GPU 0 when faiss-gpu finds one (flat and IVF; faiss has no GPU HNSW)."""
    if (gpu_available() if use_gpu is None else use_gpu) and isinstance(index, (faiss.IndexFlat, faiss.IndexIVF)):
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    return index


def load_index(path: Path, use_gpu: bool | None = None) -> faiss.Index:
    return to_gpu_if_available(faiss.read_index(str(path)), use_gpu)


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows) of the ``k`` nearest rows for each query; rows are -1 where fewer exist."""
    q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    return index.search(q, min(k, index.ntotal))
