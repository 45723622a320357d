"""Every item boundary a query (``model.positions: all``): the tensor bookkeeping, with no model state.

A training *chunk* (``training.sampling.chunk_windows``) is a run of consecutive training windows of one
user: window j's history ends with item s_j and its target is s_{j+1}, so the chunk's prompt shows s_j for
each of its windows, in order, and the LM's state at each item's boundary predicts that window's target. The
LM is causal, so no position reads its own future; each position's collaborative state (its user token, its
collaborative logit, the control's mean) is read from the position's own window, which ends at s_j as well.
Chunks are cut from each user's end, so the last chunk, which holds the query a user is scored with, is a
full one.

At inference the prompt is the history's last items and the query is the last item's boundary: the same
position as in training. Each history item's user token is the collaborative net's state after that item:
the history without the later items (``prefix_histories``), as the window of that position was in training.
"""

from __future__ import annotations

import torch


def chunk_items(history: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The prompts' items: history (P, L) windows of B chunks in order, lengths (B,) windows per chunk, sum P.

    Returns (B, K) long, K = max length: chunk b's windows' last history items, oldest first, left-padded.
    """
    if int(lengths.sum()) != history.shape[0]:
        raise ValueError(f"chunk lengths sum to {int(lengths.sum())}, not to the {history.shape[0]} windows")
    lengths = lengths.to(history.device)
    width = int(lengths.max())
    row = torch.repeat_interleave(torch.arange(len(lengths), device=history.device), lengths)  # (P,)
    first = torch.cumsum(lengths, 0) - lengths  # (B,) first window of each chunk
    col = torch.arange(history.shape[0], device=history.device) - first[row] + (width - lengths[row])
    items = history.new_zeros(len(lengths), width)
    items[row, col] = history[:, -1]
    return items


def prefix_histories(history: torch.Tensor, k: int) -> torch.Tensor:
    """(B, L) left-padded histories -> (B, k, L): row j is the history without its last k - 1 - j items,
    left-padded again, i.e. the history as it was after its (L - k + j)-th column's item."""
    width = history.shape[1]
    removed = torch.arange(k - 1, -1, -1, device=history.device)  # (k,) items cut from the end
    src = torch.arange(width, device=history.device)[None] - removed[:, None]  # (k, L) source column
    out = history[:, src.clamp(min=0)]  # (B, k, L)
    return out.masked_fill((src < 0)[None], 0)
