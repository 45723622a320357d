"""Projectors from a modality's feature space into the LLM's token-embedding space.

`MLPProjector`: LLaRA's `Linear(d_in, h) -> GELU -> Linear(h, d_out)`.
`MoEProjector`: K experts of that form mixed by a softmax router on the input (optionally top-k,
renormalised), with a load-balancing auxiliary loss. The experts are stacked ((K, d_in, h), (K, h, d_out))
and run in one matmul per layer: no Python loop over experts. Every expert runs on every row (dense compute) —
cheap at K = 4 and the item counts of a prompt batch; top-k only changes the mixing weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from amfrec.config.model import BalanceLoss


class MLPProjector(nn.Module):
    """x (N, d_in) -> (N, d_out) through Linear -> GELU -> Linear."""

    def __init__(self, d_in: int, hidden: int, d_out: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # (N, d_out)


class MoEProjector(nn.Module):
    """A mixture of K `MLPProjector`-shaped experts with a softmax router on the input.

    forward(x (N, d_in), mask (N,) bool | None) -> (out (N, d_out), aux_loss (), probs (N, K))
    - probs: the router's softmax over the K experts (before top-k).
    - out = sum_k g_k * expert_k(x), g = probs (dense) or probs kept on the top-k experts and renormalised.
    - aux_loss (load balancing, 1 when perfectly balanced, K when one expert takes everything):
        "switch": K * sum_k f_k * p_k, f_k = share of the routing slots that go to expert k (the argmax for
                  dense routing, the k kept experts otherwise; f sums to 1), p_k = mean router probability.
                  f is a count (no gradient); the gradient flows through p.
        "soft":   K * sum_k p_k^2 (f replaced by p).
      Only rows with mask True count (padding and absent items would otherwise dominate the statistics);
      with no such row aux_loss is 0.
    """

    def __init__(
        self,
        d_in: int,
        hidden: int,
        d_out: int,
        n_experts: int = 4,
        top_k: int | None = None,
        balance: BalanceLoss | str = BalanceLoss.SWITCH,
    ) -> None:
        super().__init__()
        if top_k is not None and not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k: must be in [1, {n_experts}], got {top_k}")
        self.d_in, self.hidden, self.d_out = d_in, hidden, d_out
        self.n_experts, self.top_k = n_experts, top_k
        self.balance = BalanceLoss(balance)
        self.router = nn.Linear(d_in, n_experts)
        self.w1 = nn.Parameter(torch.empty(n_experts, d_in, hidden))
        self.b1 = nn.Parameter(torch.empty(n_experts, hidden))
        self.w2 = nn.Parameter(torch.empty(n_experts, hidden, d_out))
        self.b2 = nn.Parameter(torch.empty(n_experts, d_out))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Linear's default initialisation, per expert: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
        for w, b, fan_in in ((self.w1, self.b1, self.d_in), (self.w2, self.b2, self.hidden)):
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        probs = F.softmax(self.router(x), dim=-1)  # (N, K)
        k = self.top_k or 1
        slots = probs.topk(k, dim=-1).indices  # (N, k): the experts each row is routed to
        if self.top_k is None:
            gates = probs  # (N, K) dense mixture
        else:
            keep = torch.zeros_like(probs).scatter_(-1, slots, 1.0)  # (N, K) 1 on the kept experts
            kept = probs * keep
            gates = kept / kept.sum(-1, keepdim=True)  # renormalised over the kept experts
        h = F.gelu(torch.einsum("nd,kdh->nkh", x, self.w1) + self.b1)  # (N, K, h)
        # sum_k g_k (h_k W2_k + b2_k) as one matmul over the experts' gated hidden units side by side:
        # (N, K h) @ (K h, d_out); no (N, K, d_out) stack of expert outputs to build and mix
        mixed = (gates.unsqueeze(-1) * h).flatten(1)  # (N, K h)
        out = mixed @ self.w2.flatten(0, 1) + gates @ self.b2  # (N, d_out)
        return out, self._balance_loss(probs, slots, mask), probs

    def _balance_loss(
        self, probs: torch.Tensor, slots: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        K = self.n_experts
        w = torch.ones(probs.shape[0], device=probs.device) if mask is None else mask.to(probs.dtype)  # (N,)
        n = w.sum()
        if n == 0:
            return probs.sum() * 0.0  # keeps the graph; no rows to balance
        p = (probs * w[:, None]).sum(0) / n  # (K,) mean router probability
        if self.balance == BalanceLoss.SOFT:
            return K * (p * p).sum()
        routed = torch.zeros_like(probs).scatter_(-1, slots, 1.0) / slots.shape[-1]  # (N, K), rows sum to 1
        f = (routed * w[:, None]).sum(0) / n  # (K,) share of routing slots per expert
        return K * (f.detach() * p).sum()
