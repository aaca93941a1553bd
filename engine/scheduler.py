"""Continuous batching for the in-process model: many sessions' turns share each forward pass.

One thread owns the model and repeats one engine step (nano-vllm's schedule → run → postprocess):

1. **schedule**: waiting jobs join (a reasoning stream is one row, a beam search ``width`` rows)
   in arrival order while the batch has room. A job that does not fit may be passed by smaller
   ones only until it has waited ``max_wait_s``; after that nothing passes it, the batch drains
   and it runs (FIFO with aging, so steady one-row load cannot starve a wide beam search);
2. **run**: the :class:`~engine.runner.ModelRunner` prefills the newcomers' prompts (continuing
   what its prefix cache knows) and joins their rows, then decodes one token for every running
   row — reasoning tokens of some sessions beside SID beam steps of others;
3. **postprocess**: each job reads its rows' logits. A reasoning row goes through its own gated
   trie constraint and its token goes to the session's stream at once; a beam search keeps its
   best partial SIDs (``engine.decoding.beam_step``, the rule every backend uses). A job that is
   done hands back its rows.

Failures stay with their job: a prefill or decode forward that fails is run again job by job, and a
job whose own step raises is failed and its rows dropped; the others go on. Anything else that goes
wrong in the loop fails the jobs running at that moment, and the loop starts again (``restarts``);
a thread that died anyway is started again by the next submission. Every wait has a timeout
(:class:`SchedulerTimeout`). Other model work (teacher-forced scoring, batched reasoning for many
users) runs in the same thread between steps, so nothing else ever touches the model at once.

    scheduler = BatchScheduler(model, tokenizer, trie, slots)
    for token in scheduler.stream(prompt, exclude=set(), max_new_tokens=160):
        ...
    items = scheduler.beams(item_prompt, exclude, k=10, width=20).result()
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

import torch

from engine.decoding import GatedTrieProcessor, beam_step, beams_done, finished_items, row_logprobs
from engine.runner import ModelRunner
from engine.sid import SIDTrie, TrieFilter
from engine.slots import SlotGrammar

log = logging.getLogger(__name__)
_DONE = object()        # end of a reasoning stream


class SchedulerTimeout(TimeoutError):
    """A wait on the scheduler ran past its timeout (the model is overloaded or stuck)."""


class _Work:
    """Anything submitted to the scheduler; ``rows`` is what it holds of the running batch."""

    rows = 0
    cancelled = False

    def __init__(self):
        self.arrived = time.monotonic()
        self.future: Future = Future()

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


class _Job(_Work):
    """Work that holds rows of the running batch."""

    prompt: list[int]

    def start(self, logits: torch.Tensor) -> list[int]:
        """Read the prefill's last logits (one row); return the tokens its rows feed next (none: done)."""
        raise NotImplementedError

    def step(self, logits: torch.Tensor) -> list[tuple[int, int]]:
        """Read this job's rows' logits; return (parent row within the job, next token) per kept row."""
        raise NotImplementedError


class _Reasoning(_Job):
    """One session's reasoning: greedy or sampled, under the gated trie constraint."""

    rows = 1

    def __init__(self, tokenizer, trie: SIDTrie, prompt: Sequence[int], exclude: set[Hashable], max_new_tokens: int,
                 temperature: float, stops: set[int], cite: set[Hashable] | None, slots: SlotGrammar | None):
        super().__init__()
        self.prompt = list(prompt)
        self.sequence = list(prompt)
        self.gate = GatedTrieProcessor(tokenizer, trie, len(prompt), [set(exclude)],
                                       [trie.restrict_to(cite) if cite is not None else None], slots, [cite])
        self.budget, self.temperature, self.stops = max_new_tokens, temperature, stops
        self.out: queue.Queue = queue.Queue()

    def _next(self, logits: torch.Tensor) -> list[int]:
        if self.cancelled or self.budget <= 0:
            self.out.put(_DONE)
            return []
        scores = self.gate(torch.tensor([self.sequence]), logits[None].float().clone())
        if self.temperature > 0:
            token = int(torch.multinomial(torch.softmax(scores / self.temperature, dim=-1), 1))
        else:
            token = int(scores.argmax(dim=-1))
        self.budget -= 1
        self.sequence.append(token)
        self.out.put(token)
        if token in self.stops or self.budget <= 0:
            self.out.put(_DONE)
            return []
        return [token]

    def start(self, logits):
        return self._next(logits[0])

    def step(self, logits):
        return [(0, token) for token in self._next(logits[0])]

    def fail(self, error):
        self.out.put(error)

    def tokens(self, timeout: float, on_timeout: Callable[[], None]) -> Iterator[int]:
        """The tokens as the loop decodes them, each within ``timeout`` (else ``on_timeout`` runs
        and SchedulerTimeout is raised); the job's error, if it fails. Leaving early cancels it."""
        try:
            while True:
                try:
                    token = self.out.get(timeout=timeout)
                except queue.Empty:
                    on_timeout()
                    raise SchedulerTimeout(f"no reasoning token came within {timeout:.0f} s") from None
                if token is _DONE:
                    return
                if isinstance(token, BaseException):
                    raise token
                yield token
        finally:
            self.cancelled = True


