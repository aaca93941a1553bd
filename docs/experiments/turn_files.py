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

    engine = Engine(args.data, args.checkpoint, sessions_url="sqlite://")
    user = next(iter(engine.user_histories))
    list(engine.turn(engine.start_session(user_id=user).id, "warm up", budget="full"))
    seen: set[str] = set()

    def hook(frame, event, arg):
        name = frame.f_code.co_filename
        if name.startswith(str(ROOT)) and ".venv" not in name:
            seen.add(str(Path(name).relative_to(ROOT)))
        return None

    threading.setprofile(hook)
    sys.setprofile(hook)
    session = engine.start_session(user_id=user)
    list(engine.turn(session.id, "a 90s comedy please", budget="full"))
    sys.setprofile(None)
    threading.setprofile(None)
    print(len(seen), "files:")
    for name in sorted(seen):
        print(" ", name)


if __name__ == "__main__":
    main()
