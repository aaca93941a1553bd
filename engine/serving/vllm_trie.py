"""The SID trie as seen by a vLLM server: the catalog file the server reads, and the per-request
gate state its logits processor keeps. No vLLM import here — the adapter that plugs this into
vLLM is ``engine/serving/vllm_plugin.py``, which only the server's environment loads.

``thinkrec serve-model`` writes the catalog's token paths and facets (every item's year and
categories) to a JSON file and points the server at it with ``THINKREC_TRIE``. A request opts in
with ``vllm_xargs: {"thinkrec": 1, "thinkrec_exclude": [item ids]}``; other requests on the same
server are untouched. A request with hard constraints adds ``"thinkrec_constraint":
Constraints.model_dump_json()`` — the constraint itself (a few hundred bytes), never the list of
items it allows; the server turns it into the same trie filter the transformers backend uses
(``Facets.mask`` then ``SIDTrie.restrict``, cached per constraint), so both backends restrict the
items the same way. A reasoning request that cites history items adds ``"thinkrec_cite": [item
ids]``: its item spans may then name only those items (``SIDTrie.restrict_to``, built once per
request; each cited item at most once, as the gate excludes items it has finished). Cite and
constraint are exclusive. A reasoning request adds ``"thinkrec_slots": 1``: where its reasoning names
an interest, a trend or the next item's attributes, only the catalog's vocabulary is allowed (the
slot grammar of ``engine/slots.py``, written into the same file). Malformed arguments raise
ValueError, which the server answers with a 400.

For rows it constrains, the processor writes *log-probabilities* (``log_softmax`` of the raw
logits) with disallowed tokens at ``-inf``. Sampling and greedy decoding are unchanged by that
shift, and a server started with ``--logprobs-mode processed_logits`` then reports, for each
allowed token, exactly the log-probability the transformers backend ranks beams by.

Output ids are read from vLLM's live output lists. Under async scheduling a list can end in ``-1``
placeholders for tokens not sampled yet; a gate never consumes one (it stops there and reads the
real token on a later step). ``thinkrec serve-model`` starts the server with
``--no-async-scheduling`` so the lists are always complete when the processor runs.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from engine.constraints import ConstraintFilters, Constraints, Facets
from engine.sid import ItemGate, SIDTrie
from engine.slots import SlotGrammar

TRIE_ENV = "THINKREC_TRIE"
ENABLE_ARG, EXCLUDE_ARG, CONSTRAINT_ARG = "thinkrec", "thinkrec_exclude", "thinkrec_constraint"
CITE_ARG = "thinkrec_cite"
SLOTS_ARG = "thinkrec_slots"


def served_model_name(fingerprint: str, sid_levels: int, codebook_size: int) -> str:
    """The name a thinkrec server answers to: a client checks it before trusting the items."""
    return f"thinkrec-{fingerprint}-{sid_levels}x{codebook_size}"


def write_trie_spec(path: Path, tokenizer, sid_codes: dict[str, Sequence[int]], fingerprint: str,
                    facets: Facets | None = None, slots: SlotGrammar | None = None) -> Path:
    """The file a server reads: item token paths, ``facets`` so requests can carry constraints
    (without facets the server refuses hard constraints), and the reasoning's vocabulary ``slots``."""
    spec = {"fingerprint": fingerprint, "begin_id": tokenizer.item_begin_id, "end_id": tokenizer.item_end_id,
            "sid_token_ids": sorted(tokenizer.sid_code_of),
            "items": {str(item): tokenizer.sid_token_ids(codes) for item, codes in sid_codes.items()},
            "facets": facets.to_json() if facets is not None else None,
            "slots": slots.to_json() if slots is not None else None}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec))
    return path


@lru_cache(maxsize=8)
def spec_has_facets(path: str) -> bool:
    """Whether the spec at ``path`` carries facets (read once per path: the API server process
    checks it before accepting a constrained request)."""
    return json.loads(Path(path).read_text()).get("facets") is not None


class TrieSpec:
    def __init__(self, path: str | Path, filter_cache_size: int = 64):
        spec = json.loads(Path(path).read_text())
        self.fingerprint = spec["fingerprint"]
        self.begin_id, self.end_id = int(spec["begin_id"]), int(spec["end_id"])
        self.sid_token_ids = [int(t) for t in spec["sid_token_ids"]]
        self.trie = SIDTrie((item, path) for item, path in spec["items"].items())
        self.facets = Facets.from_json(spec["facets"]) if spec.get("facets") is not None else None
        self.slots = SlotGrammar.from_json(spec["slots"]) if spec.get("slots") is not None else None
        if self.slots is not None and self.facets is not None:
            self.slots.attach(self.trie, self.facets)
        self.filter_for = ConstraintFilters(
            self.trie, self.facets, filter_cache_size,
            missing=f"this vLLM server's catalog file has no facets (restart it with thinkrec serve-model), so "
                    f"{CONSTRAINT_ARG}")


@dataclass
class GateRequest:
    """What a request asked the processor for: its excluded items and its hard constraints, or
    the only items its spans may cite (reasoning over the user's own history)."""
    exclude: set[str]
    constraints: Constraints | None = None
    cite: set[str] | None = None
    slots: bool = False         # reasoning: hold its names and attributes to the catalog's vocabulary


