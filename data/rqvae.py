"""Semantic IDs by RQ-VAE, the learned alternative to residual k-means (:mod:`data.quantize`).

An MLP encoder maps each item's text embedding to a small latent, ``levels`` codebooks quantize
that latent residually, and an MLP decoder rebuilds the embedding from the sum of the chosen
codes (RQ-VAE as in TIGER, Rajput et al. 2023). Encoder, decoder and codebooks train together,
with the straight-through estimator carrying the reconstruction gradient past the argmin.

The result is the same :class:`~data.quantize.Quantization` that residual k-means returns, only
in latent space (``last_residuals`` and ``last_codebook`` are latent vectors), so
:func:`~data.quantize.make_unique` resolves collisions on it unchanged. Run it with::

    thinkrec data build --dataset ml-100k --quantizer rqvae
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from data.quantize import Quantization, _train_centroids

_CHUNK = 8192  # rows per no-grad pass: bounds the (rows x codebook_size) distance matrix


class RQVAE(nn.Module):
    """Encoder, ``levels`` residual codebooks of shape (codebook_size, latent_dim), decoder."""

    def __init__(self, dim: int, levels: int, codebook_size: int, latent_dim: int = 32,
                 hidden_dim: int = 256):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(dim, hidden_dim), nn.ReLU(),
                                     nn.Linear(hidden_dim, latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden_dim), nn.ReLU(),
                                     nn.Linear(hidden_dim, dim))
        # Zeros are placeholders: train_rqvae sets every level by k-means before the first step.
        self.codebooks = nn.Parameter(torch.zeros(levels, codebook_size, latent_dim))

    @staticmethod
    def nearest(residual: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        # Expanded squared distance: avoids materialising (rows, codes, latent) differences.
        dist = ((residual * residual).sum(1, keepdim=True) - 2.0 * residual @ codebook.T
                + (codebook * codebook).sum(1))
        return dist.argmin(1)

    def quantize(self, z: torch.Tensor):
        """Residual quantization of latents ``z`` (batch, latent).

        Returns the straight-through quantized latent, codes (batch, levels), the residual entering
        each level (levels, batch, latent), and the codebook and commitment losses, each summed
        over levels.
        """
        residual = z
        quantized = torch.zeros_like(z)
        codes, residuals = [], []
        codebook_loss = commit_loss = z.new_zeros(())
        for codebook in self.codebooks:
            idx = self.nearest(residual.detach(), codebook)
            q = codebook[idx]
            # Each side is pulled toward the other held fixed, so neither loss can be met by
            # both collapsing together; the commitment weight keeps the encoder from outrunning
            # the codebook.
            codebook_loss = codebook_loss + F.mse_loss(q, residual.detach())
            commit_loss = commit_loss + F.mse_loss(residual, q.detach())
            codes.append(idx)
            residuals.append(residual)
            quantized = quantized + q.detach()
            # Detached so a level's codes are trained only by their own codebook loss, not by
            # the levels that quantize what they left over.
            residual = residual - q.detach()
        # Straight-through: forward decodes the codes, backward reaches the encoder.
        z_q = z + (quantized - z).detach()
        return z_q, torch.stack(codes, 1), torch.stack(residuals), codebook_loss, commit_loss

    def forward(self, x: torch.Tensor):
        z_q, codes, residuals, codebook_loss, commit_loss = self.quantize(self.encoder(x))
        return self.decoder(z_q), codes, residuals, codebook_loss, commit_loss


@torch.no_grad()
def _encode(model: RQVAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Codes (N, levels), residuals (levels, N, latent) and reconstruction MSE over all of ``x``."""
    codes, residuals, sq_err = [], [], 0.0
    for start in range(0, len(x), _CHUNK):
        chunk = x[start:start + _CHUNK]
        x_hat, c, r, _, _ = model(chunk)
        codes.append(c)
        residuals.append(r)
        sq_err += float(((x_hat - chunk) ** 2).sum())
    return torch.cat(codes), torch.cat(residuals, 1), sq_err / x.numel()


