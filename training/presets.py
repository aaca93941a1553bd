"""Model presets: Qwen3-architecture causal LMs trained from scratch, or a local pretrained base.

Every preset keeps ``head_dim`` 64 so any checkpoint also serves in vLLM (its attention backends
reject small heads). ``tiny`` trains on 2 CPU cores in minutes; ``small`` wants a GPU or patience.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Preset:
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    max_positions: int = 2048
    head_dim: int = 64


PRESETS = {
    "tiny": Preset(hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=768),
    "small": Preset(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4, intermediate_size=1536),
    "medium": Preset(hidden_size=1024, num_layers=16, num_heads=16, num_kv_heads=8, intermediate_size=3072),
}


def preset_config(name: str, vocab_size: int, pad_id: int, eos_id: int):
    """A transformers ``Qwen3Config`` for preset ``name`` and our tokenizer's vocabulary."""
    from transformers import Qwen3Config

    if name not in PRESETS:
        raise ValueError(f"unknown preset '{name}' (choose from {', '.join(PRESETS)})")
    p = PRESETS[name]
    return Qwen3Config(
        vocab_size=vocab_size, hidden_size=p.hidden_size, intermediate_size=p.intermediate_size,
        num_hidden_layers=p.num_layers, num_attention_heads=p.num_heads,
        num_key_value_heads=p.num_kv_heads, head_dim=p.head_dim, max_position_embeddings=p.max_positions,
        tie_word_embeddings=True, pad_token_id=pad_id, eos_token_id=eos_id, bos_token_id=None,
        rope_theta=10000.0, attention_dropout=0.0, use_cache=True)


def new_model(name: str, vocab_size: int, pad_id: int, eos_id: int, seed: int = 0):
    import torch
    from transformers import Qwen3ForCausalLM

    torch.manual_seed(seed)
    return Qwen3ForCausalLM(preset_config(name, vocab_size, pad_id, eos_id))


def load_base_model(path: str | Path, vocab_size: int, dtype=None):
    """A pretrained local model folder, its embeddings resized for the added tokens."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, local_files_only=True)
    model.resize_token_embeddings(vocab_size, mean_resizing=True)
    return model
