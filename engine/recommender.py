"""One model + tokenizer + catalog trie, answering "what next?" for one or many users at once:
optional three-level reasoning (engine/reasoning.py: planned by the engine, generated under the
gated constraint), then the top-K distinct, unseen catalog items (engine/ranking.py). Evaluation,
RL rollouts and the app call this same code path.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from engine.backends import Backend, TransformersBackend, VLLMBackend
from engine.checkpoint import CheckpointMeta, load_checked, load_checkpoint
from engine.constraints import ConstraintFilters, Constraints, Facets
from engine.decoding import RankedItem, build_token_trie
from engine.interests import InterestReader, Transitions
from engine.prompt import NO_THINK_PREFIX, THINK_PREFIX, item_span, recommendation_messages
from engine.ranking import DEFAULT_EXACT_STEPS, DEFAULT_FOLLOW_WEIGHT, DEFAULT_HEAD_WEIGHT, Ranker, ThinkRank
from engine.reasoning import FULL_REASONING_TOKENS, ReasoningPlanner, ReasoningWriter
from engine.slots import SlotGrammar
from engine.tokenizer import Message, ThinkrecTokenizer


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
    available: int | None = None                 # items the constraints leave (None: no constraint)
    # Thinking mode: every candidate in the model's order before level 3's prior re-ranks them
    # (``items`` is the top ``k`` after it); evaluation re-ranks these for other prior weights.
    candidates: list[RankedItem] = field(default_factory=list)
    # How the items were ranked (Ranker.rank_items): "exact" (every admissible item scored) or
    # "beam", the admissible count, the forward steps exact ranking needed, the budget, the head weight.
    ranking: dict = field(default_factory=dict)


class Recommender:
    """``model`` decodes in this process; with ``model_url`` a ``thinkrec serve-model`` server does
    (``model`` is then None and ``meta`` the checkpoint's metadata, which the server must match).
    ``facets`` (every item's year and categories) lets requests restrict the items. Three parts do
    the work: ``planner`` (what the engine writes into the reasoning), ``writer`` (the reasoning the
    model writes) and ``ranker`` (the items; its settings are tuned there)."""

    def __init__(self, model, tokenizer: ThinkrecTokenizer, sid_codes: dict[str, Sequence[int]],
                 history_items: int = 20, model_url: str | None = None, meta=None, facets: Facets | None = None,
                 filter_cache_size: int = 64, category_word: str = "category", follow_weight: float = DEFAULT_FOLLOW_WEIGHT,
                 follow_share: float = 0.8, think_rank: ThinkRank | None = None,
                 same_item: dict[str, str] | None = None, recent_view: int = 0, recent_weight: float = 0.5,
                 head_weight: float = DEFAULT_HEAD_WEIGHT, exact_steps: int | None = DEFAULT_EXACT_STEPS,
                 reader: InterestReader | None = None):
        from engine.item_head import head_of

        self.model, self.tokenizer = model, tokenizer
        # Ids the catalog lists twice for one film (Catalog.duplicates): the reasoning cites only one.
        self.same_item = same_item or {}
        self.sid_codes = {item: tuple(codes) for item, codes in sid_codes.items()}
        self.trie = build_token_trie(tokenizer, self.sid_codes)
        self.history_items = history_items
        self.facets = facets
        self.filter_for = ConstraintFilters(self.trie, facets, filter_cache_size, missing="this recommender has no catalog facets")
        # Where the reasoning names interests, trends and attributes, only the catalog's words
        # (the vLLM server builds the same grammar from the same facets).
        self.slots = (SlotGrammar.build(tokenizer, facets, category_word).attach(self.trie, facets)
                      if facets is not None else None)
        self.backend: Backend = (VLLMBackend(model_url, tokenizer, self.trie, meta, filter_for=self.filter_for)
                                 if model_url else TransformersBackend(model, tokenizer, self.trie, self.filter_for,
                                                                       self.slots))
        self.planner = ReasoningPlanner(tokenizer, self.sid_codes, self.shown_history, self.slots, reader, category_word)
        self.writer = ReasoningWriter(tokenizer, self.backend, self.slots, self.planner.next_opener)
        self.ranker = Ranker(self.backend, self.trie, self.filter_for, head_of(model) if model is not None else None,
                             max((len(codes) for codes in self.sid_codes.values()), default=1), facets,
                             follow_weight, follow_share, think_rank, recent_view, recent_weight, head_weight,
                             exact_steps)
        if reader is not None and reader.transitions is not None:
            self.ranker.use_transitions(reader.transitions, len(self.sid_codes))

    def use_backend(self, backend: Backend) -> None:
        """Decode through ``backend`` from now on (the engine's batch scheduler), every part alike."""
        self.backend = self.writer.backend = self.ranker.backend = backend

    def available(self, constraints: Constraints | None, exclude: set[str]) -> int | None:
        """How many items the constraints leave once ``exclude`` is taken out (None: unconstrained)."""
        restrict = self.filter_for(constraints)
        if restrict is None:
            return None
        return self.trie.cursor(exclude=exclude, restrict=restrict).remaining()

    def prompt_ids(self, history: Sequence[str], user_text: str | None = None,
                   earlier_turns: Sequence[Message] = (), thinking: bool = False) -> list[int]:
        codes = [self.sid_codes[i] for i in history if i in self.sid_codes]
        messages = recommendation_messages(codes, user_text, earlier_turns, self.history_items)
        ids, _ = self.tokenizer.render_conversation(
            messages, add_generation_prompt=True, assistant_prefix=THINK_PREFIX if thinking else NO_THINK_PREFIX)
        return ids

    def shown_history(self, history: Sequence[str]) -> set[str]:
        """The history items the prompt shows (the latest ``history_items``): all reasoning may cite.
        A film the catalog lists under two ids counts once (its latest id), so it is never cited twice."""
        known = [i for i in history if i in self.sid_codes]
        shown = known[-self.history_items:] if self.history_items else known
        latest = {self.same_item.get(i, i): i for i in shown}
        return set(latest.values())

    def worth_reasoning(self, constraints: Constraints | None) -> bool:
        """Whether the adaptive budget reasons for this turn (ReasoningPlanner.worth_reasoning)."""
        return self.planner.worth_reasoning(constraints)

    def item_prompt(self, prompt: Sequence[int], reasoning: Sequence[int]) -> list[int]:
        body = [t for t in reasoning if t not in (self.tokenizer.think_end_id, self.tokenizer.end_id)]
        return list(prompt) + body + [self.tokenizer.think_end_id, self.tokenizer.item_begin_id]

    def recommend(self, histories: Sequence[Sequence[str]], k: int = 10, num_beams: int | None = None,
                  thinking: bool = False, user_texts: Sequence[str | None] | None = None,
                  earlier_turns: Sequence[Sequence[Message]] | None = None,
                  exclude: Sequence[set[str]] | None = None, max_reasoning_tokens: int = FULL_REASONING_TOKENS,
                  sample: bool = False, temperature: float = 1.0, batch_size: int = 16,
                  constraints: Sequence[Constraints | None] | None = None,
                  reasoning: Sequence[Sequence[int] | None] | None = None,
                  follow_weight: float | None = None, think_rank: ThinkRank | None = None,
                  follow_share: float | None = None, shown: int | None = None) -> list[Recommendation]:
        """Top-``k`` items for each history (history items and ``exclude`` never recommended; every
        item satisfies its ``constraints``). ``reasoning``: already generated reasoning per user
        (the app streams it first), used instead of generating it here. Thinking mode: level 3's
        statement re-ranks the candidates (``Ranker.follow``) for the first ``shown`` (default ``k``)
        items people see."""
        n, ranker = len(histories), self.ranker
        num_beams = max(k, num_beams or k)
        user_texts = user_texts or [None] * n
        earlier_turns = earlier_turns or [()] * n
        constraints = list(constraints) if constraints is not None else [None] * n
        excludes = [set(h) | (set(exclude[i]) if exclude else set()) for i, h in enumerate(histories)]
        prompts = [self.prompt_ids(histories[i], user_texts[i], earlier_turns[i], thinking) for i in range(n)]
        results = [Recommendation(items=[], prompt_tokens=len(p), prompt_ids=list(p),
                                  available=self.available(constraints[i], excludes[i]))
                   for i, p in enumerate(prompts)]
        item_prompts = prompts
        if thinking:
            started = time.perf_counter()
            if reasoning is not None:
                generated = [list(r or []) for r in reasoning]
            else:
                plans = [self.planner.plan(histories[i], constraints[i], user_texts[i], max_reasoning_tokens)
                         for i in range(n)]
                generated = self.writer.batch(prompts, plans, max_reasoning_tokens, sample, temperature,
                                              max(batch_size, 16))
            share = (time.perf_counter() - started) / max(n, 1)
            item_prompts = []
            for i, tokens in enumerate(generated):
                results[i].reasoning, results[i].levels = self.writer.describe(tokens)
                results[i].reasoning_tokens = len(tokens)
                results[i].reasoning_ids = list(tokens)
                results[i].seconds["reasoning"] = share
                item_prompts.append(self.item_prompt(prompts[i], tokens))
        started = time.perf_counter()
        priors = ranker.priors(histories)
        scored: list[dict] = []         # what ranking under item_prompts scored (rank_thinking reuses it)
        if not thinking and ranker.recent_view:
            recent = [self.prompt_ids(list(histories[i])[-ranker.recent_view:], user_texts[i], earlier_turns[i], False)
                      for i in range(n)]
            ranked = ranker.rank_direct(prompts, recent, excludes, constraints, k, num_beams, batch_size, priors)
        else:
            ranked, how = ranker.rank_items(item_prompts, excludes, constraints, k=num_beams if thinking else k,
                                            num_beams=num_beams, batch_size=batch_size,
                                            priors=priors, scored=scored)
            for result, info in zip(results, how):
                result.ranking = info
        if thinking:
            fusion = think_rank or ranker.think_rank
            direct = [self.prompt_ids(histories[i], user_texts[i], earlier_turns[i], False) for i in range(n)]
            # The reasoning-alone view, only when the fusion weighs it.
            empty = self.prompt_ids([], thinking=True) if fusion.contrast else []
            alone = [self.item_prompt(empty, r.reasoning_ids) if fusion.contrast else [] for r in results]
            ranked = ranker.rank_thinking(fusion, ranked, direct, item_prompts, alone,
                                          excludes, constraints, num_beams, batch_size, priors, scored)
        seconds = (time.perf_counter() - started) / max(n, 1)
        weight = ranker.follow_weight if follow_weight is None else follow_weight
        share = ranker.follow_share if follow_share is None else follow_share
        for result, items in zip(results, ranked):
            if thinking:
                # The whole candidate pool is re-ranked, so a following item can move into the top k.
                result.candidates = items
                items = ranker.follow(items, result.levels.get("recommendation", ""), weight, share, shown or k)[:k]
            result.items = items
            result.seconds["items"] = seconds
        return results


BACKENDS = ("transformers", "vllm")


def _window(meta: CheckpointMeta, history_items: int | None) -> int:
    """History items a prompt lists: as many as the checkpoint was trained with, unless told
    otherwise (0: the whole history)."""
    return meta.history_items if history_items is None else history_items


def open_recommender(checkpoint, data, sid_codes: dict[str, Sequence[int]], backend: str = "transformers",
                     model_url: str | None = None, device: str | None = None,
                     history_items: int | None = None, facets: Facets | None = None) -> tuple[Recommender, CheckpointMeta]:
    """A checkpoint's recommender (checked against ``data``'s catalog either way): the model loaded
    here (``transformers``), or only its tokenizer with a ``thinkrec serve-model`` server decoding
    (``vllm``, at ``model_url``). ``facets`` defaults to the catalog's at ``data``."""
    from data.manifest import Manifest

    from data.catalog import Catalog

    category_word = Manifest.load(data).category_key
    catalog = Catalog(data)
    if facets is None:
        facets = Facets(*catalog.attribute_table())
    same_item = catalog.duplicates()
    reader = interest_reader(catalog, sid_codes)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend '{backend}' (choose transformers or vllm)")
    if backend == "vllm":
        if not model_url:
            raise ValueError("the vllm backend needs the server's URL (--model-url http://HOST:PORT)")
        tokenizer, meta = load_checked(checkpoint, data)        # the weights live in the server
        return Recommender(None, tokenizer, sid_codes, _window(meta, history_items), model_url=model_url, meta=meta,
                           facets=facets, category_word=category_word, same_item=same_item, reader=reader), meta
    model, tokenizer, meta = load_checkpoint(checkpoint, data, device=device)
    return Recommender(model, tokenizer, sid_codes, _window(meta, history_items), facets=facets, category_word=category_word,
                       same_item=same_item, reader=reader), meta


def interest_reader(catalog, sid_codes: dict[str, Sequence[int]]) -> InterestReader:
    """The catalog's reader of levels 1-2, citing items as spans (people see each as its title), with
    the item-to-item relations of the dataset's training sequences for level 3 (``catalog_transitions``)."""
    ids, titles = catalog.id_title_table()
    _, years, categories = catalog.attribute_table()
    return InterestReader.from_table(ids, titles, years, categories, catalog.item_vectors(),
                                     cite=lambda item_id: item_span(sid_codes[item_id]),
                                     transitions=catalog_transitions(catalog.folder))


def catalog_transitions(folder) -> Transitions | None:
    """Which item followed which in the dataset's training sequences (``splits/train.jsonl``): where
    level 3 reads the latest items lead. None when the folder has no training split. Only the
    training split is read, so no held-out target is ever counted."""
    from data.clean import read_split

    path = Path(folder) / "splits" / "train.jsonl"
    if not path.exists():
        return None
    return Transitions().fit(row.get("item_ids", []) for row in read_split(path))