class _Beams(_Job):
    """One prompt's beam search over the SID trie (``engine.decoding.beam_step``)."""

    def __init__(self, prompt: Sequence[int], trie: SIDTrie, exclude: set[Hashable], k: int, width: int,
                 restrict: TrieFilter | None):
        super().__init__()
        self.prompt = list(prompt)
        self.k, self.width, self.rows = k, width, width
        self.beams = [(0.0, trie.cursor(exclude=exclude, restrict=restrict))]

    def _advance(self, logits: torch.Tensor) -> list[tuple[int, int]]:
        self.beams, parents = beam_step(self.beams, row_logprobs(torch.log_softmax(logits.float(), dim=-1)),
                                        self.width)
        if self.cancelled or beams_done(self.beams):
            self.future.set_result(finished_items(self.beams, self.k))
            return []
        return [(parent, cursor.prefix[-1]) for parent, (_, cursor) in zip(parents, self.beams)]

    def start(self, logits):
        return [token for _, token in self._advance(logits)]

    def step(self, logits):
        return self._advance(logits)


class _Call(_Work):
    """Any other model work, run in the scheduler's thread between steps."""

    def __init__(self, fn: Callable, args: tuple):
        super().__init__()
        self.fn, self.args = fn, args


class _Score(_Work):
    """Teacher-forced scores of candidate SID paths; every session's waiting requests are scored
    in one batched call (``ModelRunner.score``)."""

    def __init__(self, prompts: Sequence[Sequence[int]], paths: Sequence[Sequence[Sequence[int]]]):
        super().__init__()
        self.prompts = [list(p) for p in prompts]
        self.paths = [[list(p) for p in cands] for cands in paths]


class _Admission:
    """The jobs waiting for the loop, admitted FIFO with aging (module docstring): a job with rows
    that does not fit beside the ``running`` rows may be passed by later ones until it has waited
    ``max_wait_s``; after that only rowless work passes it. The scheduler holds its lock around
    every use."""

    def __init__(self, max_rows: int, max_wait_s: float, stats: dict):
        self.jobs: list[_Work] = []
        self.max_rows, self.max_wait_s, self.stats = max_rows, max_wait_s, stats

    def __len__(self) -> int:
        return len(self.jobs)

    def add(self, job: _Work) -> None:
        self.jobs.append(job)

    def admit(self, running: int) -> list[_Work]:
        admitted, rows, now, door_open = [], running, time.monotonic(), True
        for job in list(self.jobs):
            if job.cancelled and not isinstance(job, _Reasoning):
                job.fail(SchedulerTimeout("given up before it ran"))
                self.jobs.remove(job)
                continue
            if job.rows and (not door_open or (rows and rows + job.rows > self.max_rows)):
                if now - job.arrived >= self.max_wait_s:
                    door_open = False           # it has waited long enough: nobody passes it now
                continue
            admitted.append(job)
            self.jobs.remove(job)
            rows += job.rows
            self.stats["max_admission_wait_s"] = max(self.stats["max_admission_wait_s"], round(now - job.arrived, 3))
        return admitted


