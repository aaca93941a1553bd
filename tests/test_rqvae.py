import numpy as np
import pytest
import torch

from data.quantize import Quantization, make_unique
from data.rqvae import RQVAE, train_rqvae

LEVELS, SIZE, EPOCHS = 3, 16, 60
# Small model and batches: the whole module trains in about a second per call on CPU.
SMALL = dict(latent_dim=8, hidden_dim=32, epochs=EPOCHS, batch_size=32)


@pytest.fixture(scope="module")
def embeddings():
    rng = np.random.default_rng(0)
    centers = rng.normal(scale=4.0, size=(4, 16))
    return (centers[rng.integers(0, 4, 300)] + rng.normal(size=(300, 16))).astype(np.float32)


@pytest.fixture(scope="module")
def trained(embeddings):
    return train_rqvae(embeddings, LEVELS, SIZE, seed=0, return_history=True, **SMALL)


def test_returns_quantization_with_latent_shapes(embeddings, trained):
    quant, _ = trained
    assert isinstance(quant, Quantization)
    assert quant.method == "rqvae"
    assert quant.codes.shape == (len(embeddings), LEVELS) and quant.codes.dtype == np.int64
    assert quant.codes.min() >= 0 and quant.codes.max() < SIZE
    assert quant.last_residuals.shape == (len(embeddings), SMALL["latent_dim"])
    assert quant.last_residuals.dtype == np.float32
    assert quant.last_codebook.shape == (SIZE, SMALL["latent_dim"])
    assert quant.last_codebook.dtype == np.float32


def test_last_level_codes_are_nearest_to_last_residuals(trained):
    # make_unique measures displacement with these two arrays, so they must match the codes.
    quant, _ = trained
    dist = ((quant.last_residuals[:, None, :] - quant.last_codebook[None]) ** 2).sum(-1)
    chosen = dist[np.arange(len(dist)), quant.codes[:, -1]]
    assert np.allclose(chosen, dist.min(1), rtol=1e-4, atol=1e-5)


def test_same_seed_same_codes_other_seed_other_codes(embeddings, trained):
    quant, _ = trained
    again = train_rqvae(embeddings, LEVELS, SIZE, seed=0, **SMALL)
    np.testing.assert_array_equal(again.codes, quant.codes)
    np.testing.assert_array_equal(again.last_residuals, quant.last_residuals)
    np.testing.assert_array_equal(again.last_codebook, quant.last_codebook)
    other = train_rqvae(embeddings, LEVELS, SIZE, seed=1, **SMALL)
    assert not np.array_equal(other.codes, quant.codes)


def test_training_lowers_reconstruction_error(trained):
    _, history = trained
    assert len(history["recon"]) == EPOCHS + 1 and len(history["loss"]) == EPOCHS
    assert all(np.isfinite(history["recon"])) and all(np.isfinite(history["loss"]))
    # Index 0 is after codebook init, before any step: the untrained decoder is far off.
    assert history["recon"][-1] < 0.25 * history["recon"][0]
    assert history["loss"][-1] < history["loss"][0]


def test_no_dead_codes_after_training(trained):
    # Four clusters would leave most first-level codes unused without k-means init and reseeding.
    quant, _ = trained
    for level in range(LEVELS):
        assert len(np.unique(quant.codes[:, level])) >= SIZE - 2


def test_make_unique_gives_distinct_rows(embeddings, trained):
    quant, _ = trained
    unique = make_unique(quant, SIZE)
    assert len(unique.codes) == len(embeddings)
    assert len(np.unique(unique.codes, axis=0)) == len(embeddings)
    assert unique.codes.max() < SIZE


def test_progress_once_per_epoch_and_global_rng_untouched(embeddings):
    calls = []
    torch.manual_seed(123)
    state = torch.get_rng_state()
    train_rqvae(embeddings[:64], 2, 8, seed=0, latent_dim=4, hidden_dim=16, epochs=3,
                batch_size=16, progress=lambda step, total: calls.append((step, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert torch.equal(torch.get_rng_state(), state)


def test_tiny_catalog_smaller_than_codebook(embeddings):
    tiny = embeddings[:5]
    quant = train_rqvae(tiny, 2, SIZE, seed=0, latent_dim=4, hidden_dim=16, epochs=6, batch_size=4)
    assert quant.codes.shape == (5, 2) and quant.codes.max() < SIZE
    assert quant.last_codebook.shape == (SIZE, 4)
    assert np.isfinite(quant.last_codebook).all() and np.isfinite(quant.last_residuals).all()
    assert len(np.unique(make_unique(quant, SIZE).codes, axis=0)) == 5


def test_straight_through_reaches_encoder_and_codebook():
    torch.manual_seed(0)
    model = RQVAE(dim=6, levels=2, codebook_size=4, latent_dim=3, hidden_dim=8)
    with torch.no_grad():
        model.codebooks.normal_()
    x = torch.randn(10, 6)
    x_hat, codes, residuals, codebook_loss, commit_loss = model(x)
    assert x_hat.shape == x.shape and codes.shape == (10, 2) and residuals.shape == (2, 10, 3)
    # Reconstruction alone must reach the encoder: the argmin has no gradient, so only the
    # straight-through estimator carries it.
    torch.nn.functional.mse_loss(x_hat, x).backward(retain_graph=True)
    assert model.encoder[0].weight.grad.abs().sum() > 0
    assert model.codebooks.grad is None or not model.codebooks.grad.any()
    # The codes move only through the codebook loss.
    model.zero_grad()
    codebook_loss.backward()
    assert model.codebooks.grad.abs().sum() > 0
