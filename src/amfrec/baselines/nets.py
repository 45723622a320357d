"""The sequential baselines' configs and networks.

Networks: (B, L) left-padded item indices -> (B, L, H) representation at every position (same left-padded
layout; rows at padded positions are meaningless). SASRec/GRU4Rec: the last column is the representation of
the whole history. BERT4Rec is bidirectional: its input is the history with a [mask] token appended, whose
output (through `BERT4RecNet.logits`) scores the next item. `item_table()` is the (n_items + 1, H)
item-embedding table.

`max_len` (the networks' argument) is the *effective* history length: the config's `max_len` when set, else
the prepared data's (`SequentialConfig.history_len`).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class TrainPositions(enum.StrEnum):
    ALL = "all"
    LAST = "last"


@dataclass
class SequentialConfig:
    """Hyperparameters shared by SASRec, GRU4Rec and BERT4Rec.

    max_len: None = the prepared data's history length; an int L = the model reads only the last L items of
    each history (L <= the data's max_len, checked at fit), so one folder prepared with `--max-len 200`
    serves a search over 10/50/200 (the last 10 items of a 200-item window are the `--max-len 10` window).
    """

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
    max_len: int | None = None

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
        if self.max_len is not None and (
            not isinstance(self.max_len, int) or isinstance(self.max_len, bool) or self.max_len < 1
        ):
            raise ValueError(
                f"{type(self).__name__}.max_len must be null (the data's) or an integer >= 1, "
                f"got {self.max_len!r}"
            )
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

    def history_len(self, data_max_len: int) -> int:
        """The effective history length on data prepared with `data_max_len`; ValueError naming both numbers
        when the config asks for more than the data holds."""
        if self.max_len is None:
            return data_max_len
        if self.max_len > data_max_len:
            raise ValueError(
                f"{type(self).__name__}.max_len={self.max_len} exceeds the prepared data's "
                f"max_len={data_max_len} (prepare the data with --max-len {self.max_len} or more)"
            )
        return self.max_len


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


@dataclass
class BERT4RecConfig(SequentialConfig):
    """BERT4Rec's fields (RecBole's defaults where they apply: hidden 64, 2 layers, 2 heads, dropout 0.2,
    FFN width 256, mask_ratio 0.2, lr 1e-3).

    positions: `all` = the cloze objective: every real position of a window plus its target is masked with
    probability `mask_ratio` (at least one per window: the target when the draw masks none), and an epoch
    draws ceil(N / (mean tokens per window * mask_ratio)) of the N windows, so each (context, next item)
    pair is a masked target about once per epoch, as SASRec's `all`; `last` = every window, only its target
    masked (the inference task alone)."""

    heads: int = 2
    inner: int = 256  # RecBole's inner_size (4 x hidden, as BERT)
    mask_ratio: float = 0.2  # RecBole's default; the paper tunes 0.2 (ml-1m, sparse) ... 0.6

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.heads, int) or self.heads < 1 or self.hidden % self.heads:
            raise ValueError(
                f"BERT4RecConfig.heads must be an integer >= 1 dividing hidden={self.hidden}, "
                f"got {self.heads!r}"
            )
        if not isinstance(self.inner, int) or isinstance(self.inner, bool) or self.inner < 1:
            raise ValueError(f"BERT4RecConfig.inner must be an integer >= 1, got {self.inner!r}")
        ratio = self.mask_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0.0 < ratio <= 1.0:
            raise ValueError(f"BERT4RecConfig.mask_ratio must be a number in (0, 1], got {ratio!r}")
        self.mask_ratio = float(ratio)


class _Block(nn.Module):
    """Pre-LN transformer block: self-attention (the caller's mask: causal for SASRec, bidirectional for
    BERT4Rec) + point-wise FFN of width `inner` (default `hidden`, as SASRec)."""

    def __init__(self, hidden: int, heads: int, dropout: float, inner: int | None = None) -> None:
        super().__init__()
        inner = inner or hidden
        self.heads = heads
        self.norm1 = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(nn.Linear(hidden, inner), nn.GELU(), nn.Linear(inner, hidden))
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


class BERT4RecNet(nn.Module):
    """Bidirectional self-attention over the item sequence (Sun et al. 2019); items at [mask] positions are
    predicted by `logits`: GELU(W h + b) -> LayerNorm, dot the (tied) item table, plus a per-item bias.

    Item index n_items + 1 is the [mask] token; `max_len` = L history items, so L + 1 positions (the history
    and the appended [mask]). Positions are counted from the right, as SASRecNet's: the last column always
    gets the last position's embedding, whatever the width.
    """

    def __init__(self, n_items: int, max_len: int, cfg: BERT4RecConfig) -> None:
        super().__init__()
        self.n_items, self.mask_id = n_items, n_items + 1
        self.item_emb = nn.Embedding(n_items + 2, cfg.hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len + 1, cfg.hidden)
        self.in_norm = nn.LayerNorm(cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            _Block(cfg.hidden, cfg.heads, cfg.dropout, cfg.inner) for _ in range(cfg.layers)
        )
        self.norm = nn.LayerNorm(cfg.hidden)
        self.head = nn.Sequential(nn.Linear(cfg.hidden, cfg.hidden), nn.GELU(), nn.LayerNorm(cfg.hidden))
        self.bias = nn.Parameter(torch.zeros(n_items + 1))  # (n_items + 1,) output bias, row 0 unused
        for emb in (self.item_emb, self.pos_emb):  # RecBole's initializer_range
            nn.init.normal_(emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """seq (B, n) left-padded item indices ([mask] = n_items + 1), n <= L + 1 -> (B, n, H)."""
        n = seq.shape[1]
        real = seq != 0  # (B, n)
        x = self.drop(self.in_norm(self.item_emb(seq) + self.pos_emb.weight[-n:])) * real.unsqueeze(-1)
        eye = torch.eye(n, dtype=torch.bool, device=seq.device)
        # Every query sees every real key (both directions); a padded query only itself (no NaN row).
        allowed = (real.unsqueeze(1) | eye).unsqueeze(1)  # (B, 1, n, n)
        for block in self.blocks:
            x = block(x, allowed) * real.unsqueeze(-1)
        return self.norm(x)  # (B, n, H)

    def logits(self, reps: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """reps (..., H) at [mask] positions -> scores of `items` ((..., C) indices: (..., C)), or of every
        item (None: (..., n_items), column j = item j + 1)."""
        out = self.head(reps)  # (..., H)
        if items is None:
            return out @ self.item_emb.weight[1 : self.n_items + 1].T + self.bias[1:]
        return torch.einsum("...h,...ch->...c", out, self.item_emb(items)) + self.bias[items]

    def item_table(self) -> torch.Tensor:
        return self.item_emb.weight[: self.n_items + 1]  # (n_items + 1, H), without the [mask] row
