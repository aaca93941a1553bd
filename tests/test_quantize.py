import json
import math

import numpy as np
import pytest

from data.quantize import (
    Quantization,
    balanced_assign,
    codebook_size_for,
    make_unique,
    residual_kmeans,
)


def clustered(n: int = 600, dim: int = 16, clusters: int = 6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=5.0, size=(clusters, dim))
    return (centers[rng.integers(0, clusters, n)] + rng.normal(size=(n, dim))).astype(np.float32)


def count_repeats(codes: np.ndarray) -> int:
    """Items whose tuple repeats an earlier item's, counted directly."""
    seen, repeats = set(), 0
    for row in map(tuple, codes.tolist()):
        repeats += row in seen
        seen.add(row)
    return repeats


# --------------------------------------------------------------------------- codebook_size_for

@pytest.mark.parametrize("levels", [2, 3, 4])
def test_codebook_size_power_of_two_in_range_and_monotone(levels):
    sizes = [codebook_size_for(n, levels) for n in [0, 1, 2, 10, 100, 943, 1682, 3706, 10_000,
                                                     50_000, 100_000, 10**6, 10**8, 10**10]]
    for size in sizes:
        assert 8 <= size <= 256
        assert size & (size - 1) == 0
    assert sizes == sorted(sizes)
    assert sizes[0] == 8 and sizes[-1] == 256
    # Fine-grained monotonicity over a dense range.
    dense = [codebook_size_for(n, levels) for n in range(1, 20_000, 7)]
    assert all(a <= b for a, b in zip(dense, dense[1:]))


def test_codebook_size_headroom():
    assert codebook_size_for(1682, 3) == 32
    for n in [1, 50, 1682, 3706, 12_101, 100_000]:
        size = codebook_size_for(n, 3)
        assert size**3 >= 16 * n
        # Smallest such power of two (unless clamped to the minimum of 8).
        assert size == 8 or (size // 2) ** 3 < 16 * n


def test_codebook_size_respects_max():
    assert codebook_size_for(10**9, 2, max_size=64) == 64
    assert codebook_size_for(10**9, 2) == 256


# --------------------------------------------------------------------------- balanced_assign

def test_balanced_assign_respects_capacity_and_assigns_all():
    rng = np.random.default_rng(1)
    # Skewed data: most rows want the same centroid.
    x = np.vstack([rng.normal(size=(150, 8)), rng.normal(loc=6.0, size=(10, 8))]).astype(np.float32)
    centroids = rng.normal(size=(8, 8)).astype(np.float32)
    centroids[0] = 0.0
    capacity = 20
    labels = balanced_assign(x, centroids, capacity)
    assert labels.shape == (len(x),)
    assert labels.min() >= 0 and labels.max() < len(centroids)
    assert np.bincount(labels, minlength=len(centroids)).max() <= capacity
    # Exactly full: every centroid holds exactly capacity rows.
    labels = balanced_assign(x, centroids, capacity=20)
    assert (np.bincount(labels, minlength=8) == 20).all()


def test_balanced_assign_falls_back_beyond_candidates():
    # More codes than candidates and a tiny capacity: rows must spill past their 2 nearest.
    rng = np.random.default_rng(2)
    x = rng.normal(scale=0.01, size=(30, 4)).astype(np.float32)
    centroids = rng.normal(size=(12, 4)).astype(np.float32)
    labels = balanced_assign(x, centroids, capacity=3, candidates=2)
    assert (labels >= 0).all()
    assert np.bincount(labels, minlength=12).max() <= 3
    assert len(np.unique(labels)) >= 10


def test_balanced_assign_raises_without_room():
    x = np.zeros((17, 4), dtype=np.float32)
    centroids = np.eye(4, dtype=np.float32)
    with pytest.raises(ValueError):
        balanced_assign(x, centroids, capacity=4)
    assert len(balanced_assign(x[:16], centroids, capacity=4)) == 16


def test_balanced_assign_nearest_with_ample_capacity():
    rng = np.random.default_rng(3)
    centroids = (np.eye(6, 10) * 20.0).astype(np.float32)
    truth = rng.integers(0, 6, 120)
    x = (centroids[truth] + rng.normal(scale=0.5, size=(120, 10))).astype(np.float32)
    labels = balanced_assign(x, centroids, capacity=120)
    np.testing.assert_array_equal(labels, truth)


def test_balanced_assign_contested_centroid_goes_to_highest_regret():
    # One slot per centroid; both rows prefer centroid 0, but row 1 loses far more without it.
    centroids = np.array([[0.0, 0.0], [10.0, 0.0]], dtype=np.float32)
    x = np.array([[4.9, 0.0], [-1.0, 0.0]], dtype=np.float32)
    assert balanced_assign(x, centroids, capacity=1).tolist() == [1, 0]


# --------------------------------------------------------------------------- residual_kmeans

@pytest.fixture(scope="module")
def data():
    return clustered(600, 16)


@pytest.fixture(scope="module")
def quant(data):
    return residual_kmeans(data, levels=3, codebook_size=8, seed=0, niter=10)


def test_residual_kmeans_shapes_and_range(data, quant):
    assert quant.method == "rkmeans"
    assert quant.codes.shape == (600, 3) and quant.codes.dtype == np.int64
    assert quant.codes.min() >= 0 and quant.codes.max() < 8
    assert quant.last_residuals.shape == (600, 16)
    assert quant.last_codebook.shape == (8, 16)


def test_residual_kmeans_is_balanced(quant):
    limit = math.ceil(600 / 8 * 1.05)
    for level in range(3):
        counts = np.bincount(quant.codes[:, level], minlength=8)
        assert counts.max() <= limit
        assert (counts > 0).all()


def test_residual_kmeans_reduces_error(data, quant):
    # Reconstruction error after the last level is well below the data's own spread.
    final = quant.last_residuals - quant.last_codebook[quant.codes[:, -1]]
    assert (final**2).sum(1).mean() < 0.5 * ((data - data.mean(0)) ** 2).sum(1).mean()


def test_residual_kmeans_deterministic(data, quant):
    again = residual_kmeans(data, levels=3, codebook_size=8, seed=0, niter=10)
    np.testing.assert_array_equal(again.codes, quant.codes)
    np.testing.assert_allclose(again.last_codebook, quant.last_codebook, rtol=1e-5, atol=1e-5)


def test_residual_kmeans_progress_and_tiny_input():
    calls = []
    x = clustered(5, 4, clusters=2, seed=1)  # fewer rows than codes
    q = residual_kmeans(x, levels=2, codebook_size=8, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 2), (2, 2)]
    assert q.codes.shape == (5, 2) and q.codes.max() < 8
    # Each row is its own centroid at level 1, so level-1 codes are all different.
    assert len(np.unique(q.codes[:, 0])) == 5


