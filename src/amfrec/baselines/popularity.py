"""Popularity: score = how often the item occurs in the training interactions (history-independent)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from amfrec.data.dataset import PreparedData, Split
from amfrec.errors import AmfrecError
from amfrec.recommender import Recommender

log = logging.getLogger(__name__)

WEIGHTS_FILE = "popularity.safetensors"


def training_interaction_counts(train: Split, n_items: int) -> torch.Tensor:
    """(n_items + 1,) float counts of every item over the training interactions; index 0 stays 0.

    The training interactions of a user are i_1 .. i_{n-2} (the last two are the validation and
    test targets). Each training window's target is one of i_2 .. i_{n-2}; the user's first item
    i_1 is the one history item of the window whose history has length 1. Counting both gives each
    training interaction exactly once, and nothing from the validation or test targets.
    """
    counts = torch.zeros(n_items + 1, dtype=torch.float64)
    counts.index_add_(0, train.target, torch.ones_like(train.target, dtype=torch.float64))
    first = train.history[(train.history != 0).sum(dim=1) == 1, -1]  # (U,) first item of each user
    counts.index_add_(0, first, torch.ones_like(first, dtype=torch.float64))
    counts[0] = 0.0
    return counts.float()


class Popularity(Recommender):
    """Ranks candidates by their training-interaction count; ties count against the model."""

    name = "popularity"

    def __init__(self) -> None:
        self.counts: torch.Tensor | None = None  # (n_items + 1,)

    def fit(self, data: PreparedData, seed: int) -> dict:
        """Count training interactions (seed unused: the model is deterministic)."""
        self.counts = training_interaction_counts(data.train, data.n_items)
        log.info("popularity: %d interactions counted over %d items", int(self.counts.sum()), data.n_items)
        return {"interactions": int(self.counts.sum()), "items_seen": int((self.counts > 0).sum())}

    def score(self, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """history (B, L) is ignored; candidates (B, C) -> counts (B, C)."""
        if self.counts is None:
            raise RuntimeError("Popularity.score called before fit/load")
        return self.counts[candidates]  # (B, C)

    def save(self, out_dir: str | Path) -> None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if self.counts is None:
            raise RuntimeError("Popularity.save called before fit")
        save_file({"counts": self.counts.contiguous()}, str(out_dir / WEIGHTS_FILE))

    @classmethod
    def load(cls, run_dir: str | Path, data: PreparedData) -> Popularity:
        path = Path(run_dir) / WEIGHTS_FILE
        if not path.is_file():
            raise AmfrecError(f"{path}: file not found")
        counts = load_file(str(path))["counts"]
        if counts.shape != (data.n_items + 1,):
            raise AmfrecError(
                f"{path}: counts cover {counts.shape[0] - 1} items, the data has {data.n_items}"
            )
        model = cls()
        model.counts = counts
        return model
