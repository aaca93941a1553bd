"""Training corpora, one class per task. Each turns a dataset view into token examples with a loss
mask, through the same prompt layout (engine/prompt.py) the engine serves with.

Perception / itemic alignment (pre-training): an item token means its title and attributes.
  ItemToText      SID -> "Title (year). Genres: ..."
  TextToItem      title and attributes -> SID
  ItemQA          year / genres of an SID
  SequenceWindows a user's items in time order, cut into prompt-sized windows in the serving layout;
                  every item after the first is a target (next-item prediction at every position)
  Persona         user attributes interleaved with their items and their taste in words
  ItemText        plain item text (keeps the language side)
Reasoning (SFT):
  NextItemCoT     history -> three-level reasoning -> next item; and the same positions without
                  reasoning (empty think block), so one model serves both modes
  DialogueSteering a request ("a 90s comedy", "no more horror", "more like <title>"), sometimes after
                  a rejected first suggestion; the reasoning folds the request in and the item
                  satisfies it (requests are built from the target's attributes, so they are)
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from engine.prompt import (answer_text, earlier_assistant_turn, item_span, recommendation_messages)
from engine.tokenizer import Message, ThinkrecTokenizer
from training.dataset_view import DatasetView
from training.teacher import DeterministicTeacher, Request, decade_of
from training.trainer import Example

ASKS = ["What should I watch next?", "Recommend something for me.", "Any suggestion for tonight?",
        "What would I like next?", "Pick my next one."]


def _decade_words(decade: int) -> str:
    return f"{decade}s" if decade < 1900 else f"{str(decade)[2:]}s"


@dataclass
class Task:
    tokenizer: ThinkrecTokenizer
    view: DatasetView

    name = "task"

    def chat(self, messages: list[Message], history_loss: bool = False) -> Example:
        """One conversation as a training example. ``history_loss``: the history items the system
        message lists are targets too, each from the ones before it (next-item prediction at every
        position of the prompt, like SASRec's training, at no extra compute)."""
        ids, mask = self.tokenizer.render_conversation(messages)
        if history_loss:
            learn_history(ids, mask, self.tokenizer)
        return Example(ids, mask, self.name)

    def span(self, item_id: str) -> str:
        return item_span(self.view.codes[item_id])


def learn_history(ids: list[int], mask: list[int], tokenizer: ThinkrecTokenizer) -> None:
    """Turn the loss on for the SID tokens of every history item but the first in the system
    message (the span markers stay off: they carry nothing to learn)."""
    system_end = ids.index(tokenizer.end_id) if tokenizer.end_id in ids else 0
    begin, end = tokenizer.item_begin_id, tokenizer.item_end_id
    spans = 0
    inside = False
    for n in range(system_end):
        if ids[n] == begin:
            inside, spans = True, spans + 1
        elif ids[n] == end:
            inside = False
        elif inside and spans > 1:
            mask[n] = 1


class ItemToText(Task):
    name = "item_to_text"

    def build(self, rng: random.Random) -> list[Example]:
        word = "Genres" if self.view.category_word == "genre" else "Categories"
        out = []
        for item in self.view.items.values():
            facts = f"{item.label()}. {word}: {', '.join(item.categories) or 'none'}."
            out.append(self.chat([Message("user", f"What is {self.span(item.item_id)}?"),
                                  Message("assistant", facts)]))
        return out


class TextToItem(Task):
    name = "text_to_item"

    def build(self, rng: random.Random) -> list[Example]:
        out = []
        for item in self.view.items.values():
            hint = f" ({', '.join(item.categories[:2])})" if item.categories else ""
            out.append(self.chat([Message("user", f"Which item is {item.label()}{hint}?"),
                                  Message("assistant", self.span(item.item_id))]))
        return out


class ItemQA(Task):
    name = "item_qa"

    def build(self, rng: random.Random) -> list[Example]:
        out = []
        for item in self.view.items.values():
            span = self.span(item.item_id)
            if item.year:
                out.append(self.chat([Message("user", f"When was {span} released?"),
                                      Message("assistant", f"In {item.year}, the {_decade_words(decade_of(item.year))}.")]))
            if item.categories:
                out.append(self.chat([Message("user", f"Which {self.view.category_word}s does {span} have?"),
                                      Message("assistant", ", ".join(item.categories) + ".")]))
        return out


class SequenceWindows(Task):
    """Next-item training at every position, in the layout the engine serves with: each user's
    training sequence is cut into windows of the prompt's length, each window is a system message
    listing its items (every item after the first is a target, from the ones before it), the ask,
    and a non-thinking answer with the items that came next. Each window's answer runs into the
    next window's history, so every item after a user's first is a target at least once a pass
    (the answer's later items twice). This is the dense objective SASRec trains on, at about 8.6
    tokens per target on ML-100K, in the one prompt layout the engine serves."""

    name = "sequence_window"

    def __init__(self, tokenizer, view, history_items: int = 20, answer_items: int = 5, min_history: int = 1):
        super().__init__(tokenizer, view)
        self.history_items, self.answer_items, self.min_history = history_items, answer_items, min_history

    def build(self, rng: random.Random) -> list[Example]:
        out = []
        width, answer = self.history_items, self.answer_items
        for row in self.view.train:
            items = row["item_ids"]
            cut = len(items) - 1
            while cut >= self.min_history:
                history = [self.view.codes[i] for i in items[max(0, cut - width):cut]]
                target = [self.view.codes[i] for i in items[cut:cut + answer]]
                messages = recommendation_messages(history, rng.choice(ASKS), max_items=width)
                out.append(self.chat(messages + [Message("assistant", answer_text(None, target))], history_loss=True))
                cut -= width
        return out


def taste_words(view: DatasetView, item_ids: list[str], top: int = 3) -> str:
    counts = Counter(c for i in item_ids for c in view.items[i].categories)
    decades = Counter(decade_of(view.items[i].year) for i in item_ids if view.items[i].year)
    words = ", ".join(c for c, _ in counts.most_common(top)) or "varied items"
    era = f", mostly from the {_decade_words(decades.most_common(1)[0][0])}" if decades else ""
    return f"Mostly {words}{era}."


class Persona(Task):
    name = "persona"

    def build(self, rng: random.Random) -> list[Example]:
        out = []
        for row in self.view.train:
            items = row["item_ids"][-20:]
            if len(items) < 3:
                continue
            user = self.view.users.get(row["user_id"], {})
            who = " ".join(f"{k}: {v}." for k, v in user.items() if v) or "Unknown profile."
            text = f"Viewer. {who} Recently: " + "".join(self.span(i) for i in items)
            out.append(self.chat([Message("user", f"Describe this viewer. {text}"),
                                  Message("assistant", taste_words(self.view, items))]))
        return out


class ItemText(Task):
    name = "item_text"

    def build(self, rng: random.Random) -> list[Example]:
        out = []
        for item in self.view.items.values():
            ids = self.tokenizer.encode(item.label() + ". " + ", ".join(item.categories) + ".")
            out.append(Example(ids, [0] + [1] * (len(ids) - 1), self.name))
        return out


@dataclass
class Position:
    user_id: str
    history: list[str]
    timestamps: list[float]
    target: str


def training_positions(view: DatasetView, per_user: int, min_history: int = 3, stride: int = 1) -> list[Position]:
    """Up to ``per_user`` next-item positions per user, the latest first, ``stride`` apart."""
    positions = []
    for row in view.train:
        items, times = row["item_ids"], row["timestamps"]
        cuts = range(len(items) - 1, min_history - 1, -stride)
        for cut in list(cuts)[:per_user]:
            positions.append(Position(row["user_id"], items[:cut], times[:cut], items[cut]))
    return positions


class NextItemCoT(Task):
    """Next-item answers with and without reasoning. An answer lists the true next item first and
    then the user's following items, so one example teaches several steps of the sequence; beam
    search at serving time ranks the first item. Non-thinking answers are cheap, so they cover more
    positions than the reasoning ones."""

    name = "next_item"

    def __init__(self, tokenizer, view, teacher: DeterministicTeacher, per_user: int = 2,
                 plain_per_user: int = 6, plain_items: int = 5, cot_items: int = 3, history_loss: bool = False,
                 history_items: int = 20):
        super().__init__(tokenizer, view)
        self.history_items = history_items
        self.teacher, self.per_user = teacher, per_user
        self.history_loss = history_loss
        self.plain_per_user, self.plain_items, self.cot_items = plain_per_user, plain_items, cot_items
        self._sequences = {row["user_id"]: row["item_ids"] for row in view.train}

    def messages(self, position: Position, user_text: str | None = None) -> list[Message]:
        history = [self.view.codes[i] for i in position.history]
        return recommendation_messages(history, user_text, max_items=self.history_items)

    def answer_items(self, position: Position, count: int) -> list[tuple[int, ...]]:
        sequence = self._sequences[position.user_id]
        start = len(position.history)
        return [self.view.codes[i] for i in sequence[start:start + count]]

    def build(self, rng: random.Random) -> list[Example]:
        out = []
        for position in training_positions(self.view, self.per_user):
            r = self.teacher.rationale(position.history, position.timestamps, target=position.target)
            levels = {"derivation": r.derivation, "evolution": r.evolution, "recommendation": r.recommendation}
            answer = answer_text(levels, self.answer_items(position, self.cot_items))
            example = self.chat(self.messages(position, rng.choice(ASKS)) + [Message("assistant", answer)])
            example.task = "cot"
            out.append(example)
        for position in training_positions(self.view, self.plain_per_user, stride=self.plain_items):
            answer = answer_text(None, self.answer_items(position, self.plain_items))
            example = self.chat(self.messages(position, rng.choice(ASKS)) + [Message("assistant", answer)],
                                self.history_loss)
            example.task = "no_think"
            out.append(example)
        return out


class DialogueSteering(NextItemCoT):
    name = "dialogue"

    def request_for(self, position: Position, rng: random.Random) -> Request | None:
        """A request the real next item satisfies, built from its attributes."""
        target = self.view.items[position.target]
        decade = decade_of(target.year)
        genres = list(target.categories)
        recent = Counter(c for i in position.history[-10:] for c in self.view.items[i].categories)
        avoidable = [g for g, _ in recent.most_common() if g not in genres]
        kinds = ["genre"] * bool(genres) + ["decade"] * bool(decade) + ["both"] * bool(genres and decade) \
            + ["avoid"] * bool(avoidable) + ["like"] * (len(position.history) >= 3)
        if not kinds:
            return None
        kind = rng.choice(kinds)
        genre = rng.choice(genres) if genres else ""
        if kind == "genre":
            text = rng.choice(["Something {g} please.", "I'm in the mood for {g}.", "Any good {g}?"]).format(g=genre.lower())
            return Request(text, categories=(genre,))
        if kind == "decade":
            text = rng.choice(["Something from the {d}?", "Any {d} movies?", "I want something {d}."]).format(d=_decade_words(decade))
            return Request(text, decade=decade)
        if kind == "both":
            text = rng.choice(["A {d} {g} please.", "Give me {g} from the {d}."]).format(d=_decade_words(decade), g=genre.lower())
            return Request(text, categories=(genre,), decade=decade)
        if kind == "avoid":
            avoid = avoidable[0]
            text = rng.choice(["No more {a}, please.", "Enough {a} for now.", "Nothing {a} this time."]).format(a=avoid.lower())
            return Request(text, avoid=(avoid,))
        anchor = self._closest_history_item(position)
        return Request(f"More like {self.view.items[anchor].title}.", like_title=self.view.items[anchor].title)

    def _closest_history_item(self, position: Position) -> str:
        target_vector = self.view.embeddings[self.view.items[position.target].row]
        recent = position.history[-20:]
        sims = self.view.embeddings[[self.view.items[i].row for i in recent]] @ target_vector
        return recent[int(sims.argmax())]

    def _decoy(self, position: Position, request: Request, rng: random.Random) -> str | None:
        """A first suggestion the user turns down: fits the request, is not the target or seen.
        Drawn from the items of the training sequences, so no held-out item (a valid or test
        target nobody trained on) is ever shown as one a user rejected."""
        seen = set(position.history) | {position.target}
        if self._decoy_pool is None:
            self._decoy_pool = sorted({i for row in self.view.train for i in row["item_ids"]})
        pool = self._decoy_pool
        for _ in range(50):
            item = self.view.items[rng.choice(pool)]
            if item.item_id in seen:
                continue
            if request.categories and not set(request.categories) & set(item.categories):
                continue
            if request.avoid and set(request.avoid) & set(item.categories):
                continue
            return item.item_id
        return None

    cold_share: float = 0.25         # positions cut to a fresh or short history (0-2 items)
    _decoy_pool: list[str] | None = None
    refine_share: float = 0.2        # two-turn refinements: a request, then "no <category>" on top

    def _cold(self, position: Position, rng: random.Random) -> Position:
        """The same target seen by a fresh user (no history) or one with 1-2 liked items."""
        keep = rng.choice([0, 0, 1, 2])
        return Position(position.user_id, position.history[len(position.history) - keep:] if keep else [],
                        position.timestamps[len(position.timestamps) - keep:] if keep else [], position.target)

    def _refinement(self, position: Position, request: Request, rng: random.Random) -> str | None:
        """A category to add as "no <category>" in a second turn: one the target does not carry."""
        target = set(self.view.items[position.target].categories)
        recent = [c for i in position.history[-10:] for c in self.view.items[i].categories]
        pool = [c for c in dict.fromkeys(recent + self.view.vocabulary)
                if c not in target and c not in request.avoid and c not in request.categories and c != "unknown"]
        return rng.choice(pool[:6]) if pool else None

    def build(self, rng: random.Random) -> list[Example]:
        out = []
        for position in training_positions(self.view, 1):
            if rng.random() < self.cold_share:
                position = self._cold(position, rng)
            request = self.request_for(position, rng)
            if request is None:
                continue
            target = [self.view.codes[position.target]]
            earlier: list[Message] = []
            user_text = request.text
            roll = rng.random()
            decoy = self._decoy(position, request, rng) if roll < 0.3 else None
            refine = self._refinement(position, request, rng) if decoy is None and roll < 0.3 + self.refine_share else None
            if decoy:
                # Two turns: a suggestion the user turns down, then the real one.
                earlier = [Message("user", request.text, trusted=False),
                           earlier_assistant_turn([self.view.codes[decoy]])]
                user_text = rng.choice(["Not that one, I've seen it.", "Something else please.",
                                        "No, another one."])
                request = Request(f"{request.text} {user_text}", request.categories, request.decade,
                                  request.avoid, request.like_title)
            elif refine:
                # Two turns: the first request stays active and the second adds to it.
                first = self._decoy(position, request, rng)
                if first:
                    earlier = [Message("user", request.text, trusted=False),
                               earlier_assistant_turn([self.view.codes[first]])]
                    user_text = rng.choice(["No {a}, please.", "Nothing {a} though.", "And no {a}."]).format(a=refine.lower())
                    request = Request(f"{request.text} {user_text}", request.categories, request.decade,
                                      request.avoid + (refine,), request.like_title)
            thinking = rng.random() < 0.6
            levels = None
            if thinking:
                r = self.teacher.rationale(position.history, position.timestamps, target=position.target, request=request)
                levels = {"derivation": r.derivation, "evolution": r.evolution, "recommendation": r.recommendation}
            history = [self.view.codes[i] for i in position.history]
            messages = recommendation_messages(history, user_text, earlier, self.history_items)
            out.append(self.chat(messages + [Message("assistant", answer_text(levels, target))]))
        return out


def tokenizer_corpus(view: DatasetView, teacher: DeterministicTeacher, sample_users: int = 300, seed: int = 0) -> list[str]:
    """Text the BPE is trained on: item text, prompt wording and a sample of rationales."""
    rng = random.Random(seed)
    texts = [f"{i.label()}. {', '.join(i.categories)}." for i in view.items.values()]
    texts += ASKS + ["History:", "Describe this viewer.", "What is", "Which item is", "When was", "released?"]
    from engine.prompt import SYSTEM_TEXT
    texts.append(SYSTEM_TEXT)
    rows = rng.sample(view.train, min(sample_users, len(view.train)))
    for row in rows:
        if len(row["item_ids"]) < 4:
            continue
        r = teacher.rationale(row["item_ids"][:-1], row["timestamps"][:-1], target=row["item_ids"][-1])
        texts += [r.derivation, r.evolution, r.recommendation]
    return texts * 3
