"""The one contract every recommender follows, so one evaluator serves baselines and LLM models."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from amfrec.data.dataset import PreparedData


class Recommender(ABC):
    """Fit on the training windows; score a batch of candidate sets."""

    name: str = "recommender"

    @abstractmethod
    def fit(self, data: PreparedData, seed: int) -> dict:
        """Train on `data.train` (early stopping on `data.valid` where it applies); return training info."""

    @abstractmethod
    def score(self, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Score candidates.

        history: (B, L) long, item indices left-padded with 0 (most recent last).
        candidates: (B, C) long item indices.
        Returns (B, C) float scores, higher = better.
        """