# --------------------------------------------------------------------------- make_unique

@pytest.mark.parametrize("n", [600, 2000])
def test_make_unique_on_residual_kmeans(n):
    # The layout the build uses: codebook sized for the catalog.
    size = codebook_size_for(n, 3)
    quant = residual_kmeans(clustered(n, 16), levels=3, codebook_size=size, seed=0, niter=10)
    unique = make_unique(quant, size)
    assert count_repeats(unique.codes) == 0
    assert len(np.unique(unique.codes, axis=0)) == n
    assert unique.collisions_before == count_repeats(quant.codes)
    assert unique.collisions_before > 0  # six tight clusters: some tuples collide
    assert len(unique.utilization) == unique.codes.shape[1] == len(unique.perplexity)
    assert unique.codes.shape[1] == 3 + unique.extra_level
    assert all(0 < u <= 1 for u in unique.utilization)
    assert all(0 < p <= 1 for p in unique.perplexity)
    assert unique.codes.min() >= 0 and unique.codes.max() < size
    # The first levels never move; without an extra level only the last one does.
    np.testing.assert_array_equal(unique.codes[:, :2], quant.codes[:, :2])
    if not unique.extra_level:
        assert 0 < unique.reassigned <= n


def hand_quant(codes, residuals, codebook) -> Quantization:
    return Quantization(np.asarray(codes, dtype=np.int64), np.asarray(residuals, dtype=np.float32),
                        np.asarray(codebook, dtype=np.float32), "test")


def test_make_unique_reassigns_last_level_within_small_group():
    k = 4
    codebook = np.eye(k, dtype=np.float32)
    # Group (0, 0): three items all on last code 1, but nearest to codes 1, 2, 3 respectively.
    # Group (1, 2): two distinct items, no collision.  Item 5 shares last code 1 in another group.
    codes = [[0, 0, 1], [0, 0, 1], [0, 0, 1], [1, 2, 0], [1, 2, 3], [2, 2, 1]]
    residuals = [codebook[1], codebook[2] * 0.9, codebook[3] * 0.8, codebook[0], codebook[3], codebook[1]]
    quant = hand_quant(codes, residuals, codebook)
    unique = make_unique(quant, k)
    assert unique.collisions_before == 2 == count_repeats(quant.codes)
    assert not unique.extra_level
    assert unique.codes.shape == (6, 3)
    assert count_repeats(unique.codes) == 0
    np.testing.assert_array_equal(unique.codes[:, :2], quant.codes[:, :2])
    # Nearest free code first: each colliding item lands on the code its residual points at.
    assert unique.codes[:, 2].tolist() == [1, 2, 3, 0, 3, 1]
    assert unique.reassigned == 2
    # Input untouched.
    assert quant.codes[:, 2].tolist() == [1, 1, 1, 0, 3, 1]
    assert unique.utilization == [3 / 4, 2 / 4, 1.0]


