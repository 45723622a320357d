"""The full-ranking protocol (`amfrec evaluate --protocol full`): any Recommender ranks the whole catalogue.

Each example's target is ranked among every item (1..n_items) minus the user's seen items (every item the user
interacted with before the target: `PreparedData.seen_items`); the target itself is never excluded, even when
the user had it before. Ties count against the model, as in the candidate protocol. Metrics: hr@k, ndcg@k,
recall@k (k = 1, 3, 5, 10, 20) and mrr; with one target per example recall@k equals hr@k (reported under both
names so tables from the literature can be matched).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from amfrec.data.dataset import Split
from amfrec.evaluate import row_order, slice_metrics, target_positions
from amfrec.metrics import ranking_metrics, ranks_from_scores
from amfrec.recommender import Recommender

FULL_KS: tuple[int, ...] = (1, 3, 5, 10, 20)


def seen_mask(rows: torch.Tensor, items: torch.Tensor, batch: torch.Tensor, n_items: int) -> torch.Tensor:
    """(B, n_items + 1) bool: True where the batch's row batch[b] has seen the item.

    rows, items: (P,) long flat pairs sorted by row (`PreparedData.seen_items`); batch: (B,) long row indices,
    in any order.
    """
    lo, hi = torch.searchsorted(rows, batch), torch.searchsorted(rows, batch + 1)  # (B,) each row's pairs
    counts = hi - lo  # (B,)
    which = torch.repeat_interleave(torch.arange(len(batch)), counts)  # (Q,) the batch position of each pair
    first = torch.repeat_interleave(lo - (torch.cumsum(counts, 0) - counts), counts)  # (Q,)
    mask = torch.zeros(len(batch), n_items + 1, dtype=torch.bool)
    mask[which, items[torch.arange(len(which)) + first]] = True
    return mask


def full_ranks_from_scores(
    scores: torch.Tensor, target: torch.Tensor, excluded: torch.Tensor
) -> torch.Tensor:
    """(B,) long ranks of the targets among the catalogue's non-excluded items, ties against the model.

    scores: (B, n_items) float over items 1..n_items (column j = item j + 1); target: (B,) item indices;
    excluded: (B, n_items + 1) bool (column 0 = padding, ignored). The target is never excluded.
    """
    if torch.isnan(scores).any():
        raise ValueError(f"scores contain NaN ({int(torch.isnan(scores).sum())} of {scores.numel()})")
    col = (target - 1).unsqueeze(1)  # (B, 1)
    out = excluded[:, 1:].clone()  # (B, n_items)
    out.scatter_(1, col, False)
    scores = scores.masked_fill(out, float("-inf"))  # (B, n_items)
    target_score = scores.gather(1, col)  # (B, 1)
    return ((scores >= target_score) & ~out).sum(dim=1).long()  # (B,) the target counts itself: 1 + ...


@torch.no_grad()
def full_ranks(
    model: Recommender,
    split: Split,
    seen: tuple[torch.Tensor, torch.Tensor] | None,
    n_items: int,
    batch_size: int = 64,
    desc: str = "full ranking",
    order: torch.Tensor | None = None,
    candidates: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """(N,) long ranks of `split`'s targets among all n_items items minus each row's seen items (`seen`: flat
    (rows, items) pairs as `PreparedData.seen_items` gives them; None = exclude nothing). The model scores
    (B, n_items) candidates per batch, so memory is bounded by batch_size * n_items. order: (N,) a
    permutation of the rows to score them in (e.g. by prompt length); the ranks come back in split order.

    candidates: also return the (N,) ranks among `split.candidates` (the candidate protocol, ties against
    the model), read off the same scores: one pass gives both protocols, for a model whose score of an item
    does not depend on the other items scored with it (every Recommender here).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(split)
    order = row_order(order, n)
    target_pos = target_positions(split) if candidates else None  # (N,) raises without candidate sets
    catalogue = torch.arange(1, n_items + 1).unsqueeze(0)  # (1, n_items)
    ranks = torch.empty(n, dtype=torch.long)  # (N,)
    among = torch.empty(n, dtype=torch.long)  # (N,) the candidate protocol's ranks (candidates=True)
    with tqdm(total=n, desc=desc, unit="user", leave=False, disable=None) as bar:
        for start in range(0, n, batch_size):
            rows = order[start : start + batch_size]  # (B,)
            everything = catalogue.expand(len(rows), n_items)  # (B, n_items)
            scores = model.score(split.history[rows], everything).detach().float().cpu()  # (B, n_items)
            if scores.shape != everything.shape:
                got, want = tuple(scores.shape), tuple(everything.shape)
                raise ValueError(f"{model.name}.score returned shape {got}, expected {want}")
            if seen is None:
                excluded = torch.zeros(len(rows), n_items + 1, dtype=torch.bool)
            else:
                excluded = seen_mask(seen[0], seen[1], rows, n_items)  # (B, n_items + 1)
            ranks[rows] = full_ranks_from_scores(scores, split.target[rows], excluded)
            if target_pos is not None:
                on_candidates = scores.gather(1, split.candidates[rows] - 1)  # (B, C)
                among[rows] = ranks_from_scores(on_candidates, target_pos[rows])
            bar.update(len(rows))
    return (ranks, among) if candidates else ranks  # (N,) [, (N,)]


def full_metrics(ranks: torch.Tensor) -> dict[str, float]:
    """hr@k, ndcg@k, recall@k (= hr@k: one target) for k in FULL_KS, and mrr, over (N,) ranks."""
    out = ranking_metrics(ranks, FULL_KS)
    out.update({f"recall@{k}": out[f"hr@{k}"] for k in FULL_KS})
    return out


def evaluate_full(
    model: Recommender,
    split: Split,
    seen: tuple[torch.Tensor, torch.Tensor] | None,
    n_items: int,
    batch_size: int = 64,
    slices: dict[str, torch.Tensor] | None = None,
    desc: str = "full ranking",
    order: torch.Tensor | None = None,
    candidates: bool = False,
) -> dict:
    """The full-ranking metrics of `model` on `split`, plus "n", "protocol": "full", the (N,) "ranks" and,
    when given, "slices". order: the order to score the rows in (``full_ranks``); the results are the same.
    candidates: also the (N,) ranks among the split's candidates from the same pass, as "candidate_ranks"."""
    if len(split) == 0:
        raise ValueError("cannot evaluate an empty split")
    among = None
    ranks = full_ranks(
        model, split, seen, n_items, batch_size=batch_size, desc=desc, order=order, candidates=candidates
    )
    if candidates:
        ranks, among = ranks
    out: dict = {
        **full_metrics(ranks),
        "n": len(split),
        "protocol": "full",
        "n_items": n_items,
        "ranks": ranks,
    }
    if among is not None:
        out["candidate_ranks"] = among  # (N,)
    if slices:
        out["slices"] = slice_metrics(ranks, slices, full_metrics)
    return out
