"""SASRec, GRU4Rec and BERT4Rec with one shared trainer (full-softmax loss, early stopping).

Training: next-item cross-entropy over *all* items (full softmax, logits = sequence representation
. item embedding table) on the training windows (history of <= L items, target).
- `positions: all` (default): each window is read as L next-item examples (position p predicts the
  item at p + 1, the last position predicts the window's target; padded positions are skipped).
  A (prefix, next item) pair occurs in as many overlapping windows as a window holds history items (k,
  at most L; fewer at the start of a sequence, and on sparse data most windows are short), so an epoch
  draws a random ceil(N / mean k) of the N windows: every pair is seen about once per epoch, at a random
  context length (as SASRec's own all-position training does) -- about mean-k times cheaper than `last`.
  (Dividing by L instead would make an epoch of short windows see a fraction of the pairs, and early
  stopping would then end an undertrained model whenever L is longer than the typical history.)
- `positions: last`: every window, only its last position (the target); one pair = one example.
BERT4Rec's loss is the cloze one instead (`BERT4Rec`: masked items of the window plus its target).
`max_len` (config) L: the model reads the last L items of every history (training, scoring; default: the
data's), and L is the `max_len` of its position table, its per-epoch window count and its saved metadata.
Early stopping on validation ndcg@10 via the shared evaluator; `fit` restores the best epoch.
Scoring: dot product of the sequence representation with the candidates' item embeddings.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from amfrec.baselines.nets import (  # noqa: F401 - the configs are part of this module's API
    BERT4RecConfig,
    BERT4RecNet,
    GRU4RecConfig,
    GRU4RecNet,
    SASRecConfig,
    SASRecNet,
    SequentialConfig,
    TrainPositions,
)
from amfrec.data.dataset import PreparedData
from amfrec.errors import AmfrecError
from amfrec.recommender import Recommender

log = logging.getLogger(__name__)


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
        reps = self._require_net()(history)  # (B, L, H)
        if self.config.positions is TrainPositions.LAST:
            return F.cross_entropy(self._train_logits(reps[:, -1]), target - 1)
        labels = torch.cat([history[:, 1:], target.unsqueeze(1)], dim=1)  # (B, L) next item per position
        real = history != 0  # (B, L)
        return F.cross_entropy(self._train_logits(reps[real]), labels[real] - 1)  # (M, n_items) vs (M,)

    def _train_logits(self, reps: torch.Tensor) -> torch.Tensor:
        """reps (M, H) -> (M, n_items) training logits over every item (padding is no class)."""
        return reps @ self._require_net().item_table()[1:].T

    def _windows_per_epoch(self, history: torch.Tensor) -> int:
        """How many of the N training windows, history (N, L) left-padded, an epoch draws: N / the mean
        number of history items per window (each pair about once per epoch), or N for `positions: last`."""
        n = history.shape[0]
        if self.config.positions is TrainPositions.LAST:
            return n
        return math.ceil(n / float((history != 0).sum(1).clamp(min=1).float().mean()))

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
        try:
            max_len = cfg.history_len(data.max_len)
        except ValueError as e:
            raise AmfrecError(f"{data.path}: {e}") from None
        torch.manual_seed(seed)
        net = self._build(data.n_items, max_len)
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        gen = torch.Generator().manual_seed(seed)
        history, target = data.train.history[:, -max_len:], data.train.target  # (N, L), (N,)
        n = len(data.train)
        if n == 0:
            raise AmfrecError(f"{data.path}: the training split is empty")
        per_epoch = self._windows_per_epoch(history)
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
            "max_len": max_len,
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
        config, n_items, max_len, state = cls._read_weights(run_dir, data)
        return cls(config)._restore(n_items, max_len, state)

    @classmethod
    def _read_weights(
        cls, run_dir: str | Path, data: PreparedData | None
    ) -> tuple[SequentialConfig, int, int, dict[str, torch.Tensor]]:
        """RUN/<name>.safetensors -> (config, n_items, max_len, state dict); AmfrecError naming the file."""
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
        return config, n_items, max_len, state

    def _restore(self, n_items: int, max_len: int, state: dict[str, torch.Tensor]) -> SequentialRecommender:
        """Build the network for `n_items`/`max_len`, load `state` into it, switch to eval; returns self."""
        self._build(n_items, max_len).load_state_dict(state)
        self._require_net().eval()
        return self


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


def cloze_mask(seq: torch.Tensor, ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """seq (B, n) left-padded with real last column -> (B, n) bool: each real item masked with probability
    `ratio` (one vectorised draw), and the last item of every row where the draw masked none."""
    draw = torch.rand(seq.shape, generator=generator, device=seq.device) < ratio  # (B, n)
    masked = draw & (seq != 0)
    masked[:, -1] |= ~masked.any(dim=1)
    return masked


class BERT4Rec(SequentialRecommender):
    """Bidirectional sequential recommendation with the cloze objective (Sun et al. 2019), full softmax.

    Training (`positions: all`): the window's history plus its target, each real item replaced by [mask]
    with probability `mask_ratio` (the target when none was drawn), cross-entropy of the masked items over
    every item. Scoring: [mask] appended after the last L items of the history; its output scores the
    candidates (the same task as training's masked target).
    """

    name = "bert4rec"
    config_cls = BERT4RecConfig
    net_cls = BERT4RecNet
    weights_file = "bert4rec.safetensors"

    def _windows_per_epoch(self, history: torch.Tensor) -> int:
        """A window of k history items has k + 1 real tokens (with its target), mask_ratio of them masked
        targets: an epoch draws N / (mean (k + 1) x mask_ratio) windows (at most N)."""
        n = history.shape[0]
        if self.config.positions is TrainPositions.LAST:
            return n
        tokens = float((history != 0).sum(1).float().mean()) + 1.0
        return min(n, math.ceil(n / (tokens * self.config.mask_ratio)))  # type: ignore[attr-defined]

    def _loss(self, history: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the masked items. history (B, L), target (B,); masks from torch's RNG."""
        net = self._require_net()
        seq = torch.cat([history, target.unsqueeze(1)], dim=1)  # (B, L + 1), the target always real
        last = self.config.positions is TrainPositions.LAST
        masked = cloze_mask(seq, 0.0 if last else self.config.mask_ratio)  # type: ignore[attr-defined]
        reps = net(seq.masked_fill(masked, net.mask_id))  # (B, L + 1, H)
        return F.cross_entropy(net.logits(reps[masked]), seq[masked] - 1)  # (M, n_items) vs (M,)

    @torch.no_grad()
    def score(self, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """history (B, L'), candidates (B, C) -> (B, C): [mask] after the last L history items, its output
        against the candidates' item embeddings (plus their output bias)."""
        net = self._require_net()
        net.eval()
        history = history[:, -self.max_len :]  # (B, <= L)
        mask = torch.full_like(history[:, :1], net.mask_id)  # (B, 1)
        rep = net(torch.cat([history, mask], dim=1))[:, -1]  # (B, H)
        return net.logits(rep, candidates)  # (B, C)
