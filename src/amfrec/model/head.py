"""The item_token head's pieces that need no model state: the control's query and the cosine scores."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def control_state(table: torch.Tensor, history: torch.Tensor, user: torch.Tensor | None) -> torch.Tensor:
    """The no-LM control's query: the mean of the prompt's soft tokens, (B, d) float.

    table (n_items + 1, T, d) every item's soft tokens (row 0, padding, is zero); history (B, L) item
    indices (0 = padding); user (B, d) the user soft tokens or None. The mean is over the history items' T
    tokens each (and the user token when there is one).
    """
    hist = table[history].flatten(1, 2)  # (B, L * T, d), padding rows are zero
    count = (history != 0).sum(1, keepdim=True) * table.shape[1]  # (B, 1)
    total = hist.sum(1)  # (B, d)
    if user is not None:
        total, count = total + user, count + 1
    return total / count.clamp(min=1)


def cosine_scores(q: torch.Tensor, out: torch.Tensor, items: torch.Tensor | None) -> torch.Tensor:
    """cos(q_b, out[c]): q (B, d); out (n_items + 1, d); items (B, C), or None = items 1..n_items.

    Returns (B, C) or (B, n_items). Long candidate lists (a quarter of the catalogue or more, e.g. a ranker's
    whole catalogue per row) are read off one (B, n_items + 1) product instead of gathering (B, C, d) rows.
    """
    qn = F.normalize(q, dim=-1)
    on = F.normalize(out, dim=-1)
    if items is None:
        return qn @ on[1:].T
    if 4 * items.shape[1] >= on.shape[0]:
        return (qn @ on.T).gather(1, items)  # (B, n_items + 1) -> (B, C)
    return torch.einsum("bd,bcd->bc", qn, on[items])


def fresh_items(
    n_rows: int,
    train_items: torch.Tensor | None,
    drop: torch.Tensor | None,
    modalities: list[str],
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(n_rows,) bool: the items without a trained id, scored by the control's query (``new_item_control``).

    Those never trained (``~train_items``, (n_rows,) bool; None = every item trained) and, in a training
    step, those whose id ``drop`` ((n_rows, M) bool, M = len(modalities)) dropped: trained as new items are
    scored. device: where the mask lives when neither tensor is given (None = the CPU).
    """
    fresh = torch.zeros(n_rows, dtype=torch.bool, device=device) if train_items is None else ~train_items
    if drop is not None and "id" in modalities:
        fresh = fresh | drop[:, modalities.index("id")].to(fresh.device)
    return fresh
