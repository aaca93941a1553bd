"""The item-ID recommendation head: one learned vector per catalog item, scored against the
language model's last hidden state at an item position (the ``<|item_begin|>`` token).

Semantic IDs generalise (items with similar text share prefixes) but a small model spelling an
item token by token memorises poorly; an item-ID table memorises well (it is what SASRec is). The
head sits on the same backbone as the SID tokens and is trained beside them with full
cross-entropy over the catalog (``training/trainer.py``), and ranking adds its log-probability to
the SID path's (``engine/decoding.py``, ``rank_items``).

It is kept out of the Hugging Face weights (``item_head/weights.safetensors`` in its own folder, with
the item order in its metadata), so the checkpoint still loads as a plain causal LM in transformers
and vLLM: vLLM reads every ``*.safetensors`` at the top of a model folder as model weights.
Memory: ``num_items × (hidden + 1)`` floats, e.g. 10^6 items at hidden 256 is 1.03 GB in fp32
(``ItemHead.nbytes``); at that scale its top candidates can come from a FAISS inner-product index
over the same table.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

ITEM_HEAD_FILE = "item_head/weights.safetensors"


class ItemHead(nn.Module):
    """``log p(item | hidden) = log_softmax(hidden @ E^T + b)`` over the catalog's items."""

    def __init__(self, item_ids: Sequence[str], hidden_size: int, init_std: float = 0.02):
        super().__init__()
        self.item_ids = [str(i) for i in item_ids]
        self.row_of = {item: row for row, item in enumerate(self.item_ids)}
        if len(self.row_of) != len(self.item_ids):
            raise ValueError("the item head's item ids repeat")
        self.embedding = nn.Parameter(torch.randn(len(self.item_ids), hidden_size) * init_std)
        self.bias = nn.Parameter(torch.zeros(len(self.item_ids)))

    @staticmethod
    def nbytes(num_items: int, hidden_size: int, bytes_per_value: int = 4) -> int:
        return num_items * (hidden_size + 1) * bytes_per_value

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden.to(self.embedding.dtype) @ self.embedding.T + self.bias

    def log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.logits(hidden).float(), dim=-1)

    def save(self, folder: str | Path) -> Path:
        from safetensors.torch import save_file

        path = Path(folder) / ITEM_HEAD_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"embedding": self.embedding.detach().float().cpu().contiguous(),
                   "bias": self.bias.detach().float().cpu().contiguous()}, str(path),
                  metadata={"item_ids": json.dumps(self.item_ids)})
        return path

    @classmethod
    def load(cls, folder: str | Path, expected_items: Sequence[str] | None = None) -> ItemHead | None:
        """The head saved in ``folder`` (None when the checkpoint has none). ``expected_items``: the
        catalog's items; a head over other items is refused, saying which differ."""
        from safetensors import safe_open

        path = Path(folder) / ITEM_HEAD_FILE
        if not path.exists():
            return None
        with safe_open(str(path), framework="pt") as handle:
            item_ids = json.loads(handle.metadata()["item_ids"])
            embedding, bias = handle.get_tensor("embedding"), handle.get_tensor("bias")
        if expected_items is not None and set(map(str, expected_items)) != set(item_ids):
            missing = sorted(set(map(str, expected_items)) - set(item_ids))[:5]
            extra = sorted(set(item_ids) - set(map(str, expected_items)))[:5]
            raise ValueError(f"{path} scores other items than this catalog (missing {missing}, unknown {extra}): "
                             "it belongs to another dataset build")
        head = cls(item_ids, embedding.shape[1])
        with torch.no_grad():
            head.embedding.copy_(embedding)
            head.bias.copy_(bias)
        return head


def base_of(model):
    """The transformers causal LM inside ``model`` (a peft wrapper is looked through)."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def head_of(model) -> ItemHead | None:
    """The item head attached to ``model`` (None: a SID-only model)."""
    head = getattr(base_of(model), "item_head", None)
    return head if isinstance(head, ItemHead) else None


def attach(model, head: ItemHead | None):
    """Attach ``head`` to ``model`` (a submodule, so optimizers and ``.to()`` see it); returns the model."""
    if head is not None:
        lm = base_of(model)
        device = next(lm.parameters()).device
        lm.item_head = head.to(device)
    return model


def detached_for_saving(model) -> tuple[object, ItemHead | None]:
    """``model`` without its head (``save_pretrained`` must write a plain causal LM) and the head."""
    lm = base_of(model)
    head = head_of(lm)
    if head is not None:
        del lm.item_head
    return model, head


def last_hidden(model, **inputs) -> tuple[torch.Tensor, object]:
    """The backbone's final (normed) hidden states and the forward's output (cache included):
    ``model.model`` is the decoder of every transformers causal LM thinkrec builds or loads."""
    decoder = base_of(model).get_decoder()
    out = decoder(**inputs)
    return out.last_hidden_state, out
