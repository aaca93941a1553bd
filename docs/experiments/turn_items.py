"""Experiment (issue 28): the top-10 items and scores of 120 thinking turns (the first 40 dataset users,
three messages each, two of them requests), written to a JSON file, so two commits can be compared:

    git checkout <before> && python docs/experiments/turn_items.py results/items_before.json
    git checkout <after>  && python docs/experiments/turn_items.py results/items_after.json
"""
import json
import sys
import tempfile
import time
from pathlib import Path
from engine.engine import Engine
from engine.events import ItemsEvent
out = {}
with tempfile.TemporaryDirectory() as d:
    eng = Engine(Path("artifacts/ml-100k"), Path("checkpoints/ml-100k-tiny/sft"), sessions_url=f"sqlite:///{d}/b.db", batching=False)
    users = list(eng.user_histories)[:40]
    t0 = time.perf_counter()
    for msg in ("a 90s comedy please", "what should I watch?", "something from the 80s, no drama"):
        for u in users:
            s = eng.start_session(user_id=u)
            for ev in eng.turn(s.id, msg, thinking=True, k=10):
                if isinstance(ev, ItemsEvent):
                    out[f"{msg}|{u}"] = [(c.item_id, round(c.score, 3)) for c in ev.items]
    print("secs", time.perf_counter() - t0)
json.dump(out, open(sys.argv[1], "w"))
