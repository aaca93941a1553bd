"""One model + tokenizer + catalog trie, answering "what next?" for one or many users at once:
optional three-level reasoning (generated under the gated constraint), then beam search over the
SID steps for the top-K distinct, unseen catalog items. Evaluation, RL rollouts and the app call
this same code path.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from engine.backends import Backend, TransformersBackend, VLLMBackend
from engine.checkpoint import CheckpointMeta, load_checked, load_checkpoint
from engine.decoding import RankedItem, build_token_trie
from engine.prompt import NO_THINK_PREFIX, THINK_PREFIX, parse_reasoning, recommendation_messages
from engine.tokenizer import DERIVATION, Message, ThinkrecTokenizer


@dataclass
class Recommendation:
    items: list[RankedItem]
    reasoning: str = ""                          # the reasoning between <think> and </think>
    levels: dict[str, str] = field(default_factory=dict)
    reasoning_tokens: int = 0
    prompt_tokens: int = 0
    prompt_ids: list[int] = field(default_factory=list)
    reasoning_ids: list[int] = field(default_factory=list)   # as generated, </think> included when closed
    seconds: dict[str, float] = field(default_factory=dict)


class Recommender:
    """``model`` decodes in this process; with ``model_url`` a ``thinkrec serve-model`` server does
    (``model`` is then None and ``meta`` the checkpoint's metadata, which the server must match)."""

    def __init__(self, model, tokenizer: ThinkrecTokenizer, sid_codes: dict[str, Sequence[int]],
                 history_items: int = 20, model_url: str | None = None, meta=None):
        self.model, self.tokenizer = model, tokenizer
        self.sid_codes = {item: tuple(codes) for item, codes in sid_codes.items()}
        self.trie = build_token_trie(tokenizer, self.sid_codes)
        self.history_items = history_items
        self.backend: Backend = (VLLMBackend(model_url, tokenizer, self.trie, meta) if model_url
                                 else TransformersBackend(model, tokenizer, self.trie))

    def prompt_ids(self, history: Sequence[str], user_text: str | None = None,
                   earlier_turns: Sequence[Message] = (), thinking: bool = False) -> list[int]:
        codes = [self.sid_codes[i] for i in history if i in self.sid_codes]
        messages = recommendation_messages(codes, user_text, earlier_turns, self.history_items)
        ids, _ = self.tokenizer.render_conversation(
            messages, add_generation_prompt=True, assistant_prefix=THINK_PREFIX if thinking else NO_THINK_PREFIX)
        return ids

    def recommend(self, histories: Sequence[Sequence[str]], k: int = 10, num_beams: int | None = None,
                  thinking: bool = False, user_texts: Sequence[str | None] | None = None,
                  earlier_turns: Sequence[Sequence[Message]] | None = None,
                  exclude: Sequence[set[str]] | None = None, max_reasoning_tokens: int = 160,
                  sample: bool = False, temperature: float = 1.0, batch_size: int = 16) -> list[Recommendation]:
        """Top-``k`` items for each history (history items and ``exclude`` never recommended)."""
        n = len(histories)
        user_texts = user_texts or [None] * n
        earlier_turns = earlier_turns or [()] * n
        excludes = [set(h) | (set(exclude[i]) if exclude else set()) for i, h in enumerate(histories)]
        prompts = [self.prompt_ids(histories[i], user_texts[i], earlier_turns[i], thinking) for i in range(n)]
        results = [Recommendation(items=[], prompt_tokens=len(p), prompt_ids=list(p)) for p in prompts]
        item_prompts = prompts
        if thinking:
            started = time.perf_counter()
            generated = self.backend.generate_reasoning(prompts, excludes, max_reasoning_tokens, sample=sample,
                                                        temperature=temperature, batch_size=max(batch_size, 16))
            share = (time.perf_counter() - started) / max(n, 1)
            item_prompts = []
            for i, reasoning in enumerate(generated):
                body = [t for t in reasoning if t not in (self.tokenizer.think_end_id, self.tokenizer.end_id)]
                text = DERIVATION + self.tokenizer.decode(body)   # the prompt opened the first level
                results[i].reasoning, results[i].levels = text, parse_reasoning(text)
                results[i].reasoning_tokens = len(reasoning)
                results[i].reasoning_ids = list(reasoning)
                results[i].seconds["reasoning"] = share
                item_prompts.append(prompts[i] + body + [self.tokenizer.think_end_id, self.tokenizer.item_begin_id])
        started = time.perf_counter()
        ranked = self.backend.beam_search(item_prompts, excludes, k=k, num_beams=num_beams, batch_size=batch_size)
        share = (time.perf_counter() - started) / max(n, 1)
        for result, items in zip(results, ranked):
            result.items = items
            result.seconds["items"] = share
        return results


BACKENDS = ("transformers", "vllm")


def open_recommender(checkpoint, data, sid_codes: dict[str, Sequence[int]], backend: str = "transformers",
                     model_url: str | None = None, device: str | None = None,
                     history_items: int = 20) -> tuple[Recommender, CheckpointMeta]:
    """A checkpoint's recommender (checked against ``data``'s catalog either way): the model loaded
    here (``transformers``), or only its tokenizer with a ``thinkrec serve-model`` server decoding
    (``vllm``, at ``model_url``)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend '{backend}' (choose transformers or vllm)")
    if backend == "vllm":
        if not model_url:
            raise ValueError("the vllm backend needs the server's URL (--model-url http://HOST:PORT)")
        tokenizer, meta = load_checked(checkpoint, data)        # the weights live in the server
        return Recommender(None, tokenizer, sid_codes, history_items, model_url=model_url, meta=meta), meta
    model, tokenizer, meta = load_checkpoint(checkpoint, data, device=device)
    return Recommender(model, tokenizer, sid_codes, history_items), meta
