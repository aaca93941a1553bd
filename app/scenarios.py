"""Scripted demo scenarios: a user to start as, then requests and feedback clicks, each with a
sentence on what it should show. They are plain YAML or JSON files, so anyone can write one:

    name: Steering by genre, then by decade
    user: longest             # a dataset user id, "fresh", "longest" or "two-interests"
    thinking: true            # default for every step; a step may override it (and budget, k)
    steps:
      - say: what should I watch next?
        expect: Recommendations from the history alone.
      - say: a {new_category} please
        expect: Every item is a {new_category}; level 3 states it.
      - feedback: dislike     # like | dislike
        item: 1               # the rank in the last answer
        expect: The disliked film never comes back.

Placeholders in ``say`` and ``expect`` are filled from the chosen user and the catalog, so a scenario
also reads on another dataset: ``{long_interest}`` (the user's most frequent category),
``{recent_interest}`` (the most frequent among their latest items), ``{new_category}`` (a common
catalog category the user's latest items lack), ``{decade}`` (the catalog's second-largest decade);
the last two are picked so that the requests they make still leave a full answer the user has not seen.

``play`` runs a scenario on a built engine and yields each step's outcome; ``thinkrec demo
--scenario FILE`` runs one headless and writes its transcript. The module reads engine events only,
never torch, so the app's UI can import it.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from engine.constraints import Constraints
from engine.events import collect

BUNDLED = Path(__file__).parent / "demo_scenarios"
USER_CHOICES = ("fresh", "longest", "two-interests")


class Step(BaseModel):
    say: str | None = None                        # a chat message (may be "")
    feedback: Literal["like", "dislike"] | None = None
    item: int = 1                                 # feedback: rank in the last answer (1 = top)
    expect: str = ""                              # what the step should show, in a sentence
    thinking: bool | None = None
    budget: str | int | None = None
    k: int | None = None

    @model_validator(mode="after")
    def _one_action(self):
        if (self.say is None) == (self.feedback is None):
            raise ValueError("a step has exactly one of 'say' (a message) or 'feedback' (like | dislike)")
        if self.item < 1:
            raise ValueError(f"'item' is a rank in the last answer, from 1; got {self.item}")
        return self


class Scenario(BaseModel):
    name: str
    description: str = ""
    user: str = "fresh"
    thinking: bool = True
    budget: str | int = "full"
    k: int = 10
    steps: list[Step] = Field(min_length=1)


class StepOutcome(BaseModel):
    number: int
    action: str                                   # what was done: the message, or "dislike: Title"
    expect: str
    levels: dict[str, str] = {}
    items: list[dict] = []
    reply: str = ""
    notices: list[str] = []
    active: str = ""                              # constraints active after the step
    matching: float | None = None                 # share of items satisfying the active constraints
    latency_ms: float = 0.0
    session_id: str


def load_scenario(path: str | Path) -> Scenario:
    """A scenario from a .yaml/.yml/.json file; a bad file raises ValueError saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        named = BUNDLED / f"{path.name}.yaml"
        if not path.suffix and named.is_file():
            path = named
        else:
            raise ValueError(f"no scenario file '{path}' (bundled: {', '.join(bundled_names())})")
    text = path.read_text()
    try:
        spec = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ValueError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {error}") from None
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: a scenario is a mapping with 'name' and 'steps'")
    try:
        return Scenario.model_validate(spec)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors())
        raise ValueError(f"{path}: {problems}") from None


def bundled_names() -> list[str]:
    return sorted(p.stem for p in BUNDLED.glob("*.yaml"))


def bundled() -> dict[str, Path]:
    return {p.stem: p for p in sorted(BUNDLED.glob("*.yaml"))}


