"""The tokenizer, and the one place that knows thinkrec's chat format.

Text is byte-level BPE (trained on the dataset's own text for from-scratch models, or taken from a
pretrained model folder); every control token of DESIGN.md §2 and one token per SID level and code
are added as special tokens. Two encoders share one vocabulary: the *trusted* one parses special
tokens (prompts and answers thinkrec builds itself), the *plain* one does not, so text a person
typed — even ``<a_12>`` or ``<|assistant|>`` — is always ordinary text.

    render_conversation(messages) -> (ids, loss_mask)   # loss_mask is 1 on assistant tokens

A conversation renders as ``<|system|>…<|end|><|user|>…<|end|><|assistant|>…<|end|>``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from engine.sid import ITEM_BEGIN, ITEM_END, all_sid_token_strings, sid_tokens

PAD, SYSTEM, USER, ASSISTANT, END = "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
THINK, THINK_END = "<think>", "</think>"
DERIVATION, EVOLUTION, RECOMMENDATION = "<|derivation|>", "<|evolution|>", "<|recommendation|>"
CONTROL_TOKENS = [PAD, SYSTEM, USER, ASSISTANT, END, THINK, THINK_END, DERIVATION, EVOLUTION,
                  RECOMMENDATION, ITEM_BEGIN, ITEM_END]
ROLE_TOKENS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}
LAYOUT_FILE = "thinkrec_tokens.json"


@dataclass
class Message:
    role: str                 # system | user | assistant
    content: str
    trusted: bool = True      # False: typed by a person; special tokens in it stay plain text
    learn: bool = True        # assistant turns only: False keeps it out of the loss (a turned-down answer)


class ThinkrecTokenizer:
    def __init__(self, backend: Tokenizer, sid_levels: int, codebook_size: int):
        self.backend = backend
        self.sid_levels, self.codebook_size = sid_levels, codebook_size
        self._plain = Tokenizer.from_str(backend.to_str())
        self._plain.encode_special_tokens = True
        missing = [t for t in CONTROL_TOKENS + all_sid_token_strings(sid_levels, codebook_size)
                   if backend.token_to_id(t) is None]
        if missing:
            raise ValueError(f"tokenizer lacks {len(missing)} thinkrec tokens (first: {missing[:3]})")
        self.ids = {token: backend.token_to_id(token) for token in CONTROL_TOKENS}
        self.pad_id, self.end_id = self.ids[PAD], self.ids[END]
        self.item_begin_id, self.item_end_id = self.ids[ITEM_BEGIN], self.ids[ITEM_END]
        self.think_id, self.think_end_id = self.ids[THINK], self.ids[THINK_END]
        # sid_ids[level][code] -> token id, and the reverse map for decoding generated items.
        self.sid_ids = [[backend.token_to_id(t) for t in all_sid_token_strings(level + 1, codebook_size)
                         [level * codebook_size:]] for level in range(sid_levels)]
        self.sid_code_of = {tid: (level, code) for level, row in enumerate(self.sid_ids)
                            for code, tid in enumerate(row)}

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def train(cls, texts: Iterable[str], sid_levels: int, codebook_size: int,
              vocab_size: int = 4096) -> ThinkrecTokenizer:
        """Byte-level BPE on ``texts`` plus thinkrec's special tokens (from-scratch models)."""
        backend = Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        backend.train_from_iterator(texts, trainer)
        return cls.extend(backend, sid_levels, codebook_size)

    @classmethod
    def extend(cls, backend: Tokenizer, sid_levels: int, codebook_size: int) -> ThinkrecTokenizer:
        """Add the control and SID tokens to an existing tokenizer (e.g. a pretrained model's)."""
        tokens = CONTROL_TOKENS + all_sid_token_strings(sid_levels, codebook_size)
        backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in tokens])
        return cls(backend, sid_levels, codebook_size)

    @classmethod
    def from_base_model(cls, folder: str | Path, sid_levels: int, codebook_size: int) -> ThinkrecTokenizer:
        path = Path(folder) / "tokenizer.json"
        if not path.exists():
            raise FileNotFoundError(f"{folder}: no tokenizer.json (a fast tokenizer is needed)")
        return cls.extend(Tokenizer.from_file(str(path)), sid_levels, codebook_size)

    def save(self, folder: str | Path) -> None:
        """Save as a Hugging Face tokenizer folder (loadable by transformers and vLLM)."""
        from transformers import PreTrainedTokenizerFast

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        hf = PreTrainedTokenizerFast(tokenizer_object=self.backend, pad_token=PAD, eos_token=END,
                                     bos_token=None, unk_token=None)
        hf.save_pretrained(str(folder))
        (folder / LAYOUT_FILE).write_text(json.dumps(
            {"sid_levels": self.sid_levels, "codebook_size": self.codebook_size}) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> ThinkrecTokenizer:
        folder = Path(folder)
        layout = json.loads((folder / LAYOUT_FILE).read_text())
        return cls(Tokenizer.from_file(str(folder / "tokenizer.json")), layout["sid_levels"], layout["codebook_size"])

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    # -- encoding ----------------------------------------------------------------------------
    def encode(self, text: str, trusted: bool = True) -> list[int]:
        encoder = self.backend if trusted else self._plain
        return encoder.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=False)

    def item_ids(self, codes: Sequence[int]) -> list[int]:
        """Token ids of ``<|item_begin|><a_..>…<|item_end|>`` for SID ``codes``."""
        return [self.item_begin_id, *self.sid_token_ids(codes), self.item_end_id]

    def sid_token_ids(self, codes: Sequence[int]) -> list[int]:
        return [self.sid_ids[level][code] for level, code in enumerate(codes)]

    def codes_of(self, token_ids: Sequence[int]) -> tuple[int, ...] | None:
        """SID codes spelled by ``token_ids`` (level order checked), or None if not a SID."""
        codes = []
        for level, tid in enumerate(token_ids):
            found = self.sid_code_of.get(int(tid))
            if found is None or found[0] != level:
                return None
            codes.append(found[1])
        return tuple(codes)

    @staticmethod
    def item_text(codes: Sequence[int]) -> str:
        return ITEM_BEGIN + "".join(sid_tokens(codes)) + ITEM_END

    def render_conversation(self, messages: Sequence[Message], add_generation_prompt: bool = False,
                            assistant_prefix: str = "") -> tuple[list[int], list[int]]:
        """Token ids and loss mask of a conversation.

        The mask is 1 exactly on assistant content and the ``<|end|>`` closing it (what the model
        must learn to say), 0 on role tokens, system and user text, and on assistant turns marked
        ``learn=False``. With ``add_generation_prompt``
        the ids end with ``<|assistant|>`` + ``assistant_prefix`` (e.g. ``<think>``), ready to
        generate.
        """
        ids: list[int] = []
        mask: list[int] = []
        for message in messages:
            if message.role not in ROLE_TOKENS:
                raise ValueError(f"unknown role '{message.role}'")
            ids.append(self.ids[ROLE_TOKENS[message.role]])
            mask.append(0)
            body = self.encode(message.content, trusted=message.trusted) + [self.end_id]
            ids.extend(body)
            mask.extend([1 if message.role == "assistant" and message.learn else 0] * len(body))
        if add_generation_prompt:
            tail = [self.ids[ASSISTANT]] + (self.encode(assistant_prefix) if assistant_prefix else [])
            ids.extend(tail)
            mask.extend([0] * len(tail))
        return ids, mask
