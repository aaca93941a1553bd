"""The SID trie as a vLLM V1 logits processor, loaded through the ``vllm.logits_processors``
entry point (pyproject.toml) in the server environment ``thinkrec serve-model`` builds.

Only requests that ask for it are constrained (``vllm_xargs: {"thinkrec": 1, "thinkrec_exclude":
[...]}``); the batch bookkeeping and masking live in ``engine/vllm_trie.py``. The server runs the
V1 model runner (``VLLM_USE_V2_MODEL_RUNNER=0``): this is the V1 interface, and Model Runner V2
needs Triton, which the CPU build lacks.
"""

from __future__ import annotations

import logging
import os

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from engine.vllm_trie import TRIE_ENV, RequestGates, TrieSpec, request_excludes

log = logging.getLogger(__name__)


class SIDTrieLogitsProcessor(LogitsProcessor):
    @classmethod
    def validate_params(cls, sampling_params) -> None:
        excludes = request_excludes(sampling_params.extra_args)
        if excludes is not None and not os.environ.get(TRIE_ENV):
            raise ValueError("this vLLM server has no thinkrec catalog; start it with thinkrec serve-model")

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        path = os.environ.get(TRIE_ENV)
        self.gates = RequestGates(TrieSpec(path)) if path else None
        if self.gates is None:
            log.warning("%s is not set: the thinkrec SID constraint is off on this server", TRIE_ENV)

    def is_argmax_invariant(self) -> bool:
        return False           # masking changes which token greedy decoding picks

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if self.gates is None or batch_update is None:
            return
        for index in batch_update.removed:
            self.gates.remove(index)
        for index, params, prompt, outputs in batch_update.added:
            excludes = request_excludes(params.extra_args if params is not None else None)
            self.gates.remove(index)           # an added request may take over a freed index
            if excludes is not None:
                self.gates.add(index, excludes, prompt, outputs)
        for source, target, direction in batch_update.moved:
            self.gates.move(source, target, direction == MoveDirectionality.SWAP)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return logits if self.gates is None else self.gates.apply(logits)
