"""Controls for the fused ranking: is the gain the reasoning's, or any second view's?"""
import pickle, sys
from engine.recommender import open_recommender
from training.dataset_view import DatasetView
from engine.decoding import score_paths
ckpt, path = sys.argv[1], sys.argv[2]
view = DatasetView.load("artifacts/ml-100k")
rec, meta = open_recommender(ckpt, "artifacts/ml-100k", view.codes)
recs = pickle.load(open(path, "rb"))
tok = rec.tokenizer
paths = [list(x["cands"].values()) for x in recs]
names = [list(x["cands"]) for x in recs]
ctx = {"s_short": [rec.prompt_ids(x["history"][-10:]) for x in recs],
       "s_empty": [rec.item_prompt(x["prompt_think"], []) for x in recs]}
for key, prompts in ctx.items():
    sc = score_paths(rec.model, prompts, paths, tok.pad_id, batch_size=8)
    for x, n, s in zip(recs, names, sc):
        x[key] = dict(zip(n, s))
    print(key, "done", flush=True)
pickle.dump(recs, open(path, "wb"))
