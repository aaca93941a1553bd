"""Memory and stored sessions under many anonymous OpenAI calls (issue 28's "10,000 anonymous
calls" row): the real app server in this process, a sessions store capped at ``--max-sessions``,
and ``--calls`` chat completions without ``session_id``, each of which starts a session. Most are
requests no unseen item satisfies (answered without the model, so the run measures the edge and
the store, not decoding); every ``--real-every``-th is a real non-thinking turn.

    python docs/experiments/anonymous_calls.py --calls 10000 --max-sessions 500
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from sqlalchemy import func, select
from tqdm import tqdm


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="artifacts/ml-100k")
    parser.add_argument("--checkpoint", default="checkpoints/ml-100k-tiny/sft")
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--max-sessions", type=int, default=500)
    parser.add_argument("--real-every", type=int, default=50)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--port", type=int, default=7871)
    args = parser.parse_args()

    from app.ui import serve
    from engine.engine import Engine
    from engine.sessions import SessionRow

    scratch = tempfile.mkdtemp(prefix="thinkrec-anon-")
    engine = Engine(args.data, args.checkpoint, sessions_url=f"sqlite:///{scratch}/sessions.db")
    engine.sessions.max_sessions = args.max_sessions
    demo = serve(engine, port=args.port)

    def stored() -> int:
        with engine.sessions.engine.connect() as db:
            return db.scalar(select(func.count()).select_from(SessionRow))

    none_left = {"role": "user", "content": "a comedy from before 1900"}
    real = {"role": "user", "content": "something good"}
    rows, errors = [], 0
    with httpx.Client(base_url=f"http://127.0.0.1:{args.port}/v1", timeout=120) as http:
        def call(n: int) -> int:
            body = {"model": "thinkrec", "messages": [real if n % args.real_every == 0 else none_left],
                    "reasoning_effort": "none", "k": 2}
            return http.post("/chat/completions", json=body).status_code

        gc.collect()
        rows.append((0, rss_mib(), stored(), len(engine._session_locks), 0.0))
        started = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool, tqdm(total=args.calls, desc="anonymous calls") as bar:
            step = max(1, args.calls // 10)
            for first in range(0, args.calls, step):
                codes = list(pool.map(call, range(first, min(args.calls, first + step))))
                errors += sum(c != 200 for c in codes)
                bar.update(len(codes))
                gc.collect()
                rows.append((first + len(codes), rss_mib(), stored(), len(engine._session_locks),
                             time.perf_counter() - started))
    demo.close()
    engine.close()
    print(f"\n{args.calls:,} anonymous calls, {args.clients} clients, sessions capped at {args.max_sessions:,} "
          f"(every {args.real_every}th a real non-thinking turn); non-200 answers: {errors}\n")
    print("| calls | RSS MiB | sessions stored | session locks held | seconds |")
    print("|---|---|---|---|---|")
    for calls, rss, count, locks, seconds in rows:
        print(f"| {calls:,} | {rss:.0f} | {count:,} | {locks} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
