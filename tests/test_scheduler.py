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
        engine.recommender.ranker.head_weight, engine.recommender.ranker.exact_steps = 0.0, 0
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
    from app.bench.turns import run_bench

    serial, batched = engines
    report = run_bench(batched, list(batched.user_histories), turns=1, concurrent=2, serial=serial)
    together, alone = report["2_concurrent_thinking"], report["2_concurrent_thinking_unbatched"]
    assert together["turns"] == alone["turns"] == 6
    assert together["p95_s"] >= together["p50_s"] > 0
    assert report["throughput_gain"] == pytest.approx(together["turns_per_s"] / alone["turns_per_s"], abs=0.01)
    assert report["batch"]["max_rows"] > 1


def _read(job) -> list[int]:
    """A submitted reasoning job's tokens, raising its error if it failed."""
    from engine.scheduler import _DONE

    tokens = []
    while True:
        token = job.out.get(timeout=120)
        if token is _DONE:
            return tokens
        if isinstance(token, BaseException):
            raise token
        tokens.append(token)


def test_a_job_that_fails_mid_batch_fails_alone(engines):
    """One job feeds a token the model cannot embed while others decode beside it: the batched
    forward fails, each job's rows run alone, and only that job fails; the others get exactly
    what they get alone."""
    from engine.scheduler import _Reasoning

    _, batched = engines
    scheduler = batched.backend.scheduler
    vocabulary = batched.model.get_input_embeddings().weight.shape[0]
    users = list(batched.user_histories)[:3]
    prompts = [batched.recommender.prompt_ids(batched.dataset_history(u), None, [], True) for u in users]
    alone = [list(scheduler.stream(p, set(), max_new_tokens=12)) for p in prompts]

    class Poisoned(_Reasoning):
        def _next(self, logits):
            fed = super()._next(logits)
            return [vocabulary + 5] if fed else fed        # no such token: its next forward fails

    def job(prompt, kind=_Reasoning):
        stops = {batched.tokenizer.think_end_id, batched.tokenizer.end_id}
        return kind(batched.tokenizer, scheduler.trie, prompt, set(), 12, 0.0, stops, None, scheduler.slots)

    failed, isolated = scheduler.stats["failed_jobs"], scheduler.runner.stats["isolated_decodes"]
    good = [job(p) for p in prompts]
    bad = job(prompts[0], Poisoned)
    with scheduler._wake:                # admitted in one step, so they share every forward
        for j in good[:2] + [bad] + good[2:]:
            scheduler._submit(j)
    with pytest.raises((IndexError, RuntimeError)):
        _read(bad)
    assert [_read(j) for j in good] == alone
    assert scheduler.stats["failed_jobs"] == failed + 1
    assert scheduler.runner.stats["isolated_decodes"] > isolated


def test_the_loop_starts_again_after_a_failure_outside_any_job(engines, monkeypatch):
    _, batched = engines
    scheduler = batched.backend.scheduler
    prompt = batched.recommender.prompt_ids(batched.dataset_history(list(batched.user_histories)[0]), None, [], True)
    expected = list(scheduler.stream(prompt, set(), max_new_tokens=6))
    admit, calls = scheduler._waiting.admit, []

    def broken_once(running):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug in admission")
        return admit(running)

    monkeypatch.setattr(scheduler._waiting, "admit", broken_once)
    restarts = scheduler.stats["restarts"]
    # The job waited through the failure and runs once the loop is back.
    assert list(scheduler.stream(prompt, set(), max_new_tokens=6)) == expected
    assert scheduler.stats["restarts"] == restarts + 1
    assert scheduler.health()["alive"]


def test_a_dead_thread_is_noticed_and_started_again(engines):
    from engine.scheduler import BatchScheduler, SchedulerTimeout

    _, batched = engines
    scheduler = BatchScheduler(batched.model, batched.tokenizer, batched.recommender.trie, timeout_s=1.0)
    prompt = batched.recommender.prompt_ids(batched.dataset_history(list(batched.user_histories)[0]), None, [], True)
    loop = scheduler._loop
    scheduler._loop = lambda: None        # the thread ends at once, as if it had died
    with pytest.raises(SchedulerTimeout):
        list(scheduler.stream(prompt, set(), max_new_tokens=4))
    scheduler._loop = loop
    scheduler._thread.join(5)
    assert list(scheduler.stream(prompt, set(), max_new_tokens=4))       # the next caller restarts it
    assert scheduler.stats["restarts"] >= 1 and scheduler.health()["alive"]
    scheduler.close()


def test_admission_is_fifo_with_aging(engines):
    """A wide beam search that does not fit may be passed by one-row jobs only until it has
    waited ``max_wait_s``; then nothing with rows passes it (the batch drains and it runs)."""
    import time

    from engine.scheduler import BatchScheduler, _Beams, _Call, _Reasoning

    _, batched = engines
    scheduler = BatchScheduler(batched.model, batched.tokenizer, batched.recommender.trie, max_rows=8,
                               max_wait_s=0.5)
    tokenizer, trie = batched.tokenizer, batched.recommender.trie
    wide = _Beams([1, 2, 3], trie, set(), k=4, width=6, restrict=None)
    small = _Reasoning(tokenizer, trie, [1, 2, 3], set(), 4, 0.0, {tokenizer.end_id}, None, None)
    call = _Call(print, ())
    scheduler._waiting.jobs = [wide, small, call]
    assert scheduler._waiting.admit(4) == [small, call]         # 4 rows running; young: the small job passes it
    wide.arrived -= 1.0
    later = _Reasoning(tokenizer, trie, [1, 2, 3], set(), 4, 0.0, {tokenizer.end_id}, None, None)
    scheduler._waiting.jobs = [wide, later, call]
    assert scheduler._waiting.admit(4) == [call]                          # aged: only rowless work passes
    assert scheduler._waiting.admit(0) == [wide, later]                   # the batch drained: it goes first
    assert time.monotonic() - wide.arrived >= 1.0


def test_prefix_cache_finds_the_longest_shared_prefix_by_block_hashes():
    from engine.prefix_cache import PrefixCache

    def layers(n):
        return [(torch.zeros(1, 2, n, 4), torch.zeros(1, 2, n, 4))]

    cache = PrefixCache(max_bytes=10**9, block=4)
    cache.store(list(range(10)), layers(10))
    cache.store(list(range(6)) + [99, 98], layers(8))
    found = cache.lookup(list(range(9)) + [7, 7])
    assert found is not None and found[1] == 9 and found[0][0][0].shape[2] == 10
    assert cache.lookup(list(range(6)) + [99, 1])[1] == 7          # shares one block, then 3 more
    assert cache.lookup([5, 5, 5, 5, 5]) is None                   # no whole block in common
    assert cache.lookup([0, 1, 2]) is None                         # shorter than a block
    # Bounded by bytes: the oldest entry goes, and with it its index entries.
    small = PrefixCache(max_bytes=layers(10)[0][0].numel() * 4 * 2 + 1, block=4)
    small.store(list(range(10)), layers(10))
    small.store([50 + n for n in range(10)], layers(10))
    assert len(small) == 1 and small.lookup(list(range(10))) is None
    assert small.lookup([50 + n for n in range(10)])[1] == 10
