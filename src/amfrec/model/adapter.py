"""The trainable part of AMFRec (the checkpoint is its state_dict) and the model's typed output."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class AMFRecOutput:
    loss: torch.Tensor  # scalar: lm_loss + aux_weight * aux_loss
    lm_loss: torch.Tensor  # scalar: the answer head's cross-entropy (items, or title tokens)
    aux_loss: torch.Tensor  # scalar: the item encoder's auxiliary (load-balancing) loss
    weights: torch.Tensor | None  # (B, S, M) gate weights of the prompt's items, or (n_items + 1, M), or None
    n_answer_tokens: int
    n_tokens: int  # real (non-padding) prompt + answer tokens: the throughput unit

    @classmethod
    def of(
        cls,
        loss: torch.Tensor,
        aux_weight: float,
        aux,
        weights: torch.Tensor | None,
        n_answer: int,
        n_tokens: int,
    ) -> AMFRecOutput:
        """The head's loss + aux_weight * the item encoder's aux loss (tensor or number), with the counts."""
        aux = aux.to(loss.dtype) if torch.is_tensor(aux) else loss.new_tensor(float(aux))
        return cls(loss + aux_weight * aux, loss, aux, weights, n_answer, n_tokens)


@dataclass
class ScoreParts:
    """The item_token head's score of each candidate, term by term; each (B, C) float32.

    content: s * cos(W q + b, e_c), what the LM (or the no-LM mean) contributes; collab: w * collab(u, c), the
    frozen collaborative net's weighted logit, or None without ``collab_score``; similar: the content-
    similarity term (``model/similarity.py``), or None while ``content_similarity`` is 0; order: what handing
    the new items' places out in their own order adds (``new_item_order_term``), or None while
    ``new_item_order`` is 0. The score is their sum.
    """

    content: torch.Tensor
    collab: torch.Tensor | None
    similar: torch.Tensor | None = None
    order: torch.Tensor | None = None

    @property
    def total(self) -> torch.Tensor:
        return sum((t for t in (self.collab, self.similar, self.order) if t is not None), self.content)

    def take(self, candidates: torch.Tensor) -> ScoreParts:
        """Each (B, n_items) term at the (B, C) candidates (item indices 1..n_items) -> (B, C) terms."""
        cols = candidates - 1  # (B, C)
        pick = [None if t is None else t.gather(1, cols) for t in (self.collab, self.similar, self.order)]
        return ScoreParts(self.content.gather(1, cols), *pick)


class Adapter(nn.Module):
    """Every trainable weight of AMFRec: item encoder, optional user projector and query map, head scalars.

    user_projector maps the collaborative representation (B, H) into the LM's space (None = no user token).
    log_scale: log of the cosine scale s (init log(score_scale)); collab_weight: the weight w of the
    collaborative logit (init 1; None = not used); query: a d x d linear map on the answer-position state,
    identity at start (None = not used); residual: a d x d map of the LM's state added to the no_llm state,
    zero at start (None = not used); new_query, new_log_scale: the query map (identity at start) and the
    cosine scale of the control's query, which scores items without a trained id (``new_item_control``).
    """

    def __init__(
        self,
        item_encoder: nn.Module,
        user_projector: nn.Module | None = None,
        score_scale: float = 10.0,
        collab_score: bool = False,
        query_dim: int | None = None,
        residual_dim: int | None = None,
        new_item_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.item_encoder = item_encoder
        self.user = user_projector
        self.query = None if query_dim is None else _identity(query_dim)
        self.residual = None  # llm_residual: the LM's state -> an addition to the control's, 0 at start
        if residual_dim is not None:
            self.residual = nn.Linear(residual_dim, residual_dim)
            nn.init.zeros_(self.residual.weight)
            nn.init.zeros_(self.residual.bias)
        self.log_scale = nn.Parameter(torch.tensor(math.log(score_scale)))
        self.collab_weight = nn.Parameter(torch.tensor(1.0)) if collab_score else None
        self.new_query = self.new_log_scale = None  # new_item_control: the control's query for items w/o id
        if new_item_dim is not None:
            self.new_query = _identity(new_item_dim)
            self.new_log_scale = nn.Parameter(torch.tensor(math.log(score_scale)))


def _identity(dim: int) -> nn.Linear:
    """A dim x dim linear map that starts as the identity."""
    layer = nn.Linear(dim, dim)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(dim))
        layer.bias.zero_()
    return layer
