"""SASRec and GRU4Rec with one shared trainer (full-softmax next-item loss, early stopping).

Training: next-item cross-entropy over *all* items (full softmax, logits = sequence representation
. item embedding table) on the training windows (history of <= L items, target).
- `positions: all` (default): each window is read as L next-item examples (position p predicts the
  item at p + 1, the last position predicts the window's target; padded positions are skipped).
  A (prefix, next item) pair occurs in up to L overlapping windows, so an epoch draws a random
  ceil(N / L) of the N windows: every pair is seen about once per epoch, at a random context length
  (as SASRec's own all-position training does) -- about L times cheaper than `last`.
- `positions: last`: every window, only its last position (the target); one pair = one example.
Early stopping on validation ndcg@10 via the shared evaluator; `fit` restores the best epoch.
Scoring: dot product of the sequence representation with the candidates' item embeddings.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from amfrec.data.dataset import PreparedData
from amfrec.errors import AmfrecError
from amfrec.recommender import Recommender

log = logging.getLogger(__name__)


class TrainPositions(enum.StrEnum):
    ALL = "all"
    LAST = "last"


@dataclass
class SequentialConfig:
    """Hyperparameters shared by SASRec and GRU4Rec (max_len comes from the data)."""

    hidden: int = 64
    layers: int = 2
    dropout: float = 0.2
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 256
    max_epochs: int = 30
    patience: int = 3
    eval_batch_size: int = 1024
    positions: TrainPositions = TrainPositions.ALL
    # torch threads during fit. 1 by default: the 64-d model gains little from more, and on a shared
    # CPU oversubscription costs a lot (7x slower with 2 threads than 1 on the loaded 2-core dev box).
    # None = leave torch's setting.
    num_threads: int | None = 1

    def __post_init__(self) -> None:
        try:
            self.positions = TrainPositions(self.positions)
        except ValueError:
            raise ValueError(
                f"{type(self).__name__}.positions must be one of {[p.value for p in TrainPositions]}, "
                f"got {self.positions!r}"
            ) from None
        if self.num_threads is not None and (not isinstance(self.num_threads, int) or self.num_threads < 1):
            raise ValueError(f"{type(self).__name__}.num_threads must be None or an integer >= 1")
        for name in ("hidden", "layers", "batch_size", "max_epochs", "patience", "eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{type(self).__name__}.{name} must be an integer >= 1, got {value!r}")
        for name in ("dropout", "lr", "weight_decay"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"{type(self).__name__}.{name} must be a finite number, got {value!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"{type(self).__name__}.dropout must be in [0, 1), got {self.dropout!r}")
        if not float(self.lr) > 0.0:
            raise ValueError(f"{type(self).__name__}.lr must be > 0, got {self.lr!r}")
        if not float(self.weight_decay) >= 0.0:
            raise ValueError(f"{type(self).__name__}.weight_decay must be >= 0, got {self.weight_decay!r}")


@dataclass
class SASRecConfig(SequentialConfig):
    heads: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.heads, int) or self.heads < 1 or self.hidden % self.heads:
            raise ValueError(
                f"SASRecConfig.heads must be an integer >= 1 dividing hidden={self.hidden}, "
                f"got {self.heads!r}"
            )


@dataclass
class GRU4RecConfig(SequentialConfig):
    lr: float = 3e-3  # chosen on ml-100k validation ndcg@10 (0.754 vs 0.696 at 1e-3, seed 1)


# ----------------------------------------------------------------------------------------------
# Networks: (B, L) left-padded item indices -> (B, L, H) representation at every position
# (same left-padded layout; rows at padded positions are meaningless). The last column is the
# representation of the whole history.


class _Block(nn.Module):
    """Pre-LN transformer block: causal self-attention + point-wise FFN of width `hidden` (as SASRec)."""

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """x (B, L, H); allowed (B, 1, L, L) bool, True where query i may attend to key j."""
        b, n, h = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(h, dim=-1)  # 3 x (B, L, H)
        q, k, v = (
            t.view(b, n, self.heads, h // self.heads).transpose(1, 2) for t in (q, k, v)
        )  # (B, nh, L, d)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)  # (B, nh, L, d)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, n, h)))
        return x + self.drop(self.ffn(self.norm2(x)))


class SASRecNet(nn.Module):
    """Causal self-attention over the item sequence; the last position is the representation."""

    def __init__(self, n_items: int, max_len: int, cfg: SASRecConfig) -> None:
        super().__init__()
        self.item_emb = nn.Embedding(n_items + 1, cfg.hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(_Block(cfg.hidden, cfg.heads, cfg.dropout) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.hidden)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        """history (B, L) -> (B, L, H)."""
        b, n = history.shape
        real = history != 0  # (B, L)
        x = (
            self.item_emb(history) * (self.item_emb.embedding_dim**0.5) + self.pos_emb.weight[-n:]
        )  # (B, L, H)
        x = self.drop(x) * real.unsqueeze(-1)
        causal = torch.tril(torch.ones(n, n, dtype=torch.bool, device=history.device))  # (L, L)
        eye = torch.eye(n, dtype=torch.bool, device=history.device)
        # Query i sees real keys j <= i; a padded query sees only itself (no all-masked row -> no NaN).
        allowed = (causal & real.unsqueeze(1)) | eye  # (B, L, L)
        allowed = allowed.unsqueeze(1)  # (B, 1, L, L)
        for block in self.blocks:
            x = block(x, allowed) * real.unsqueeze(-1)
        return self.norm(x)  # (B, L, H)

    def item_table(self) -> torch.Tensor:
        return self.item_emb.weight  # (n_items + 1, H)


class GRU4RecNet(nn.Module):
    """A GRU over the (right-aligned, packed) item sequence; its output at the last position represents it."""

    def __init__(self, n_items: int, max_len: int, cfg: GRU4RecConfig) -> None:
        super().__init__()
        self.item_emb = nn.Embedding(n_items + 1, cfg.hidden, padding_idx=0)
        self.drop = nn.Dropout(cfg.dropout)
        self.gru = nn.GRU(
            cfg.hidden,
            cfg.hidden,
            num_layers=cfg.layers,
            batch_first=True,
            dropout=cfg.dropout if cfg.layers > 1 else 0.0,
        )
        self.out = nn.Linear(cfg.hidden, cfg.hidden)
        # Item table ~ N(0, 0.1): with 0.02 (SASRec's) the GRU plateaus for epochs before it learns; with
        # N(0, 1) it learns fast but generalises worse (ml-100k validation ndcg@10 0.754 vs 0.712).
        nn.init.normal_(self.item_emb.weight, std=0.1)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        """history (B, L) left-padded -> (B, L, H) left-padded."""
        b, n = history.shape
        lengths = (history != 0).sum(dim=1).clamp(min=1)  # (B,)
        shift = (n - lengths).unsqueeze(1)  # (B, 1) number of padded columns
        pos = torch.arange(n, device=history.device).unsqueeze(0)  # (1, L)
        # Left-padded -> right-padded: position p takes column p + shift; beyond the length -> pad.
        right = history.gather(1, (pos + shift).clamp(max=n - 1)) * (pos + shift < n)  # (B, L)
        x = self.drop(self.item_emb(right))  # (B, L, H)
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=n)  # (B, L, H) right
        # Back to left-padded: column p takes right column p - shift (padded columns get column 0).
        left = out.gather(1, (pos - shift).clamp(min=0).unsqueeze(-1).expand(b, n, out.shape[-1]))
        return self.out(left)  # (B, L, H)

    def item_table(self) -> torch.Tensor:
        return self.item_emb.weight  # (n_items + 1, H)


# ----------------------------------------------------------------------------------------------
# Recommender wrappers with the shared trainer.


class SequentialRecommender(Recommender):
    """Shared fit/score/save/load for a network mapping (B, L) histories to (B, H) representations."""

    config_cls: ClassVar[type[SequentialConfig]] = SequentialConfig
    net_cls: ClassVar[type[nn.Module]]
    weights_file: ClassVar[str]

    def __init__(self, config: SequentialConfig | None = None) -> None:
        self.config = config if config is not None else self.config_cls()
        if not isinstance(self.config, self.config_cls):
            raise TypeError(f"{type(self).__name__} needs a {self.config_cls.__name__}")
        self.net: nn.Module | None = None
        self.n_items = 0
        self.max_len = 0

    def _build(self, n_items: int, max_len: int) -> nn.Module:
        self.n_items, self.max_len = n_items, max_len
        self.net = self.net_cls(n_items, max_len, self.config)
        return self.net

    def _require_net(self) -> nn.Module:
        if self.net is None:
            raise RuntimeError(f"{type(self).__name__} used before fit/load")
        return self.net

    def _loss(self, history: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean full-softmax cross-entropy. history (B, L), target (B,)."""
        net = self._require_net()
        reps = net(history)  # (B, L, H)
        table = net.item_table()[1:]  # (n_items, H): padding is no class
        if self.config.positions is TrainPositions.LAST:
            return F.cross_entropy(reps[:, -1] @ table.T, target - 1)
        labels = torch.cat([history[:, 1:], target.unsqueeze(1)], dim=1)  # (B, L) next item per position
        real = history != 0  # (B, L)
        return F.cross_entropy(reps[real] @ table.T, labels[real] - 1)  # (M, n_items) vs (M,)

    def fit(self, data: PreparedData, seed: int) -> dict:
        """Train on data.train with early stopping on data.valid ndcg@10; restore the best epoch."""
        threads = torch.get_num_threads()
        if self.config.num_threads is not None:
            torch.set_num_threads(self.config.num_threads)
        try:
            return self._fit(data, seed)
        finally:
            torch.set_num_threads(threads)

    def _fit(self, data: PreparedData, seed: int) -> dict:
        from amfrec.evaluate import evaluate  # local: evaluate imports models.base

        cfg = self.config
        torch.manual_seed(seed)
        net = self._build(data.n_items, data.max_len)
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        gen = torch.Generator().manual_seed(seed)
        history, target = data.train.history, data.train.target  # (N, L), (N,)
        n = len(data.train)
        if n == 0:
            raise AmfrecError(f"{data.path}: the training split is empty")
        per_epoch = n if cfg.positions is TrainPositions.LAST else math.ceil(n / data.max_len)
        best: dict[str, Any] = {"epoch": 0, "ndcg@10": -1.0, "state": None}
        epochs: list[dict] = []
        t0 = time.perf_counter()
        for epoch in range(1, cfg.max_epochs + 1):
            net.train()
            order = torch.randperm(n, generator=gen)[:per_epoch]
            total, seen = 0.0, 0
            bar = tqdm(
                range(0, per_epoch, cfg.batch_size),
                desc=f"{self.name} epoch {epoch}",
                unit="batch",
                leave=False,
                disable=None,  # no bar when stderr is not a terminal
            )
            for start in bar:
                idx = order[start : start + cfg.batch_size]
                loss = self._loss(history[idx], target[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
                seen += len(idx)
            valid = evaluate(self, data.valid, batch_size=cfg.eval_batch_size, desc=f"{self.name} valid")
            row = {
                "epoch": epoch,
                "loss": total / seen,
                "valid_ndcg@10": valid["ndcg@10"],
                "valid_hr@1": valid["hr@1"],
            }
            epochs.append(row)
            log.info(
                "%s epoch %d: loss %.4f valid ndcg@10 %.4f hr@1 %.4f (%.1fs)",
                self.name, epoch, row["loss"], valid["ndcg@10"], valid["hr@1"], time.perf_counter() - t0,
            )  # fmt: skip
            if valid["ndcg@10"] > best["ndcg@10"]:
                best = {"epoch": epoch, "ndcg@10": valid["ndcg@10"], "state": copy.deepcopy(net.state_dict())}
            elif epoch - best["epoch"] >= cfg.patience:  # `patience` epochs without improvement
                log.info("%s: early stop at epoch %d (best %d)", self.name, epoch, best["epoch"])
                break
        net.load_state_dict(best["state"])
        net.eval()
        return {
            "best_epoch": best["epoch"],
            "best_valid_ndcg@10": best["ndcg@10"],
            "epochs_run": len(epochs),
            "train_time_s": round(time.perf_counter() - t0, 3),
            "epochs": epochs,
        }

    @torch.no_grad()
    def score(self, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """history (B, L), candidates (B, C) -> (B, C) dot products of representation and item embeddings."""
        net = self._require_net()
        net.eval()
        if history.shape[1] > self.max_len:
            history = history[:, -self.max_len :]
        rep = net(history)[:, -1]  # (B, H)
        cand = net.item_table()[candidates]  # (B, C, H)
        return torch.einsum("bh,bch->bc", rep, cand)  # (B, C)

    def save(self, out_dir: str | Path) -> None:
        """Write <name>.safetensors (weights + config, n_items, max_len in the metadata)."""
        net = self._require_net()
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        meta = {
            "model": self.name,
            "config": json.dumps(dataclasses.asdict(self.config)),
            "n_items": str(self.n_items),
            "max_len": str(self.max_len),
        }
        state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
        save_file(state, str(out_dir / self.weights_file), metadata=meta)

    @classmethod
    def load(cls, run_dir: str | Path, data: PreparedData | None = None) -> SequentialRecommender:
        """Rebuild from RUN/<name>.safetensors; with `data`, check the item count matches."""
        path = Path(run_dir) / cls.weights_file
        if not path.is_file():
            raise AmfrecError(f"{path}: file not found")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        try:
            config = cls.config_cls(**json.loads(meta["config"]))
            n_items, max_len = int(meta["n_items"]), int(meta["max_len"])
        except (KeyError, TypeError, ValueError) as e:
            raise AmfrecError(f"{path}: bad or missing metadata ({e})") from None
        if data is not None and data.n_items != n_items:
            raise AmfrecError(f"{path}: weights cover {n_items} items, the data has {data.n_items}")
        model = cls(config)
        model._build(n_items, max_len).load_state_dict(state)
        model._require_net().eval()
        return model


class SASRec(SequentialRecommender):
    """Self-attentive sequential recommendation (Kang & McAuley 2018); its item table is the `id` modality."""

    name = "sasrec"
    config_cls = SASRecConfig
    net_cls = SASRecNet
    weights_file = "sasrec.safetensors"
    embeddings_file = "item_embeddings.npy"

    def item_embeddings(self) -> torch.Tensor:
        """(n_items + 1, hidden) float32: the learned item table, row 0 (padding) zeroed."""
        table = self._require_net().item_table().detach().float().clone()
        table[0] = 0.0
        return table

    def save(self, out_dir: str | Path) -> None:
        """Weights plus item_embeddings.npy (float32, (n_items + 1, hidden), row 0 = zeros)."""
        super().save(out_dir)
        np.save(Path(out_dir) / self.embeddings_file, self.item_embeddings().numpy().astype(np.float32))


class GRU4Rec(SequentialRecommender):
    """Session-based recommendation with a GRU (Hidasi et al. 2016), trained with full softmax."""

    name = "gru4rec"
    config_cls = GRU4RecConfig
    net_cls = GRU4RecNet
    weights_file = "gru4rec.safetensors"
