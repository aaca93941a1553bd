import pickle, sys, math
import numpy as np
recs = pickle.load(open(sys.argv[1], "rb"))
def ndcg(ranked, target, k=10):
    for i, x in enumerate(ranked[:k]):
        if x == target:
            return 1 / math.log2(i + 2)
    return 0.0
def race(a, b):
    ra = {x: i for i, x in enumerate(a)}; rb = {x: i for i, x in enumerate(b)}
    allx = set(a) | set(b)
    big = 10**6
    return sorted(allx, key=lambda x: (min(ra.get(x, big), rb.get(x, big)), ra.get(x, big) + rb.get(x, big)))
methods = {}
methods["plain"] = lambda r: [x for x, _ in r["plain"]]
methods["think"] = lambda r: [x for x, _ in r["think"]]
methods["race"] = lambda r: race([x for x, _ in r["plain"]], [x for x, _ in r["think"]])
def fused(l, a, base=1.0):
    return lambda r: sorted(r["cands"], key=lambda x: -(base * r["s_n"][x] + l * r["s_t"][x] - a * r["s_r"][x]))
for l in (0.25, 0.5, 1.0, 2.0):
    for a in (0.0, 0.1, 0.25, 0.5):
        methods[f"poe l={l} a={a}"] = fused(l, a)
for a in (0.1, 0.25, 0.5, 1.0):
    methods[f"licd a={a}"] = fused(1.0, a, base=0.0)
res = {m: np.mean([ndcg(f(r), r["target"]) for r in recs]) for m, f in methods.items()}
print(len(recs), "users")
for m, v in res.items():
    print(f"{m:24s} {v:.4f}  {v/res['plain']:.3f}x plain")
if "s_short" in recs[0]:
    for key in ("s_short", "s_empty"):
        for l in (0.5, 1.0):
            v = np.mean([ndcg(sorted(r["cands"], key=lambda x: -(r["s_n"][x] + l * r[key][x])), r["target"]) for r in recs])
            print(f"control plain+{l}*{key:8s} {v:.4f}  {v/res['plain']:.3f}x plain")
