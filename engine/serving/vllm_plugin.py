"""The SID trie as a vLLM V1 logits processor, loaded through the ``vllm.logits_processors``
entry point (pyproject.toml) in the server environment ``thinkrec serve-model`` builds.

Only requests that ask for it are constrained (``vllm_xargs: {"thinkrec": 1, "thinkrec_exclude":
[...], "thinkrec_constraint": "<Constraints JSON>"}``, the last only with hard constraints; a
reasoning request may instead carry ``"thinkrec_cite": [item ids]``, the only items its spans may
name); the batch bookkeeping, the constraint and cite filters and the masking live in
``engine/serving/vllm_trie.py``. The
server runs the V1 model runner (``VLLM_USE_V2_MODEL_RUNNER=0``): this is the V1 interface, and
Model Runner V2 needs Triton, which the CPU build lacks. It also runs without async scheduling
(``--no-async-scheduling``): an entry-point processor would otherwise read ``-1`` placeholders for
the newest output tokens.
"""

from __future__ import annotations

import logging
import os

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from engine.serving.vllm_trie import TRIE_ENV, CONSTRAINT_ARG, RequestGates, TrieSpec, request_args, spec_has_facets

log = logging.getLogger(__name__)


class SIDTrieLogitsProcessor(LogitsProcessor):
    @classmethod
    def validate_params(cls, sampling_params) -> None:
        """Runs in the API server before a request is scheduled: a ValueError here is a 400."""
        request = request_args(sampling_params.extra_args)
        if request is None:
            return
        path = os.environ.get(TRIE_ENV)
        if not path:
            raise ValueError("this vLLM server has no thinkrec catalog; start it with thinkrec serve-model")
        if request.constraints is not None and request.constraints.is_hard() and not spec_has_facets(path):
            raise ValueError(f"this vLLM server's catalog file has no facets: it cannot apply {CONSTRAINT_ARG}; "
                             "restart it with thinkrec serve-model")

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        path = os.environ.get(TRIE_ENV)
        self.gates = RequestGates(TrieSpec(path)) if path else None
        if self.gates is None:
            log.warning("%s is not set: the thinkrec SID constraint is off on this server", TRIE_ENV)
        elif self.gates.spec.facets is None:
            log.warning("the thinkrec catalog file %s has no facets: constrained requests are refused", path)

    def is_argmax_invariant(self) -> bool:
        return False           # masking changes which token greedy decoding picks

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if self.gates is None or batch_update is None:
            return
        for index in batch_update.removed:
            self.gates.remove(index)
        for index, params, prompt, outputs in batch_update.added:
            self.gates.remove(index)           # an added request may take over a freed index
            try:
                request = request_args(params.extra_args if params is not None else None)
                if request is not None:
                    self.gates.add_request(index, request, prompt, outputs)
            except ValueError as error:
                # validate_params refused these already; one slipping through must not take the
                # engine down. Its items are then limited to nothing rather than left unconstrained.
                log.error("thinkrec request at batch index %d has bad arguments (%s): no items allowed", index, error)
                self.gates.add(index, set(self.gates.spec.trie.items), prompt, outputs)
        for source, target, direction in batch_update.moved:
            self.gates.move(source, target, direction == MoveDirectionality.SWAP)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return logits if self.gates is None else self.gates.apply(logits)
