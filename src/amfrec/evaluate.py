"""The one evaluator: any Recommender on any Split with candidates -> ranking metrics.

Baselines and the AMFRec LLM model are scored by this same code on the same candidate sets.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from amfrec.data.dataset import Split
from amfrec.metrics import RANK_KS, ranking_metrics, ranks_from_scores
from amfrec.recommender import Recommender

log = logging.getLogger(__name__)


def target_positions(split: Split) -> torch.Tensor:
    """(N,) long: the column of each example's target in `split.candidates` (N, C).

    Raises ValueError when the split has no candidates or a row holds its target not exactly once.
    """
    if split.candidates is None:
        raise ValueError("split has no candidate sets (only valid/test splits can be evaluated)")
    hits = split.candidates == split.target.unsqueeze(1)  # (N, C)
    per_row = hits.sum(dim=1)  # (N,)
    bad = torch.nonzero(per_row != 1).flatten()
    if bad.numel():
        i = int(bad[0])
        raise ValueError(
            f"{bad.numel()} example(s) do not hold their target exactly once among the candidates "
            f"(first: row {i}, user {split.users[i]!r}, found {int(per_row[i])} times)"
        )
    return hits.long().argmax(dim=1)  # (N,)


def row_order(order: torch.Tensor | None, n: int) -> torch.Tensor:
    """(N,) the order to score N rows in: `order`, checked to be a permutation of 0..N-1; None = 0..N-1."""
    if order is None:
        return torch.arange(n)
    if not torch.equal(torch.sort(order).values, torch.arange(n)):
        raise ValueError(f"order must be a permutation of 0..{n - 1}")
    return order


@torch.no_grad()
def evaluate_ranks(
    model: Recommender,
    split: Split,
    batch_size: int = 256,
    desc: str = "evaluate",
    order: torch.Tensor | None = None,
) -> torch.Tensor:
    """(N,) long ranks of the targets among their candidates (1 = best, ties against the model).

    order: (N,) a permutation of the rows to score them in (e.g. by prompt length, so a batch pads little);
    the ranks come back in the split's order. The progress bar counts users (users/s).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    target_pos = target_positions(split)  # (N,)
    assert split.candidates is not None  # checked by target_positions
    n = len(split)
    order = row_order(order, n)
    ranks = torch.empty(n, dtype=torch.long)  # (N,)
    t0 = time.perf_counter()
    with tqdm(total=n, desc=desc, unit="user", leave=False, disable=None) as bar:
        for start in range(0, n, batch_size):
            rows = order[start : start + batch_size]  # (B,)
            history, candidates = split.history[rows], split.candidates[rows]  # (B, L), (B, C)
            scores = model.score(history, candidates)  # (B, C)
            if scores.shape != candidates.shape:
                raise ValueError(
                    f"{model.name}.score returned shape {tuple(scores.shape)}, "
                    f"expected {tuple(candidates.shape)}"
                )
            ranks[rows] = ranks_from_scores(scores.detach().float().cpu(), target_pos[rows])
            bar.update(len(rows))
    seconds = time.perf_counter() - t0
    log.info("%s: %d users in %.1f s (%.1f users/s)", desc, n, seconds, n / max(seconds, 1e-9))
    return ranks  # (N,)


def slice_metrics(
    ranks: torch.Tensor,
    slices: dict[str, torch.Tensor],
    metrics: Callable[[torch.Tensor], dict[str, float]] | None = None,
) -> dict[str, dict]:
    """Metrics on each named subset of the examples. ranks: (N,) long; each mask: (N,) bool; metrics: ranks
    -> metrics (default: ``ranking_metrics`` at RANK_KS; the full ranking passes its own).

    A slice with no example reports only its count ({"n": 0}).
    """
    metrics = metrics or (lambda r: ranking_metrics(r, RANK_KS))
    out: dict[str, dict] = {}
    for name, mask in slices.items():
        if mask.shape != ranks.shape:
            raise ValueError(f"slice {name!r}: mask shape {tuple(mask.shape)} != ranks {tuple(ranks.shape)}")
        n = int(mask.sum())
        out[name] = {**metrics(ranks[mask]), "n": n} if n else {"n": 0}
    return out


def evaluate(
    model: Recommender,
    split: Split,
    batch_size: int = 256,
    desc: str = "evaluate",
    slices: dict[str, torch.Tensor] | None = None,
    return_ranks: bool = False,
    order: torch.Tensor | None = None,
) -> dict:
    """Score every candidate set of `split` with `model`; return hr@k, ndcg@k (k in 1,3,5,10), mrr, n and
    eval_time_s (the seconds the scoring took).

    slices: named (N,) bool masks (e.g. `PreparedData.slices(split)`); their metrics go under "slices".
    return_ranks: also return the (N,) long ranks under "ranks" (not copied by `metrics_record`).
    order: the order to score the rows in (`evaluate_ranks`); the results are the same.
    """
    if len(split) == 0:
        raise ValueError("cannot evaluate an empty split")
    t0 = time.perf_counter()
    ranks = evaluate_ranks(model, split, batch_size=batch_size, desc=desc, order=order)
    out = candidate_metrics(ranks, time.perf_counter() - t0, slices)  # the scoring's cost: n / s users/s
    if return_ranks:
        out["ranks"] = ranks  # (N,)
    return out


def candidate_metrics(ranks: torch.Tensor, seconds: float, slices: dict[str, torch.Tensor] | None) -> dict:
    """The candidate protocol's record of (N,) ranks: hr@k, ndcg@k (RANK_KS), mrr, n, eval_time_s and, with
    slices, their metrics under "slices"."""
    out: dict = {**ranking_metrics(ranks, RANK_KS), "n": len(ranks), "eval_time_s": seconds}
    if slices:
        out["slices"] = slice_metrics(ranks, slices)
    return out


def score_metrics(scores: torch.Tensor, split: Split) -> dict:
    """Ranking metrics of already computed scores (N, C) of `split`'s candidates (higher = better), and the
    spread: the mean over examples of the scores' standard deviation across the candidates (how far a score
    can move a ranking)."""
    target_pos = target_positions(split)  # raises without candidates
    if scores.shape != split.candidates.shape:
        raise ValueError(
            f"scores have shape {tuple(scores.shape)}, candidates {tuple(split.candidates.shape)}"
        )
    scores = scores.float()
    ranks = ranks_from_scores(scores, target_pos)
    return {**ranking_metrics(ranks, RANK_KS), "n": len(split), "spread": float(scores.std(1).mean())}