def test_make_unique_group_of_exactly_codebook_size():
    k = 4
    codebook = np.eye(k, dtype=np.float32)
    codes = [[3, 0]] * 4
    residuals = np.eye(k, dtype=np.float32)[::-1]
    unique = make_unique(hand_quant(codes, residuals, codebook), k)
    assert not unique.extra_level
    assert sorted(unique.codes[:, 1].tolist()) == [0, 1, 2, 3]
    assert (unique.codes[:, 0] == 3).all()
    assert unique.codes[:, 1].tolist() == [3, 2, 1, 0]
    assert unique.reassigned == 3  # the item nearest code 0 keeps code 0
    assert unique.collisions_before == 3


def test_make_unique_adds_level_when_group_exceeds_codebook():
    k = 4
    codebook = np.eye(k, dtype=np.float32)
    # Group (0,): six items > four codes, two of them sharing each of last codes 0, 1, 2.
    # Group (1,): a small colliding group fixed by reassignment.
    codes = [[0, 0], [0, 0], [0, 1], [0, 1], [0, 2], [0, 2], [1, 3], [1, 3]]
    rng = np.random.default_rng(0)
    residuals = rng.normal(size=(8, k))
    quant = hand_quant(codes, residuals, codebook)
    unique = make_unique(quant, k)
    assert unique.collisions_before == 4 == count_repeats(quant.codes)
    assert unique.extra_level
    assert unique.codes.shape == (8, 3)
    assert count_repeats(unique.codes) == 0
    # The oversized group is spread evenly over the last level (at most ceil(6/4) = 2 per
    # code), then numbered on the extra level, which therefore needs only codes 0 and 1.
    np.testing.assert_array_equal(unique.codes[:6, 0], quant.codes[:6, 0])
    assert np.bincount(unique.codes[:6, 1], minlength=k).max() == 2
    assert set(unique.codes[:, 2].tolist()) == {0, 1}
    assert unique.codes[:, 0].tolist() == quant.codes[:, 0].tolist()
    assert unique.codes.max() < k
    assert len(unique.utilization) == 3 and all(0 < u <= 1 for u in unique.utilization)


def test_make_unique_separates_identical_items():
    # 40 items with the same text (same embedding) among 2000: one prefix group larger than
    # the codebook. The build must still give every item its own SID.
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2000, 16)).astype(np.float32)
    x[:40] = x[0]
    unique = make_unique(residual_kmeans(x, 3, 32, seed=0), 32)
    assert count_repeats(unique.codes) == 0
    assert unique.extra_level and unique.codes.shape == (2000, 4)


def test_make_unique_no_collisions_is_identity():
    k = 8
    codes = [[a, b] for a in range(3) for b in range(3)]
    quant = hand_quant(codes, np.zeros((9, 4)), np.zeros((k, 4)))
    unique = make_unique(quant, k)
    np.testing.assert_array_equal(unique.codes, quant.codes)
    assert unique.collisions_before == 0 and unique.reassigned == 0 and not unique.extra_level
    assert unique.utilization == [3 / 8, 3 / 8]


def test_collaborative_vectors_bring_items_watched_together_close():
    """Two groups of items that never share a sequence: items of one group end up closer to each
    other than to the other group; an item never in training gets a zero vector."""
    import random

    from data.quantize import collaborative_embeddings, fuse_for_sids

    rng = random.Random(0)
    group_a, group_b = [f"a{i}" for i in range(20)], [f"b{i}" for i in range(20)]
    sequences = [rng.sample(group, 8) for _ in range(200) for group in (group_a, group_b)]
    items = group_a + group_b + ["never"]
    vectors = collaborative_embeddings(items, sequences, dim=8)
    assert vectors.shape == (41, 8) and not vectors[-1].any()
    sims = vectors[:40] @ vectors[:40].T
    within = (sims[:20, :20].sum() - 20) / (20 * 19) + (sims[20:, 20:].sum() - 20) / (20 * 19)
    across = sims[:20, 20:].mean()
    assert within / 2 > across + 0.5
    fused = fuse_for_sids(np.ones((41, 4)), vectors)
    assert fused.shape == (41, 12) and np.allclose(np.linalg.norm(fused[:, :4], axis=1), 1.0)


def test_build_with_collaborative_sids_keeps_search_on_text(tmp_path, generic_files):
    from data.build import build
    from data.manifest import BuildConfig

    interactions, items = generic_files
    text = build(BuildConfig(dataset="generic", interactions=str(interactions), items=str(items), sid_source="text"),
                 tmp_path / "text")
    fused = build(BuildConfig(dataset="generic", interactions=str(interactions), items=str(items),
                              sid_source="text+cf"), tmp_path / "cf")
    assert fused.config.sid_source == "text+cf" and fused.sid.collisions_after == 0
    assert np.array_equal(np.load(tmp_path / "text" / "embeddings.npy"), np.load(tmp_path / "cf" / "embeddings.npy"))
    codes = lambda folder: {r["item_id"]: r["codes"] for r in json.loads((folder / "sids.json").read_text())["items"]}  # noqa: E731
    assert codes(tmp_path / "text") != codes(tmp_path / "cf")
