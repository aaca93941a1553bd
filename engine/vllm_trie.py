"""The SID trie as seen by a vLLM server: the catalog file the server reads, and the per-request
gate state its logits processor keeps. No vLLM import here — the adapter that plugs this into
vLLM is ``engine/vllm_plugin.py``, which only the server's environment loads.

``thinkrec serve-model`` writes the catalog's token paths to a JSON file and points the server at
it with ``THINKREC_TRIE``. A request opts in with ``vllm_xargs: {"thinkrec": 1,
"thinkrec_exclude": [item ids]}``; other requests on the same server are untouched.

For rows it constrains, the processor writes *log-probabilities* (``log_softmax`` of the raw
logits) with disallowed tokens at ``-inf``. Sampling and greedy decoding are unchanged by that
shift, and a server started with ``--logprobs-mode processed_logits`` then reports, for each
allowed token, exactly the log-probability the transformers backend ranks beams by.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Sequence
from pathlib import Path

import torch

from engine.sid import ItemGate, SIDTrie

TRIE_ENV = "THINKREC_TRIE"
ENABLE_ARG, EXCLUDE_ARG = "thinkrec", "thinkrec_exclude"


def served_model_name(fingerprint: str, sid_levels: int, codebook_size: int) -> str:
    """The name a thinkrec server answers to: a client checks it before trusting the items."""
    return f"thinkrec-{fingerprint}-{sid_levels}x{codebook_size}"


def write_trie_spec(path: Path, tokenizer, sid_codes: dict[str, Sequence[int]], fingerprint: str) -> Path:
    spec = {"fingerprint": fingerprint, "begin_id": tokenizer.item_begin_id, "end_id": tokenizer.item_end_id,
            "sid_token_ids": sorted(tokenizer.sid_code_of),
            "items": {str(item): tokenizer.sid_token_ids(codes) for item, codes in sid_codes.items()}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec))
    return path


class TrieSpec:
    def __init__(self, path: str | Path):
        spec = json.loads(Path(path).read_text())
        self.fingerprint = spec["fingerprint"]
        self.begin_id, self.end_id = int(spec["begin_id"]), int(spec["end_id"])
        self.sid_token_ids = [int(t) for t in spec["sid_token_ids"]]
        self.trie = SIDTrie((item, path) for item, path in spec["items"].items())


def request_excludes(extra_args: dict | None) -> set[str] | None:
    """The request's excluded items when it asked for the constraint, else None.

    Raises ValueError on malformed arguments (the server answers 400 instead of decoding freely).
    """
    if not extra_args or not extra_args.get(ENABLE_ARG):
        return None
    exclude = extra_args.get(EXCLUDE_ARG, [])
    if not isinstance(exclude, list) or not all(isinstance(i, (str, int)) for i in exclude):
        raise ValueError(f"vllm_xargs.{EXCLUDE_ARG} must be a list of item ids")
    return {str(i) for i in exclude}


class _Request:
    __slots__ = ("gate", "outputs", "seen")

    def __init__(self, gate: ItemGate, outputs: list[int]):
        self.gate, self.outputs, self.seen = gate, outputs, 0


class RequestGates:
    """Gate state for the rows of a running batch, keyed by batch index (vLLM moves requests
    between indices; :meth:`move` follows them)."""

    def __init__(self, spec: TrieSpec):
        self.spec = spec
        self.rows: dict[int, _Request] = {}
        self._sid_ids: torch.Tensor | None = None

    def add(self, index: int, exclude: set[Hashable], prompt: Sequence[int] | None, outputs: list[int]) -> None:
        """``outputs`` is the request's live output list (vLLM appends to it as it decodes)."""
        gate = ItemGate(self.spec.trie, self.spec.begin_id, self.spec.end_id, exclude)
        self.rows[index] = _Request(gate.resume(list(prompt or ())), outputs)

    def remove(self, index: int) -> None:
        self.rows.pop(index, None)

    def move(self, source: int, target: int, swap: bool) -> None:
        moved, displaced = self.rows.pop(source, None), self.rows.pop(target, None)
        if moved is not None:
            self.rows[target] = moved
        if swap and displaced is not None:
            self.rows[source] = displaced

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return logits
        if self._sid_ids is None or self._sid_ids.device != logits.device:
            self._sid_ids = torch.tensor(self.spec.sid_token_ids, dtype=torch.long, device=logits.device)
        indices = sorted(i for i in self.rows if i < logits.shape[0])
        index = torch.tensor(indices, dtype=torch.long, device=logits.device)
        rows = torch.log_softmax(logits[index].float(), dim=-1)
        for n, i in enumerate(indices):
            request = self.rows[i]
            for token in request.outputs[request.seen:]:
                request.gate.advance(token)
            request.seen = len(request.outputs)
            keep = request.gate.allowed()
            if keep is None:
                rows[n, self._sid_ids] = float("-inf")
                rows[n, self.spec.end_id] = float("-inf")
            else:
                kept = torch.tensor(keep, dtype=torch.long, device=logits.device)
                values = rows[n, kept].clone()
                rows[n] = float("-inf")
                rows[n, kept] = values
        logits[index] = rows.to(logits.dtype)
        return logits