class BatchScheduler:
    """Runs reasoning streams and beam searches from many threads as one batch (module docstring).

    ``max_rows`` caps the running batch (a job wider than the cap runs alone); ``max_wait_s`` is how
    long a job that does not fit may be passed by smaller ones; ``timeout_s`` bounds every wait."""

    def __init__(self, model, tokenizer, trie: SIDTrie, slots: SlotGrammar | None = None, max_rows: int = 256,
                 prefix_cache_bytes: int = 512 * 2**20, max_wait_s: float = 1.0, timeout_s: float = 300.0):
        self.tokenizer, self.trie, self.slots = tokenizer, trie, slots
        self.max_rows, self.max_wait_s, self.timeout_s = max_rows, max_wait_s, timeout_s
        self.runner = ModelRunner(model, tokenizer.pad_id, prefix_cache_bytes)
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._owners: list[tuple[_Job, int]] = []      # (job, row within the job) per running row
        self._feed: list[int] = []                      # the token each row feeds at the next step
        self._admitted: list[_Work] = []
        self.heartbeat = time.monotonic()
        self.stats = {"steps": 0, "rows": 0, "max_rows": 0, "prefills": 0, "calls": 0, "scores": 0,
                      "failed_jobs": 0, "restarts": 0, "max_admission_wait_s": 0.0}
        self._waiting = _Admission(max_rows, max_wait_s, self.stats)

    @property
    def prefixes(self):
        return self.runner.prefixes

    def health(self) -> dict:
        """Is the loop alive, how long since it last stepped, and how much it holds."""
        with self._wake:
            return {"alive": self._thread is not None and self._thread.is_alive(), "restarts": self.stats["restarts"],
                    "since_step_s": round(time.monotonic() - self.heartbeat, 3), "rows": len(self._owners),
                    "waiting": len(self._waiting)}

    # -- submitting and waiting (any thread) ---------------------------------------------------------
    def _submit(self, job: _Work) -> None:
        with self._wake:
            if self._closed:
                raise RuntimeError("the batch scheduler is closed")
            self._waiting.add(job)
            self._watch()
            self._wake.notify()

    def _watch(self) -> None:
        """Start the loop's thread, or start it again if it died (caller holds ``_wake``)."""
        if self._thread is not None and self._thread.is_alive():
            return
        if self._thread is not None:
            self.stats["restarts"] += 1
            log.error("the batch scheduler's thread had stopped; starting it again")
        self._thread = threading.Thread(target=self._run, name="thinkrec-scheduler", daemon=True)
        self._thread.start()

    def _check(self) -> None:
        """After a wait timed out: is the loop's thread alive (started again if not)?"""
        with self._wake:
            self._watch()

    def _result(self, job: _Work, timeout: float | None = None):
        try:
            return job.future.result(self.timeout_s if timeout is None else timeout)
        except FutureTimeout:
            job.cancelled = True
            self._check()
            raise SchedulerTimeout(f"the model did not answer within {self.timeout_s:.0f} s") from None

    def stream(self, prompt: Sequence[int], exclude: set[Hashable], max_new_tokens: int = 160,
               temperature: float = 0.0, stop_ids: Sequence[int] | None = None,
               cite: set[Hashable] | None = None) -> Iterator[int]:
        """Reasoning token ids as the batch decodes them, up to and including the first stop token.
        Leaving the loop early (a client gone) frees the row at the next step."""
        stops = set(stop_ids) if stop_ids else {self.tokenizer.think_end_id, self.tokenizer.end_id}
        job = _Reasoning(self.tokenizer, self.trie, prompt, exclude, max_new_tokens, temperature, stops, cite,
                         self.slots)
        self._submit(job)
        yield from job.tokens(self.timeout_s, self._check)

    def beams(self, prompt: Sequence[int], exclude: set[Hashable], k: int, width: int,
              restrict: TrieFilter | None = None) -> Future:
        """A future for the top ``k`` distinct items after ``prompt`` (ending with ``<|item_begin|>``)."""
        job = _Beams(prompt, self.trie, exclude, k, max(k, width), restrict)
        if not job.beams[0][1].allowed():     # nothing left to recommend: no rows needed
            job.future.set_result([])
            return job.future
        self._submit(job)
        return job.future

    def wait_beams(self, futures: Sequence[Future]) -> list:
        """Results of :meth:`beams` futures in order, within the timeout (the first error is raised)."""
        deadline = time.monotonic() + self.timeout_s
        try:
            return [f.result(max(0.0, deadline - time.monotonic())) for f in futures]
        except FutureTimeout:
            raise SchedulerTimeout(f"the beam search did not finish within {self.timeout_s:.0f} s") from None

    def score(self, prompts: Sequence[Sequence[int]], paths: Sequence[Sequence[Sequence[int]]]) -> list[list[float]]:
        """Summed log-probabilities of candidate paths, batched with other sessions' requests."""
        job = _Score(prompts, paths)
        self._submit(job)
        return self._result(job)

    def call(self, fn: Callable, *args, timeout: float | None = None):
        """``fn(*args)`` in the scheduler's thread, between two steps; its result (or its error)."""
        job = _Call(fn, args)
        self._submit(job)
        return self._result(job, timeout)

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)

    # -- the loop (scheduler thread) -----------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                self._loop()
                return
            except BaseException as error:      # outside any one job's work: fail what runs, start again
                log.exception("the batch scheduler's loop failed; failing its running jobs and going on")
                self.stats["restarts"] += 1
                for job in self._admitted + list(dict.fromkeys(owner for owner, _ in self._owners)):
                    self._fail(job, error)
                self._owners, self._feed, self._admitted = [], [], []
                self.runner.reset()
                with self._wake:
                    if self._closed:
                        return

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._waiting and not self._owners and not self._closed:
                    self._wake.wait()
                if self._closed and not self._waiting and not self._owners:
                    return
                self._admitted = self._waiting.admit(len(self._owners))
            self.heartbeat = time.monotonic()
            with torch.no_grad():
                self._step(self._admitted)
            self._admitted = []

    def _fail(self, job: _Work, error: BaseException) -> None:
        self.stats["failed_jobs"] += 1
        job.cancelled = True
        job.fail(error)

    def _step(self, admitted: list[_Work]) -> None:
        for job in admitted:
            if isinstance(job, _Call):
                self.stats["calls"] += 1
                try:
                    job.future.set_result(job.fn(*job.args))
                except Exception as error:
                    job.future.set_exception(error)
        scores = [job for job in admitted if isinstance(job, _Score)]
        if scores:
            self.stats["scores"] += 1
            self._alone_on_failure(scores, self._score)
        joining = [job for job in admitted if isinstance(job, _Job)]
        if joining:
            self.stats["prefills"] += 1
            self._alone_on_failure(joining, self._prefill)
        if self._owners:
            self._decode()

    def _alone_on_failure(self, jobs: list, run: Callable[[list], None]) -> None:
        """``run(jobs)`` as one batch; if it fails, each job alone, so a failure is its own job's."""
        try:
            run(jobs)
        except Exception as error:
            if len(jobs) == 1:
                self._fail(jobs[0], error)
                return
            for job in jobs:
                self._alone_on_failure([job], run)

    def _score(self, jobs: list[_Score]) -> None:
        scores = self.runner.score([p for job in jobs for p in job.prompts], [c for job in jobs for c in job.paths])
        at = 0
        for job in jobs:
            job.future.set_result(scores[at:at + len(job.prompts)])
            at += len(job.prompts)

    def _prefill(self, jobs: list[_Job]) -> None:
        """The newcomers' prompts (from the prefix cache where possible); their rows join the batch."""
        blocks = []
        for job, (last, layers) in zip(jobs, self.runner.run_prompts([job.prompt for job in jobs])):
            try:
                tokens = job.start(last[None])
            except Exception as error:
                self._fail(job, error)
                continue
            if tokens:
                blocks.append((len(tokens), layers))
                self._owners += [(job, row) for row in range(len(tokens))]
                self._feed += tokens
        if blocks:
            self.runner.join(blocks)

    def _groups(self) -> list[range]:
        """The running rows, one range per job (a job's rows are consecutive)."""
        groups, start = [], 0
        while start < len(self._owners):
            end = start
            while end < len(self._owners) and self._owners[end][0] is self._owners[start][0]:
                end += 1
            groups.append(range(start, end))
            start = end
        return groups

    def _decode(self) -> None:
        """One forward over every running row, then each job's postprocessing."""
        rows = len(self._owners)
        self.stats["steps"] += 1
        self.stats["rows"] += rows
        self.stats["max_rows"] = max(self.stats["max_rows"], rows)
        groups = self._groups()
        try:
            logits, layers, failed = self.runner.decode(self._feed, groups)
        except Exception as error:         # one job only, or every job failed alone
            failed, logits, layers = {g: error for g in range(len(groups))}, None, None
        keep, feed, owners = [], [], []
        for g, span in enumerate(groups):
            job = self._owners[span.start][0]
            if g in failed:
                self._fail(job, failed[g])
                continue
            try:
                survivors = job.step(logits[span.start:span.stop])
            except Exception as error:
                self._fail(job, error)
                continue
            if not survivors and isinstance(job, _Reasoning) and not job.cancelled:
                # A finished reasoning's keys and values cover everything it fed (all but its
                # last token): the next stage and the item prompt start from them.
                fed = job.sequence[:-1]
                if self.runner.row_length(span.start) == len(fed):
                    self.runner.store_prefix(fed, span.start, layers)
            for n, (parent, token) in enumerate(survivors):
                keep.append(span.start + parent)
                owners.append((job, n))
                feed.append(token)
        if layers is None:
            self.runner.reset()
        else:
            self.runner.keep(keep, layers)
        self._owners, self._feed = owners, feed
