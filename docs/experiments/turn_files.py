"""Which of the project's files one thinking turn passes through (issue 28's "files one turn
passes through"), counted with a profiler hook over a real turn on the default model.

    .venv/bin/python docs/experiments/turn_files.py [--data artifacts/ml-100k] [--checkpoint checkpoints/ml-100k-tiny/sft]
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="artifacts/ml-100k")
    parser.add_argument("--checkpoint", default="checkpoints/ml-100k-tiny/sft")
    args = parser.parse_args()
    from engine.engine import Engine

    import tempfile

    scratch = tempfile.mkdtemp(prefix="turn-files-")
    engine = Engine(args.data, args.checkpoint, sessions_url=f"sqlite:///{scratch}/sessions.db")
    users = iter(engine.user_histories)
    user = next(users)
    seen: set[str] = set()

    def hook(frame, event, arg):
        name = frame.f_code.co_filename
        if name.startswith(str(ROOT)) and ".venv" not in name:
            seen.add(str(Path(name).relative_to(ROOT)))
        return None

    # Set before the warm-up turn, which starts the scheduler's thread: threads started from here on
    # are profiled too.
    threading.setprofile(hook)
    sys.setprofile(hook)
    list(engine.turn(engine.start_session(user_id=user).id, "warm up", budget="full"))
    scheduler = getattr(engine.backend, "scheduler", None)
    if scheduler is not None:                  # its thread may predate the hook: set it there too
        scheduler.call(sys.setprofile, hook)
    if hasattr(threading, "setprofile_all_threads"):     # Python 3.12+: every running thread at once
        threading.setprofile_all_threads(hook)
    seen.clear()
    # Other users than the warm-up's, so that nothing these turns need is already cached. Two turns:
    # with a request the engine writes level 3's attributes itself and the model may write nothing;
    # without one the model writes level 3 token by token. The union of both is counted.
    events = []
    for text in ("a 90s comedy please", "recommend me a movie"):
        session = engine.start_session(user_id=next(users))
        events += list(engine.turn(session.id, text, budget="full"))
    steps = scheduler.stats["steps"] if scheduler is not None else None
    sys.setprofile(None)
    if scheduler is not None:
        scheduler.call(sys.setprofile, None)
    print("events:", ", ".join(sorted({type(e).__name__ for e in events})), "| scheduler steps:", steps)
    threading.setprofile(None)
    if hasattr(threading, "setprofile_all_threads"):
        threading.setprofile_all_threads(None)
    seen.discard(str(Path(__file__).resolve().relative_to(ROOT)))
    print(len(seen), "project files:")
    for name in sorted(seen):
        print(" ", name)


if __name__ == "__main__":
    main()
