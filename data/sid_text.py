"""Semantic IDs as text: ``(12, 200, 33)`` <-> ``<a_12><b_200><c_33>``, and the item markers.

The format lives in data/ because the build writes it (``sids.json``, the catalog's SID column)
and the catalog parses it (``thinkrec catalog lookup --sid``) before any engine exists; the engine's
tokenizer, prompts and trie import it from here (``engine.sid`` re-exports these names), so there is
one spelling of a SID and the data layer never reaches up into the engine.

Plain Python: ``python -m pytest tests/test_sid_trie.py``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

LEVEL_NAMES = "abcd"
ITEM_BEGIN = "<|item_begin|>"
ITEM_END = "<|item_end|>"
_SID_TOKEN = re.compile(r"<([a-d])_(\d{1,9})>")        # no codebook has a billion codes


def sid_tokens(codes: Sequence[int]) -> list[str]:
    """(12, 200, 33) -> ['<a_12>', '<b_200>', '<c_33>']"""
    if len(codes) > len(LEVEL_NAMES):
        raise ValueError(f"at most {len(LEVEL_NAMES)} SID levels, got {len(codes)}")
    return [f"<{LEVEL_NAMES[level]}_{int(code)}>" for level, code in enumerate(codes)]


def sid_string(codes: Sequence[int]) -> str:
    return "".join(sid_tokens(codes))


def parse_sid(text: str) -> tuple[int, ...]:
    """'<a_12><b_200><c_33>' (item markers and spaces allowed) -> (12, 200, 33).

    Raises ValueError with the reason when the text is not a well-formed SID.
    """
    body = text.strip().removeprefix(ITEM_BEGIN).removesuffix(ITEM_END).replace(" ", "")
    tokens = _SID_TOKEN.findall(body)
    said = repr(text) if len(text) <= 60 else repr(text[:57]) + "..."
    if not tokens or "".join(f"<{l}_{c}>" for l, c in tokens) != body:
        raise ValueError(f"not a SID: {said} (expected tokens like <a_12><b_200><c_33>)")
    for position, (level, _) in enumerate(tokens):
        if level != LEVEL_NAMES[position]:
            raise ValueError(f"not a SID: {said} (level {position + 1} should be <{LEVEL_NAMES[position]}_..>)")
    return tuple(int(code) for _, code in tokens)


def all_sid_token_strings(levels: int, codebook_size: int) -> list[str]:
    """Every SID token of a layout, level by level: what the tokenizer adds as special tokens."""
    return [f"<{LEVEL_NAMES[level]}_{code}>" for level in range(levels) for code in range(codebook_size)]
