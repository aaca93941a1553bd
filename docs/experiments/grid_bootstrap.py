import sys
import pickle, math, numpy as np
recs = pickle.load(open(sys.argv[1],"rb"))
def ndcg(ranked, target, k=10):
    for i, x in enumerate(ranked[:k]):
        if x == target: return 1/math.log2(i+2)
    return 0.0
def ev(f): return np.mean([ndcg(sorted(r["cands"], key=lambda x: -f(r, x)), r["target"]) for r in recs])
base = ev(lambda r,x: r["s_n"][x])
for ls in (0.25, 0.5):
    for lt in (0.0, 0.25, 0.5):
        for a in (0.0, 0.25, 0.5):
            v = ev(lambda r,x: r["s_n"][x] + ls*r["s_short"][x] + lt*r["s_t"][x] - a*r["s_r"][x])
            print(f"short {ls} think {lt} contrast {a}: {v:.4f} {v/base:.3f}x")
# bootstrap CI for plain+0.5 think -0.5 r vs plain and vs plain+0.5short
rng = np.random.default_rng(0)
def per_user(f): return np.array([ndcg(sorted(r["cands"], key=lambda x: -f(r, x)), r["target"]) for r in recs])
p = per_user(lambda r,x: r["s_n"][x]); t = per_user(lambda r,x: r["s_n"][x] + 0.5*r["s_t"][x] - 0.5*r["s_r"][x]); s = per_user(lambda r,x: r["s_n"][x] + 0.5*r["s_short"][x])
for name, a, b in (("fused vs plain", t, p), ("fused vs short-ensemble", t, s)):
    idx = rng.integers(0, len(p), (2000, len(p)))
    ratio = a[idx].mean(1) / b[idx].mean(1)
    print(name, round(a.mean()/b.mean(),3), np.percentile(ratio, [2.5, 97.5]).round(3))
