"""Experiment (issue 13): one pass over a split storing, per user, reasoned and direct beams and
every candidate's score under history / history+reasoning / reasoning alone. Run from the repo root."""
import pickle, sys, time
from engine.recommender import open_recommender
from training.dataset_view import DatasetView
from engine.decoding import score_paths, beam_search_items

ckpt, split, out, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
view = DatasetView.load("artifacts/ml-100k")
rec, meta = open_recommender(ckpt, "artifacts/ml-100k", view.codes)
rows = {"valid": view.valid, "test": view.test}[split][:n or None]
tok = rec.tokenizer
records = []
B = 64
t0 = time.time()
for start in range(0, len(rows), B):
    chunk = rows[start:start + B]
    hist = [r["history"] for r in chunk]
    think = rec.recommend(hist, k=20, num_beams=20, thinking=True)
    plain = rec.recommend(hist, k=20, num_beams=20, thinking=False)
    for r, a, b in zip(chunk, think, plain):
        cands = {}
        for it in a.items + b.items:
            cands[str(it.item_id)] = list(it.token_ids)
        records.append({"target": r["target"], "history": r["history"], "levels": a.levels,
                        "reasoning_ids": a.reasoning_ids, "think": [(str(i.item_id), i.score) for i in a.items],
                        "plain": [(str(i.item_id), i.score) for i in b.items], "cands": cands,
                        "prompt_think": a.prompt_ids, "prompt_plain": b.prompt_ids})
    recs = records[start:]
    ids = [list(c) for c in [x["cands"] for x in recs]]
    paths = [list(x["cands"].values()) for x in recs]
    empty = rec.prompt_ids([], thinking=True)
    ctx = {"s_n": [x["prompt_plain"] for x in recs],
           "s_t": [rec.item_prompt(x["prompt_think"], x["reasoning_ids"]) for x in recs],
           "s_r": [rec.item_prompt(empty, x["reasoning_ids"]) for x in recs]}
    for key, prompts in ctx.items():
        sc = score_paths(rec.model, prompts, paths, tok.pad_id, batch_size=8)
        for x, names, s in zip(recs, ids, sc):
            x[key] = dict(zip(names, s))
    print(f"{len(records)}/{len(rows)} users, {time.time()-t0:.0f} s", flush=True)
    pickle.dump(records, open(out, "wb"))
