"""Training examples for AMFRec: uniform negatives outside each history, reproducible micro-batches.

Every random draw comes from a generator seeded by a tuple of ints (seed, epoch, batch), so a resumed run
replays exactly the batches of an uninterrupted one.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from amfrec.config.model import TrainConfig
from amfrec.data.dataset import Split
from amfrec.errors import AmfrecError
from amfrec.seeds import generator


def draw_candidates(
    history: torch.Tensor, target: torch.Tensor, n_items: int, n_negatives: int, gen: torch.Generator
) -> torch.Tensor:
    """Training candidate sets: the target plus `n_negatives` distinct items drawn uniformly from the items
    (1..n_items) that are neither in the history nor the target, in a random order per example.

    history (B, L) long (0 = padding), target (B,) long -> candidates (B, n_negatives + 1) long.
    Vectorised: random scores with the forbidden items pushed below every allowed one, then top-k.
    """
    B = target.shape[0]
    forbidden = torch.zeros(B, n_items + 1, dtype=torch.bool)
    forbidden[:, 0] = True
    forbidden.scatter_(1, history.cpu(), True)
    forbidden.scatter_(1, target.cpu()[:, None], True)
    allowed = (~forbidden).sum(1)
    if int(allowed.min()) < n_negatives:
        raise ValueError(
            f"cannot draw {n_negatives} negatives: an example leaves only {int(allowed.min())} items "
            f"outside its history and target (n_items = {n_items})"
        )
    scores = torch.rand(B, n_items + 1, generator=gen).masked_fill_(forbidden, -1.0)  # (B, n_items + 1)
    negatives = scores.topk(n_negatives, dim=1).indices  # (B, n_neg)
    cands = torch.cat([negatives, target.cpu()[:, None]], 1)  # (B, C)
    order = torch.rand(cands.shape, generator=gen).argsort(1)
    return cands.gather(1, order)


def chunk_windows(split: Split, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Group a split's consecutive windows of one user into chunks of at most ``size`` windows.

    Window i + 1 continues window i when both belong to the same user and i + 1's history ends with i's
    target. Each run of continuing windows is cut into chunks from its end. Returns starts (n_chunks,) and
    lengths (n_chunks,) long, in the split's window order.
    """
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    n = len(split)
    if n == 0:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    _, user = np.unique(np.asarray(split.users, dtype=object).astype(str), return_inverse=True)
    last = split.history[:, -1].numpy()
    target = split.target.numpy()
    cont = np.zeros(n, dtype=bool)
    cont[1:] = (user[1:] == user[:-1]) & (last[1:] == target[:-1])
    run = np.cumsum(~cont) - 1  # (n,) run index of each window
    run_end = np.r_[np.flatnonzero(np.diff(run)), n - 1]  # (n_runs,) last window of each run
    chunk = (run_end[run] - np.arange(n)) // size  # (n,) chunk index within the run, counted from its end
    new = np.r_[True, (run[1:] != run[:-1]) | (chunk[1:] != chunk[:-1])]
    starts = np.flatnonzero(new)
    lengths = np.diff(np.r_[starts, n])
    return torch.from_numpy(starts).long(), torch.from_numpy(lengths).long()


class TrainBatches:
    """Micro-batch `i` of the endless stream of epochs, computed from (seed, epoch, batch) alone, so resuming
    at step s (micro-batch s * grad_accum) replays exactly the batches of an uninterrupted run."""

    def __init__(self, split: Split, n_items: int, cfg: TrainConfig) -> None:
        self.split, self.n_items, self.cfg = split, n_items, cfg
        self.n = len(split)
        if self.n == 0:
            raise AmfrecError("training split is empty: nothing to train on")
        self.per_epoch = math.ceil(self.n / cfg.batch_size)
        self.fixed = None
        if not cfg.redraw_negatives:  # drawn once, in chunks to bound memory
            chunks = []
            for i, start in enumerate(range(0, self.n, 4096)):
                sl = slice(start, start + 4096)
                chunks.append(
                    draw_candidates(
                        split.history[sl],
                        split.target[sl],
                        n_items,
                        cfg.n_negatives,
                        generator(cfg.seed, 7, i),
                    )
                )
            self.fixed = torch.cat(chunks)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> history (B, L), candidates (B, C), target (B,)."""
        epoch, b = divmod(i, self.per_epoch)
        order = torch.randperm(self.n, generator=generator(self.cfg.seed, epoch))
        idx = order[b * self.cfg.batch_size : (b + 1) * self.cfg.batch_size]
        history, target = self.split.history[idx], self.split.target[idx]
        if self.fixed is not None:
            cands = self.fixed[idx]
        else:
            cands = draw_candidates(
                history, target, self.n_items, self.cfg.n_negatives, generator(self.cfg.seed, epoch, b)
            )
        return history, cands, target


class ChunkBatches:
    """Micro-batch `i` of chunks (``chunk_windows``; ``amfrec.model.positions``): up to ``cfg.batch_size``
    prompts, each a run of up to ``size`` consecutive windows of one user, every window a target.
    Reproducible as `TrainBatches`.

    Each epoch shuffles the chunks, sorts each pool of 32 batches by chunk length (so that little of a prompt
    batch is padding) and shuffles the batches of the pool.
    """

    POOL = 32  # batches sorted together by length

    def __init__(self, split: Split, n_items: int, cfg: TrainConfig, size: int) -> None:
        self.split, self.n_items, self.cfg = split, n_items, cfg
        if len(split) == 0:
            raise AmfrecError("training split is empty: nothing to train on")
        self.starts, self.lengths = chunk_windows(split, size)
        self.n = len(self.starts)
        self.per_epoch = math.ceil(self.n / cfg.batch_size)
        self._epoch: tuple[int, list[torch.Tensor]] | None = None  # (epoch, its batches of chunk indices)

    def _batches(self, epoch: int) -> list[torch.Tensor]:
        if self._epoch is None or self._epoch[0] != epoch:
            gen = generator(self.cfg.seed, epoch, 11)
            order = torch.randperm(self.n, generator=gen)
            pool = self.POOL * self.cfg.batch_size
            batches = []
            for start in range(0, self.n, pool):
                part = order[start : start + pool]
                part = part[torch.sort(self.lengths[part], stable=True).indices]
                cut = list(part.split(self.cfg.batch_size))
                batches.extend(cut[j] for j in torch.randperm(len(cut), generator=gen).tolist())
            self._epoch = (epoch, batches)
        return self._epoch[1]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> history (P, L), candidates (P, C), target (P,) of every window of the batch's chunks, chunk by
        chunk in order; lengths (B,) windows per chunk."""
        epoch, b = divmod(i, self.per_epoch)
        chunks = self._batches(epoch)[b]
        lengths = self.lengths[chunks]
        starts = self.starts[chunks].tolist()
        idx = torch.cat([torch.arange(s, s + n) for s, n in zip(starts, lengths.tolist(), strict=True)])
        history, target = self.split.history[idx], self.split.target[idx]
        gen = generator(self.cfg.seed, epoch, b)
        cands = draw_candidates(history, target, self.n_items, self.cfg.n_negatives, gen)
        return history, cands, target, lengths