@torch.no_grad()
def _init_codebooks(model: RQVAE, x: torch.Tensor, seed: int) -> None:
    # Codebooks started at random points mostly miss the data and never win an argmin (dead
    # codes); k-means on the untrained encoder's residuals puts every code where rows are.
    residual = torch.cat([model.encoder(x[s:s + _CHUNK]) for s in range(0, len(x), _CHUNK)])
    size = model.codebooks.shape[1]
    for level in range(model.codebooks.shape[0]):
        # Fewer rows than codes: _train_centroids keeps the rows and adds random points.
        centroids = _train_centroids(residual.cpu().numpy().astype(np.float32), size,
                                     seed + level, niter=25)
        model.codebooks[level] = torch.from_numpy(centroids).to(residual.device)
        idx = torch.cat([model.nearest(residual[s:s + _CHUNK], model.codebooks[level])
                         for s in range(0, len(residual), _CHUNK)])
        residual = residual - model.codebooks[level][idx]


def train_rqvae(embeddings: np.ndarray, levels: int, codebook_size: int, seed: int = 0,
                latent_dim: int = 32, hidden_dim: int = 256, epochs: int = 200,
                batch_size: int = 256, lr: float = 1e-3, commitment: float = 0.25,
                progress=None, *, reseed_every: int = 5, return_history: bool = False):
    """Train an RQ-VAE on ``embeddings`` (num_items, dim) and return its Semantic ID codes.

    Codes unused during an epoch are moved onto random current residuals every ``reseed_every``
    epochs. With ``return_history`` the result is ``(quantization, history)``, where
    ``history["recon"]`` holds the whole-catalog reconstruction MSE after codebook
    initialisation (index 0) and after each epoch, and ``history["loss"]`` the mean training
    loss of each epoch.
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x = torch.as_tensor(np.ascontiguousarray(embeddings, dtype=np.float32), device=device)
    num_items = len(x)
    rng = np.random.default_rng(seed)
    history: dict[str, list[float]] = {"recon": [], "loss": []}

    # fork_rng: seed torch for weight init without disturbing the caller's global generator.
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(seed)
        model = RQVAE(x.shape[1], levels, codebook_size, latent_dim, hidden_dim).to(device)
        _init_codebooks(model, x, seed)
        if return_history:
            history["recon"].append(_encode(model, x)[2])
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)

        for epoch in range(epochs):
            model.train()
            usage = torch.zeros(levels, codebook_size, dtype=torch.long, device=device)
            order = torch.as_tensor(rng.permutation(num_items), device=device)
            total, batches = 0.0, 0
            for start in range(0, num_items, batch_size):
                batch = x[order[start:start + batch_size]]
                x_hat, codes, _, codebook_loss, commit_loss = model(batch)
                loss = F.mse_loss(x_hat, batch) + codebook_loss + commitment * commit_loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                for level in range(levels):
                    usage[level] += torch.bincount(codes[:, level], minlength=codebook_size)
                total += float(loss.detach())
                batches += 1

            model.eval()
            # No reseed after the last epoch: an untrained replacement code would only add noise.
            if reseed_every and (epoch + 1) % reseed_every == 0 and epoch + 1 < epochs:
                _, residuals, _ = _encode(model, x)
                with torch.no_grad():
                    for level in range(levels):
                        dead = (usage[level] == 0).nonzero().flatten()
                        if len(dead):
                            rows = torch.as_tensor(rng.choice(num_items, size=len(dead),
                                                              replace=len(dead) > num_items),
                                                   device=device)
                            model.codebooks[level, dead] = residuals[level, rows]
            if return_history:
                history["loss"].append(total / batches)
                history["recon"].append(_encode(model, x)[2])
            if progress is not None:
                progress(epoch + 1, epochs)

        model.eval()
        codes, residuals, _ = _encode(model, x)
    quant = Quantization(
        codes=codes.cpu().numpy().astype(np.int64),
        last_residuals=residuals[-1].cpu().numpy().astype(np.float32),
        last_codebook=model.codebooks[-1].detach().cpu().numpy().astype(np.float32),
        method="rqvae",
    )
    return (quant, history) if return_history else quant
