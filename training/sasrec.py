"""SASRec (Kang & McAuley, 2018): a small causal transformer over item ids, the learned baseline.

Item embeddings (row 0 is padding) plus learned positions feed pre-norm causal self-attention
blocks; the hidden state at each position scores every catalog item through the same embedding
table, and training is next-item prediction at every position with full-softmax cross-entropy
(catalogs here are small, and full CE beats BCE with one sampled negative). Early stopping watches
valid NDCG@10 every `eval_every` epochs and keeps the best weights.

It trains on the train sequences, early-stops on valid, and is scored on the test split with test
histories (they end with the valid target), by full-catalog ranking with the user's history
excluded:

    thinkrec train baseline --data artifacts/ml-100k --out checkpoints/ml-100k-tiny/sasrec.pt
    thinkrec eval --data artifacts/ml-100k --methods sasrec --split test    # trains one if none is saved
"""

from __future__ import annotations

import os

import copy
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from training.metrics import hit_ndcg

PAD = 0  # item row 0; catalog item n sits at row n + 1


@dataclass
class SASRecConfig:
    max_len: int = 50
    hidden: int = 64
    blocks: int = 2
    heads: int = 1
    dropout: float = 0.2
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    epochs: int = 200
    eval_every: int = 10
    patience: int = 3          # evaluations without a better valid NDCG@10 before stopping
    seed: int = 0


