"""``thinkrec bench``: latency of the engine on the default model — time to the first reasoning
token, whole turns with and without thinking (p50/p95), and p50/p95 and throughput with 10
sessions at once, batched (engine/scheduler.py) and, for comparison, one turn at a time.

    thinkrec bench --data artifacts/ml-100k --checkpoint checkpoints/ml-100k-tiny/sft --turns 30 --concurrency 10
    thinkrec bench ... --backend vllm --model-url http://127.0.0.1:8000     # against thinkrec serve-model
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from engine.backends import BatchedBackend
from engine.events import ReasoningDelta


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _turn(engine, user_id: str, thinking: bool, message: str) -> tuple[float, float | None]:
    session = engine.start_session(user_id=user_id)
    started, first = time.perf_counter(), None
    for event in engine.turn(session.id, message, thinking=thinking, k=10):
        if first is None and isinstance(event, ReasoningDelta):
            first = time.perf_counter() - started
    return time.perf_counter() - started, first


def _concurrent(engine, users: list[str], concurrent: int, message: str, rounds: int = 3) -> dict:
    """``concurrent`` sessions at once, each taking ``rounds`` thinking turns back to back. Each turn
    is a user no earlier measure used, so the Think-Ahead cache never answers for the model."""
    with ThreadPoolExecutor(max_workers=concurrent) as pool:
        started = time.perf_counter()
        results = list(pool.map(lambda n: _turn(engine, users[n % len(users)], True, message)[0],
                                range(concurrent * rounds)))
        wall = time.perf_counter() - started
    return {"p50_s": round(statistics.median(results), 3), "p95_s": round(percentile(results, 0.95), 3),
            "turns": len(results), "wall_s": round(wall, 2), "turns_per_s": round(len(results) / wall, 3)}


def run_bench(engine, users: list[str], turns: int = 30, concurrent: int = 10, serial=None) -> dict:
    """Latency of ``engine`` alone and under ``concurrent`` sessions. ``serial``: the same model
    served one turn at a time (no batching), measured under the same load for comparison."""
    message = "a 90s comedy please"
    _turn(engine, users[-1], True, message)            # warm-up: first calls pay one-off costs
    report = {}
    for thinking in (False, True):
        totals, firsts = [], []
        for n in range(turns):
            total, first = _turn(engine, users[n % len(users)], thinking, message)
            totals.append(total)
            if first is not None:
                firsts.append(first)
        name = "thinking" if thinking else "non_thinking"
        report[name] = {"p50_s": round(statistics.median(totals), 3), "p95_s": round(percentile(totals, 0.95), 3),
                        "turns_per_s": round(len(totals) / sum(totals), 3)}
        if firsts:
            report["first_reasoning_token"] = {"p50_ms": round(1000 * statistics.median(firsts), 1),
                                               "p95_ms": round(1000 * percentile(firsts, 0.95), 1)}
    key = f"{concurrent}_concurrent_thinking"
    fresh = users[turns:-1] or users        # not yet asked: no turn below is a Think-Ahead replay
    report[key] = _concurrent(engine, fresh, concurrent, message)
    report[key]["p95_over_single_p95"] = round(report[key]["p95_s"] / report["thinking"]["p95_s"], 2)
    if isinstance(engine.backend, BatchedBackend):
        stats = engine.backend.scheduler.stats
        report["batch"] = {"decode_steps": stats["steps"], "mean_rows": round(stats["rows"] / max(stats["steps"], 1), 1),
                           "max_rows": stats["max_rows"]}
    if serial is not None:
        _turn(serial, users[-1], True, message)
        report[f"{key}_unbatched"] = base = _concurrent(serial, fresh, concurrent, message)
        report["throughput_gain"] = round(report[key]["turns_per_s"] / base["turns_per_s"], 2)
    return report