# -- choosing the user and filling placeholders from the data -----------------------------------
def _recent_size(history: list[str]) -> int:
    """How many latest items count as "recent": a fifth of the history, at least 3."""
    return max(3, len(history) // 5)


def _top_category(engine, items: list[str]) -> str | None:
    counts = Counter(c for i in items for c in engine.facets.categories_of(i))
    return counts.most_common(1)[0][0] if counts else None


def pick_user(engine, choice: str) -> str | None:
    """A dataset user id for a scenario's ``user`` (None: a fresh user)."""
    if choice == "fresh":
        return None
    histories = engine.user_histories
    if choice in ("longest", "two-interests"):
        if not histories:
            raise ValueError("the dataset has no users to start as")
        ranked = sorted(histories, key=lambda u: (-len(histories[u]), u))
        if choice == "longest":
            return ranked[0]
        # Among the longer half, the user whose recent interest differs most from the long-term one.
        best, best_gap = ranked[0], -1.0
        for user in ranked[:max(1, len(ranked) // 2)]:
            history = histories[user]
            recent = history[-_recent_size(history):]
            old, new = _top_category(engine, history[:-len(recent)] or history), _top_category(engine, recent)
            if old is None or new is None or old == new:
                continue
            share_new = sum(new in engine.facets.categories_of(i) for i in recent) / len(recent)
            share_old = sum(old in engine.facets.categories_of(i) for i in recent) / len(recent)
            if share_new - share_old > best_gap:
                best, best_gap = user, share_new - share_old
        return best
    if str(choice) not in histories:
        raise ValueError(f"no dataset user '{choice}' (or use one of: {', '.join(USER_CHOICES)})")
    return str(choice)


SHOWN = 10        # a step's answer: the genre keeps 4 answers' worth of unseen items, genre + decade 2


def placeholders(engine, history: list[str], shown: int = SHOWN) -> dict[str, str]:
    """Values for a scenario's placeholders, from the user and the catalog. ``new_category`` and
    ``decade`` are picked so that the request they make ("a {new_category} please", then "from the
    {decade}") still leaves a full answer of items the user has not seen."""
    facets = engine.facets
    recent = history[-_recent_size(history):] if history else []
    common = facets.vocabulary                                  # categories, most items first
    in_recent = Counter(c for i in recent for c in facets.categories_of(i))
    seen = set(history)
    unseen = [(set(facets.categories_of(i)), facets.year_of(i)) for i in facets.item_ids if i not in seen]

    def available(category: str, decade: int | None = None) -> int:
        return sum(category in cats and (decade is None or (year is not None and year // 10 * 10 == decade))
                   for cats, year in unseen)

    first = common[0] if common else ""
    # A genre the latest items lack; a user whose latest items touch every genre gets the one
    # they touch least (catalog order breaks ties), among those with enough items left.
    fresh = sorted(common, key=lambda c: in_recent[c]) or [first]
    new_category = next((c for c in fresh if available(c) >= 4 * shown), fresh[0])
    decades = [d for d, _ in Counter((y // 10) * 10 for y in map(facets.year_of, facets.item_ids) if y).most_common()]
    # The catalog's second-largest decade reads as a change of era; failing that, the next ones.
    order = decades[1:] + decades[:1]
    decade = next((d for d in order if available(new_category, d) >= 2 * shown),
                  max(order, key=lambda d: available(new_category, d), default=None))
    return {"long_interest": (_top_category(engine, history) or first).lower(),
            "recent_interest": (_top_category(engine, recent) or first).lower(),
            "new_category": new_category.lower(),
            "decade": f"{decade}s" if decade is not None else ""}


def _fill(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), text)


# -- playing ---------------------------------------------------------------------------------
def begin(engine, scenario: Scenario, session_id: str | None = None) -> dict:
    """A play's state, plain data (the app keeps it per browser): the session, the next step's
    index, the last answer's items and the placeholder values."""
    if session_id is None:
        session_id = engine.start_session(user_id=pick_user(engine, scenario.user)).id
    return {"session_id": session_id, "next": 0, "last_items": [],
            "values": placeholders(engine, engine.sessions.get(session_id).history)}


def play_step(engine, scenario: Scenario, state: dict) -> StepOutcome:
    """Run the next step (``state`` moves on); raises IndexError when all steps have run."""
    if state["next"] >= len(scenario.steps):
        raise IndexError("the scenario has no more steps")
    number, step, values = state["next"] + 1, scenario.steps[state["next"]], state["values"]
    session_id = state["session_id"]
    state["next"] += 1
    if step.feedback:
        if not state["last_items"]:
            raise ValueError(f"step {number}: feedback needs an answer before it")
        card = state["last_items"][min(step.item, len(state["last_items"])) - 1]
        engine.feedback(session_id, card["item_id"], step.feedback)
        return StepOutcome(number=number, action=f"{step.feedback}: {card['title']}",
                           expect=_fill(step.expect, values), session_id=session_id)
    text = _fill(step.say or "", values)
    outcome = StepOutcome(number=number, action=text, expect=_fill(step.expect, values), session_id=session_id)
    thinking = scenario.thinking if step.thinking is None else step.thinking
    budget = step.budget if step.budget is not None else scenario.budget
    result = collect(engine.turn(session_id, text, thinking=thinking, k=step.k or scenario.k, budget=budget))
    outcome.levels, outcome.items = result.levels, result.item_dicts()
    outcome.reply, outcome.notices = result.reply, result.told
    if result.trace is not None:
        outcome.active = result.trace.request.active
        outcome.latency_ms = result.trace.latency_ms.get("total_ms", 0.0)
        outcome.matching = _matching(result.trace.request.constraints, outcome.items)
    state["last_items"] = outcome.items or state["last_items"]
    return outcome


def play(engine, scenario: Scenario, session_id: str | None = None) -> Iterator[StepOutcome]:
    """Run the scenario step by step on ``engine`` (a new session unless ``session_id``)."""
    state = begin(engine, scenario, session_id)
    while state["next"] < len(scenario.steps):
        yield play_step(engine, scenario, state)


def _matching(constraints: dict, items: list[dict]) -> float | None:
    if not constraints or not items:
        return None
    active = Constraints.model_validate(constraints)
    if not active.is_hard():
        return None
    return sum(active.allows(i["categories"], i["year"]) for i in items) / len(items)


def step_markdown(o: StepOutcome) -> str:
    """One step as Markdown: the action, what it should show, the levels, the items, the facts."""
    lines = [f"## Step {o.number}: {o.action}", "", f"*What it should show:* {o.expect}", ""]
    for level, body in o.levels.items():
        lines += [f"**{level.capitalize()}:** {body.strip()}", ""]
    if o.items:
        lines += ["| # | title | year | categories | SID |", "|---|---|---|---|---|"]
        lines += [f"| {i['rank']} | {i['title']} | {i['year'] or ''} | {', '.join(i['categories'])} | `{i['sid']}` |"
                  for i in o.items]
        lines.append("")
    facts = ([f"active: {o.active}"] if o.active else []) + \
            ([f"{o.matching:.0%} of the items satisfy it"] if o.matching is not None else []) + \
            ([f"{o.latency_ms / 1000:.2f} s"] if o.latency_ms else [])
    if facts:
        lines += ["_" + " · ".join(facts) + "_", ""]
    lines += [f"> {n}" for n in o.notices] + ([""] if o.notices else [])
    return "\n".join(lines).rstrip() + "\n"


def transcript_markdown(scenario: Scenario, outcomes: list[StepOutcome]) -> str:
    lines = [f"# {scenario.name}", "", scenario.description, "", f"Started as: **{scenario.user}**", ""]
    return "\n".join(lines) + "\n" + "\n".join(step_markdown(o) for o in outcomes)