def parse_constraint(value) -> Constraints | None:
    """``thinkrec_constraint``: a ``Constraints`` JSON string (or, from Python callers, a dict)."""
    if value is None:
        return None
    try:
        if isinstance(value, str):
            return Constraints.model_validate_json(value)
        if isinstance(value, dict):
            return Constraints.model_validate(value)
    except ValueError as error:       # pydantic's ValidationError is a ValueError
        raise ValueError(f"vllm_xargs.{CONSTRAINT_ARG} is not a valid constraint: {error}") from None
    raise ValueError(f"vllm_xargs.{CONSTRAINT_ARG} must be a Constraints JSON string")


def request_args(extra_args: dict | None) -> GateRequest | None:
    """The request's gate arguments when it asked for the constraint, else None.

    Raises ValueError on malformed arguments (the server answers 400 instead of decoding freely).
    """
    if not extra_args or not extra_args.get(ENABLE_ARG):
        return None
    exclude = _item_ids(extra_args.get(EXCLUDE_ARG, []), EXCLUDE_ARG)
    constraints = parse_constraint(extra_args.get(CONSTRAINT_ARG))
    cite = extra_args.get(CITE_ARG)
    if cite is not None:
        cite = _item_ids(cite, CITE_ARG)
        if constraints is not None:
            raise ValueError(f"vllm_xargs.{CITE_ARG} and vllm_xargs.{CONSTRAINT_ARG} are exclusive: cite "
                             "and constraint are exclusive (reasoning cites, the item search constrains)")
    return GateRequest(exclude, constraints, cite, bool(extra_args.get(SLOTS_ARG)))


def _item_ids(value, arg: str) -> set[str]:
    # bool is an int subclass: refuse it rather than cite item "True".
    if not isinstance(value, list) or not all(isinstance(i, (str, int)) and not isinstance(i, bool) for i in value):
        raise ValueError(f"vllm_xargs.{arg} must be a list of item ids")
    return {str(i) for i in value}


def request_excludes(extra_args: dict | None) -> set[str] | None:
    """The request's excluded items when it asked for the constraint, else None."""
    request = request_args(extra_args)
    return None if request is None else request.exclude


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

    def add(self, index: int, exclude: set[Hashable], prompt: Sequence[int] | None, outputs: list[int],
            constraints: Constraints | None = None, cite: set[Hashable] | None = None, slots: bool = False) -> None:
        """``outputs`` is the request's live output list (vLLM appends to it as it decodes);
        ``constraints``' hard parts restrict every item of the request to those they allow;
        ``cite`` (exclusive with ``constraints``) restricts them to exactly those items."""
        if cite is not None:
            if constraints is not None:
                raise ValueError("cite and constraint are exclusive")
            restrict = self.spec.trie.restrict_to(cite)     # a few items: sparse, per request, no cache
        else:
            restrict = self.spec.filter_for(constraints)
        if slots and self.spec.slots is None:
            raise ValueError(f"{SLOTS_ARG}: this vLLM server's catalog file has no slot grammar (restart it with "
                             "thinkrec serve-model)")
        state = self.spec.slots.state(cite) if slots else None
        gate = ItemGate(self.spec.trie, self.spec.begin_id, self.spec.end_id, exclude, restrict=restrict, slots=state)
        self.rows[index] = _Request(gate.resume(list(prompt or ())), outputs)

    def add_request(self, index: int, request: GateRequest, prompt: Sequence[int] | None,
                    outputs: list[int]) -> None:
        self.add(index, request.exclude, prompt, outputs, request.constraints, request.cite, request.slots)

    def remove(self, index: int) -> None:
        self.rows.pop(index, None)

    def move(self, source: int, target: int, swap: bool) -> None:
        moved, displaced = self.rows.pop(source, None), self.rows.pop(target, None)
        if moved is not None:
            self.rows[target] = moved
        if swap and displaced is not None:
            self.rows[source] = displaced

    @staticmethod
    def _catch_up(request: _Request) -> None:
        """Feed the gate the output tokens it has not seen, stopping at a placeholder (a negative
        id: async scheduling has not filled that token in yet; it is read on a later step)."""
        outputs, position = request.outputs, request.seen
        while position < len(outputs):
            token = outputs[position]
            if token < 0:
                break
            request.gate.advance(token)
            position += 1
        request.seen = position

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return logits
        if self._sid_ids is None or self._sid_ids.device != logits.device:
            self._sid_ids = torch.tensor(self.spec.sid_token_ids, dtype=torch.long, device=logits.device)
        indices = sorted(i for i in self.rows if i < logits.shape[0])
        if not indices:
            return logits
        index = torch.tensor(indices, dtype=torch.long, device=logits.device)
        rows = torch.log_softmax(logits[index].float(), dim=-1)
        for n, i in enumerate(indices):
            request = self.rows[i]
            self._catch_up(request)
            keep = request.gate.allowed()
            if keep is None:
                rows[n, self._sid_ids] = float("-inf")
                rows[n, self.spec.end_id] = float("-inf")
                for token in request.gate.banned():
                    rows[n, token] = float("-inf")
            else:
                kept = torch.tensor(keep, dtype=torch.long, device=logits.device)
                values = rows[n, kept].clone()
                rows[n] = float("-inf")
                rows[n, kept] = values
        logits[index] = rows.to(logits.dtype)
        return logits