class CausalBlock(nn.Module):
    """Pre-norm self-attention + feed-forward; each position sees itself and real items before it."""

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.attn_norm = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.attn_out = nn.Linear(hidden, hidden)
        self.ffn_norm = nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, hidden))
        self.residual_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        batch, length, hidden = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).split(hidden, dim=-1)
        q, k, v = (t.view(batch, length, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0)
        attended = attended.transpose(1, 2).reshape(batch, length, hidden)
        x = x + self.residual_dropout(self.attn_out(attended))
        return x + self.residual_dropout(self.ffn(self.ffn_norm(x)))


class SASRecNetwork(nn.Module):
    def __init__(self, num_items: int, config: SASRecConfig):
        super().__init__()
        self.item_embedding = nn.Embedding(num_items + 1, config.hidden, padding_idx=PAD)
        self.position_embedding = nn.Embedding(config.max_len, config.hidden)
        self.input_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(CausalBlock(config.hidden, config.heads, config.dropout)
                                    for _ in range(config.blocks))
        self.final_norm = nn.LayerNorm(config.hidden)
        self.scale = math.sqrt(config.hidden)
        nn.init.normal_(self.item_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding.weight, std=0.02)
        with torch.no_grad():
            self.item_embedding.weight[PAD].zero_()

    def forward(self, item_rows: torch.Tensor) -> torch.Tensor:
        """(batch, max_len) left-padded item rows -> (batch, max_len, hidden) states."""
        length = item_rows.shape[1]
        is_item = item_rows != PAD
        positions = torch.arange(length, device=item_rows.device)
        x = self.item_embedding(item_rows) * self.scale + self.position_embedding(positions)
        x = self.input_dropout(x) * is_item.unsqueeze(-1)
        # Causal and no padding keys; the diagonal stays open so a padded query never sees an
        # all-masked row (that would be NaN), while real queries only ever see real items.
        causal = torch.ones(length, length, dtype=torch.bool, device=item_rows.device).tril()
        diagonal = torch.eye(length, dtype=torch.bool, device=item_rows.device)
        attn_mask = ((causal & is_item.unsqueeze(1)) | diagonal).unsqueeze(1)
        for block in self.blocks:
            x = block(x, attn_mask) * is_item.unsqueeze(-1)
        return self.final_norm(x)

    def item_scores(self, states: torch.Tensor) -> torch.Tensor:
        """Scores over all rows (padding included; callers mask it) via the shared embeddings."""
        return states @ self.item_embedding.weight.T


@dataclass
class SASRecModel:
    network: SASRecNetwork
    item_ids: list[str]
    config: SASRecConfig
    best_epoch: int = 0
    valid_curve: list[tuple[int, float]] = field(default_factory=list)   # (epoch, valid NDCG@10)

    def __post_init__(self):
        self.item_row = {item_id: row + 1 for row, item_id in enumerate(self.item_ids)}

    @property
    def device(self) -> torch.device:
        return self.network.item_embedding.weight.device

    def encode(self, histories: list[list[str]]) -> torch.Tensor:
        """Left-padded rows of each history's last max_len known items."""
        return encode_histories(histories, self.item_row, self.config.max_len).to(self.device)

    @torch.no_grad()
    def catalog_scores(self, histories: list[list[str]], batch_size: int = 256) -> np.ndarray:
        """(len(histories), len(item_ids)) scores of every catalog item (item_ids order), nothing
        masked: callers that filter (training/filtered.py) rank the whole catalog themselves."""
        was_training = self.network.training
        self.network.eval()
        scores = np.zeros((len(histories), len(self.item_ids)), dtype=np.float32)
        for start in range(0, len(histories), batch_size):
            states = self.network(self.encode(histories[start:start + batch_size]))[:, -1]
            # Column 0 is padding, not an item.
            scores[start:start + len(states)] = self.network.item_scores(states)[:, 1:].float().cpu().numpy()
        self.network.train(was_training)
        return scores

    @torch.no_grad()
    def recommend_batch(self, histories: list[list[str]], k: int, batch_size: int = 256) -> list[list[str]]:
        was_training = self.network.training
        self.network.eval()
        k = min(k, len(self.item_ids))
        recommendations: list[list[str]] = []
        for start in range(0, len(histories), batch_size):
            chunk = histories[start:start + batch_size]
            scores = self.network.item_scores(self.network(self.encode(chunk))[:, -1])
            scores[:, PAD] = -math.inf
            for row, history in enumerate(chunk):
                seen = [self.item_row[i] for i in history if i in self.item_row]
                if seen:
                    scores[row, torch.tensor(seen, device=scores.device)] = -math.inf
            top_scores, top_rows = scores.topk(k, dim=-1)
            for row_scores, rows in zip(top_scores.tolist(), top_rows.tolist()):
                # When history covers nearly the whole catalog, fewer than k items remain.
                recommendations.append([self.item_ids[r - 1] for s, r in zip(row_scores, rows) if s > -math.inf])
        self.network.train(was_training)
        return recommendations

    def save(self, path: str | Path) -> None:
        """Written beside the target and renamed into place: a reader (or a second writer) never
        sees half a file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in self.network.state_dict().items()}
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        torch.save({"config": asdict(self.config), "item_ids": list(self.item_ids), "state_dict": state,
                    "best_epoch": self.best_epoch, "valid_curve": [list(p) for p in self.valid_curve]}, partial)
        os.replace(partial, path)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device | None = None) -> SASRecModel:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        config = SASRecConfig(**saved["config"])
        network = SASRecNetwork(len(saved["item_ids"]), config)
        network.load_state_dict(saved["state_dict"])
        network.to(device or default_device()).eval()
        return cls(network, list(saved["item_ids"]), config, saved["best_epoch"],
                   [tuple(p) for p in saved["valid_curve"]])


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def encode_histories(histories: list[list[str]], item_row: dict[str, int], max_len: int) -> torch.Tensor:
    encoded = torch.zeros(len(histories), max_len, dtype=torch.long)
    for n, history in enumerate(histories):
        rows = [item_row[i] for i in history if i in item_row][-max_len:]
        if rows:
            encoded[n, max_len - len(rows):] = torch.tensor(rows)
    return encoded


def training_windows(sequences: list[list[str]], item_row: dict[str, int],
                     max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets), each (windows, max_len), left-padded; targets are inputs shifted by one.

    A sequence longer than max_len + 1 is cut into windows from its end, so every transition is a
    target exactly once (the original keeps only the last window and wastes most of long users).
    """
    inputs, targets = [], []
    for sequence in sequences:
        rows = [item_row[i] for i in sequence if i in item_row]
        end = len(rows)
        while end > 1:
            window = rows[max(0, end - max_len - 1):end]
            pad = [PAD] * (max_len + 1 - len(window))
            inputs.append(pad + window[:-1])
            targets.append(pad + window[1:])
            end -= max_len
    if not inputs:
        raise ValueError("no sequence has two known items: nothing to learn from")
    return torch.tensor(inputs), torch.tensor(targets)


def train_sasrec(item_ids: list[str], train_sequences: list[list[str]],
                 valid: list[tuple[list[str], str]] | None, config: SASRecConfig | None = None,
                 progress: bool = True, device: str | torch.device | None = None) -> SASRecModel:
    """Train on sequences (catalog order = item_ids); early-stop on (history, target) pairs if given."""
    config = config or SASRecConfig()
    torch.manual_seed(config.seed)
    device = torch.device(device) if device is not None else default_device()
    network = SASRecNetwork(len(item_ids), config).to(device)
    model = SASRecModel(network, list(item_ids), config)
    inputs, targets = training_windows(train_sequences, model.item_row, config.max_len)
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    shuffle = torch.Generator().manual_seed(config.seed)

    best_ndcg, best_state, evals_without_gain = -1.0, None, 0
    postfix: dict[str, str] = {}
    bar = tqdm(range(1, config.epochs + 1), desc="sasrec", disable=not progress, dynamic_ncols=True)
    for epoch in bar:
        network.train()
        total_loss, total_batches = 0.0, 0
        for batch in torch.randperm(len(inputs), generator=shuffle).split(config.batch_size):
            batch_inputs, batch_targets = inputs[batch].to(device), targets[batch].to(device)
            # Score only real positions: the full softmax is most of the cost, padding a fifth of it.
            is_target = batch_targets != PAD
            logits = network.item_scores(network(batch_inputs)[is_target])
            loss = F.cross_entropy(logits, batch_targets[is_target])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss, total_batches = total_loss + loss.item(), total_batches + 1
        postfix["loss"] = f"{total_loss / total_batches:.4f}"

        if valid and (epoch % config.eval_every == 0 or epoch == config.epochs):
            ranked = model.recommend_batch([history for history, _ in valid], 10)
            ndcg = hit_ndcg(ranked, [target for _, target in valid], ks=(10,))["ndcg@10"]
            model.valid_curve.append((epoch, ndcg))
            if ndcg > best_ndcg:
                best_ndcg, evals_without_gain, model.best_epoch = ndcg, 0, epoch
                best_state = copy.deepcopy(network.state_dict())
            else:
                evals_without_gain += 1
            postfix["valid_ndcg@10"] = f"{ndcg:.4f}"
        bar.set_postfix(postfix)
        if evals_without_gain >= config.patience:
            break
    bar.close()

    if best_state is not None:
        network.load_state_dict(best_state)
    else:
        model.best_epoch = epoch
    network.eval()
    return model


def fit_on(view, epochs: int, seed: int) -> SASRecModel:
    """SASRec trained on a dataset's train split, early-stopped on its valid split."""
    return train_sasrec(list(view.items), [r["item_ids"] for r in view.train],
                        [(r["history"], r["target"]) for r in view.valid], SASRecConfig(epochs=epochs, seed=seed))


def load_or_fit(path: str | Path, view, epochs: int, seed: int) -> SASRecModel:
    """The SASRec saved at ``path``, or one trained now (``fit_on``) and saved there."""
    if Path(path).exists():
        return SASRecModel.load(path)
    model = fit_on(view, epochs, seed)
    model.save(path)
    return model
