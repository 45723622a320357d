"""The content-similarity term: `content_knn`'s score added to AMFRec's at inference.

score(u, c) += w * cos(content(c), the recency-weighted mean of the content of u's history), where content
is an item's text and image rows (each L2-normalised, concatenated, normalised again; the id is not
content), exactly as `content_knn` ranks. The term treats an item with no trained id (a new item, or one
added live) like any other, so new items that resemble what the user just bought can compete with warm
ones in the whole catalogue. w is ``model.content_similarity``, chosen after training on validation
(``runs/calibrate.py``); 0 (the default before calibration) leaves the score untouched. It reads the item
encoder's feature rows at every call, so items added live and corrupted features are seen as the LM sees
them.
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


def similarity_term(
    encoder, weight: float, history: torch.Tensor, candidates: torch.Tensor | None
) -> torch.Tensor | None:
    """weight * ``similarity_scores`` (B, C) or (B, n_items), or None when weight is 0 (no term)."""
    return weight * similarity_scores(encoder, history, candidates) if weight else None
