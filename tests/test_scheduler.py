"""The batch scheduler (engine/scheduler.py): concurrent sessions share forward passes and still
get what each would get alone."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from engine.engine import Engine
from engine.events import ItemsEvent, ReasoningDelta, TraceEvent

MESSAGES = ["a 90s comedy please", "what should I watch next?", "something with romance", "no horror",
            "", "sci-fi from the 80s"]


@pytest.fixture(scope="module")
def engines(built_dataset, tiny_checkpoint, tmp_path_factory):
    """The same checkpoint served one turn at a time and batched. Both run in float64, so that
    padding and batch shapes cannot flip a greedy choice by rounding."""
    out = tmp_path_factory.mktemp("scheduler")
    serial = Engine(built_dataset, tiny_checkpoint, sessions_url=f"sqlite:///{out / 'serial.db'}", batching=False)
    batched = Engine(built_dataset, tiny_checkpoint, sessions_url=f"sqlite:///{out / 'batched.db'}")
    serial.model.double()
    batched.model.double()
    # These tests are about sessions sharing the scheduler's SID beam steps, so ranking goes through
    # its beam jobs: on this tiny catalog the default would rank every item exactly (a scheduler
    # call, tests/test_exact_ranking.py) and no beam step would be left to share.
    for engine in (serial, batched):
        engine.recommender.head_weight, engine.recommender.exact_steps = 0.0, 0
    yield serial, batched
    batched.close()


def _turn(engine, user_id, message, thinking, start=None):
    session = engine.start_session(user_id=user_id)
    if start is not None:
        start.wait()
    deltas, items, trace = [], None, None
    for event in engine.turn(session.id, message, thinking=thinking, k=5, num_beams=8):
        if isinstance(event, ReasoningDelta):
            deltas.append(event)
        elif isinstance(event, ItemsEvent):
            items = [card.item_id for card in event.items]
        elif isinstance(event, TraceEvent):
            trace = event.trace
    return deltas, items, trace


def test_batched_turns_match_single_session_greedy(engines):
    serial, batched = engines
    users = list(serial.user_histories)
    jobs = [(users[n % len(users)], MESSAGES[n % len(MESSAGES)], n % 3 != 0) for n in range(9)]
    alone = [_turn(serial, *job) for job in jobs]
    before = dict(batched.backend.scheduler.stats)
    start = threading.Barrier(len(jobs))
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        together = list(pool.map(lambda job: _turn(batched, *job, start=start), jobs))
    for (deltas_a, items_a, trace_a), (deltas_b, items_b, trace_b) in zip(alone, together):
        assert items_b == items_a
        assert trace_b.levels == trace_a.levels
        assert [b.item_id for b in trace_b.beams] == [b.item_id for b in trace_a.beams]
        assert [b.score for b in trace_b.beams] == pytest.approx([b.score for b in trace_a.beams], abs=1e-6)
    stats = batched.backend.scheduler.stats
    # Rows of different sessions really shared forwards: some decode step ran more rows than
    # one session's widest job (8 beams).
    assert stats["max_rows"] > 8
    assert stats["steps"] > before["steps"]


def test_reasoning_streams_token_by_token_while_batched(engines):
    _, batched = engines
    users = list(batched.user_histories)
    start = threading.Barrier(4)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda n: _turn(batched, users[n], "", True, start=start), range(4)))
    for deltas, items, trace in results:
        assert items
        text = "".join(d.text for d in deltas)
        # Many deltas, not one block at the end: each arrives as the batch decodes it.
        assert len(deltas) >= min(5, len(text.split()))


def test_sharing_saves_forward_passes(engines):
    """The same turns one after another and all at once: at once needs fewer decode steps."""
    _, batched = engines
    users = list(batched.user_histories)[:5]
    scheduler = batched.backend.scheduler
    first = scheduler.stats["steps"]
    for user in users:
        _turn(batched, user, "", True)
    one_by_one = scheduler.stats["steps"] - first
    start = threading.Barrier(len(users))
    first = scheduler.stats["steps"]
    with ThreadPoolExecutor(max_workers=len(users)) as pool:
        list(pool.map(lambda u: _turn(batched, u, "", True, start=start), users))
    at_once = scheduler.stats["steps"] - first
    assert at_once < one_by_one


def test_an_abandoned_stream_leaves_the_batch(engines):
    serial, batched = engines
    scheduler = batched.backend.scheduler
    prompt = batched.recommender.prompt_ids(batched.dataset_history(list(batched.user_histories)[0]), None, [], True)
    stream = scheduler.stream(prompt, set(), max_new_tokens=64)
    taken = [next(stream), next(stream)]
    stream.close()                     # the client went away
    assert len(taken) == 2
    # The scheduler goes on serving, and the row was freed (no job is left holding rows).
    user = list(serial.user_histories)[1]
    assert _turn(batched, user, "", True)[1] == _turn(serial, user, "", True)[1]
    for _ in range(100):
        if not scheduler._owners:
            break
        threading.Event().wait(0.01)
    assert not scheduler._owners


def test_a_failing_job_raises_in_its_caller_and_the_scheduler_goes_on(engines):
    serial, batched = engines
    scheduler = batched.backend.scheduler
    vocabulary = batched.model.get_input_embeddings().weight.shape[0]
    with pytest.raises((IndexError, RuntimeError)):
        list(scheduler.stream([vocabulary + 5], set(), max_new_tokens=4))     # no such token id
    user = list(serial.user_histories)[2]
    assert _turn(batched, user, "a comedy", True)[1] == _turn(serial, user, "a comedy", True)[1]


def test_scores_of_many_callers_are_batched_and_match(engines):
    _, batched = engines
    scheduler, backend = batched.backend.scheduler, batched.backend
    users = list(batched.user_histories)[:4]
    prompts = [batched.recommender.prompt_ids(batched.dataset_history(u), None, [], False) for u in users]
    ranked = backend.beam_search(prompts, [set()] * len(prompts), k=4, num_beams=6)
    paths = [[list(item.token_ids) for item in items] for items in ranked]
    # The beams' own scores come back from teacher forcing, from several threads at once.
    with ThreadPoolExecutor(max_workers=4) as pool:
        scored = list(pool.map(lambda n: scheduler.score([prompts[n]], [paths[n]])[0], range(4)))
    for items, scores in zip(ranked, scored):
        assert scores == pytest.approx([item.score for item in items], abs=1e-6)
    assert torch.is_grad_enabled()     # the scheduler's no_grad stays in its own thread


def test_bench_measures_batched_against_one_turn_at_a_time(engines):
    from engine.bench import run_bench

    serial, batched = engines
    report = run_bench(batched, list(batched.user_histories), turns=1, concurrent=2, serial=serial)
    together, alone = report["2_concurrent_thinking"], report["2_concurrent_thinking_unbatched"]
    assert together["turns"] == alone["turns"] == 6
    assert together["p95_s"] >= together["p50_s"] > 0
    assert report["throughput_gain"] == pytest.approx(together["turns_per_s"] / alone["turns_per_s"], abs=0.01)
    assert report["batch"]["max_rows"] > 1
