"""The content-similarity term: `content_knn`'s score added to AMFRec's at inference.

score(u, c) += w * cos(content(c), the recency-weighted mean of the content of u's history), where content
is an item's text and image rows (each L2-normalised, concatenated, normalised again; the id is not
content), exactly as `content_knn` ranks. The term treats an item with no trained id (a new item, or one
added live) like any other, so new items that resemble what the user just bought can compete with warm
ones in the whole catalogue. w is ``model.content_similarity``, chosen after training on validation
(``runs/calibrate.py``); 0 (the default before calibration) leaves the score untouched. It reads the item
encoder's feature rows at every call, so items added live and corrupted features are seen as the LM sees
them. ``reorder_new_items`` (``model.new_item_order``) uses the same cosine to order the items without a
trained id among the places the score gives them, without moving any warm item.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from amfrec.baselines.content import ContentKNNConfig, history_cosines

DECAY = ContentKNNConfig().decay  # content_knn's recency weight, so the term is that baseline's score


def content_rows(encoder) -> torch.Tensor | None:
    """(n_items + 1, D) float32 unit (or zero) rows from an ``ItemEncoder``'s non-id modalities; None when
    it reads no content."""
    rows = [
        F.normalize(encoder.feature(name).float(), dim=1) * encoder.present(name).unsqueeze(1)
        for name in encoder.modalities
        if name != "id"
    ]
    return F.normalize(torch.cat(rows, dim=1), dim=1) if rows else None


def similarity_scores(encoder, history: torch.Tensor, candidates: torch.Tensor | None) -> torch.Tensor:
    """history (B, L) left-padded, candidates (B, C) or None (= items 1..n_items) -> (B, C) or (B, n_items)
    float32 cosines in [-1, 1] (0 without content; all 0 when the encoder reads no content)."""
    table = content_rows(encoder)
    if table is None:
        n_items = encoder.feature(encoder.modalities[0]).shape[0] - 1
        return torch.zeros(
            history.shape[0], n_items if candidates is None else candidates.shape[1], device=history.device
        )
    cos = history_cosines(table, history.to(table.device), DECAY)  # (B, n_items + 1)
    return cos[:, 1:] if candidates is None else cos.gather(1, candidates.to(table.device))


def new_item_order_term(
    total: torch.Tensor, cosines: torch.Tensor, history: torch.Tensor, fresh: torch.Tensor, weight: float
) -> torch.Tensor:
    """``reorder_new_items`` of a (B, n_items) score `total` for (B, L) histories, with their (B, n_items)
    content cosines (``similarity_scores``); fresh: (n_items + 1,) bool, as ``AMFRecModel.fresh_items``."""
    hist = torch.zeros(total.shape[0], total.shape[1] + 1, dtype=torch.bool, device=total.device)
    hist.scatter_(1, history.to(total.device), True)  # (B, n_items + 1); column 0 = padding
    return reorder_new_items(total, cosines, fresh[1:].to(total.device), hist[:, 1:], weight)


def reorder_new_items(
    total: torch.Tensor, cosines: torch.Tensor, fresh: torch.Tensor, in_history: torch.Tensor, weight: float
) -> torch.Tensor:
    """(B, n_items) what reordering the new items among themselves adds to the (B, n_items) score `total`.

    fresh: (n_items,) bool, the items without a trained id; cosines, in_history: (B, n_items). Per row, the
    new items outside the history keep the places `total` gives them as a group: their scores, sorted, are
    handed out in the order of total + weight x cosines (ties: the lower item first), so how many new items
    rank above any warm item, and where, is unchanged; only which new item stands in each place changes.
    History items (excluded from every ranking) keep their own scores. 0 on the warm items.
    """
    idx = torch.nonzero(fresh).flatten()  # (F,)
    out = in_history[:, idx]  # (B, F) new items in the history: not reordered
    now = total[:, idx]  # (B, F)
    order = (now + weight * cosines[:, idx]).masked_fill(out, float("-inf"))
    order = order.argsort(dim=1, descending=True, stable=True)  # (B, F) the item that takes place p
    places = now.masked_fill(out, float("-inf")).sort(dim=1, descending=True, stable=True).values  # (B, F)
    handed = torch.empty_like(now).scatter_(1, order, places)  # (B, F)
    shift = torch.zeros_like(total)
    shift[:, idx] = torch.where(out, torch.zeros_like(now), handed - now)
    return shift
