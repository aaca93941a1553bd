"""Building the model a stage trains: a preset from scratch, or a local pretrained base with
optional LoRA. Saving it is :mod:`training.checkpointing`'s job (LoRA merged there).

LoRA keeps the new token embeddings and the output head fully trainable (``modules_to_save``):
plain LoRA would leave the added SID and control tokens untrained.
"""

from __future__ import annotations

from engine.tokenizer import ThinkrecTokenizer

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_model(tokenizer: ThinkrecTokenizer, preset: str | None, base_model: str | None, lora: bool,
               lora_rank: int = 16, seed: int = 0, gradient_checkpointing: bool = False,
               item_ids: list[str] | None = None):
    """``item_ids``: the catalog's items, for an item-ID head beside the SID tokens (None: no head)."""
    from training.presets import load_base_model, new_model

    if base_model:
        model = load_base_model(base_model, len(tokenizer))
        model.config.pad_token_id, model.config.eos_token_id = tokenizer.pad_id, tokenizer.end_id
    else:
        model = new_model(preset or "tiny", len(tokenizer), tokenizer.pad_id, tokenizer.end_id, seed)
    if item_ids:
        import torch

        from engine.item_head import ItemHead, attach

        torch.manual_seed(seed)
        attach(model, ItemHead(item_ids, model.config.hidden_size))
    if gradient_checkpointing:
        model.activation_checkpointing_enable()
    if lora:
        model = wrap_lora(model, lora_rank)
    return model


def wrap_lora(model, rank: int = 16):
    from peft import LoraConfig, get_peft_model

    from engine.item_head import head_of

    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.05, target_modules=LORA_TARGETS,
                        modules_to_save=["embed_tokens", "lm_head"], task_type="CAUSAL_LM")
    wrapped = get_peft_model(model, config)
    head = head_of(wrapped)
    if head is not None:          # the item table trains in full, like the token embeddings
        head.requires_grad_(True)
    return wrapped

