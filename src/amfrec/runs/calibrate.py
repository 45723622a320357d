"""Two score terms added at inference, chosen on validation after training (``amfrec calibrate``).

- ``model.content_similarity`` w: w x content_knn's cosine (``model/similarity.py``) added to every item's
  score. It ranks an item by how much its text and image resemble what the user just had, the same way for
  new and warm items, which the trained content term does not (new items hardly surface in full ranking).
- ``model.new_item_offset``: added to the score of every item without a trained id (a new item, or one added
  live). Nothing in training compares such an item's score with the warm items': the catalogue softmax has
  no class for an item that was never a target (and with ``new_item_control`` it is scored by the control's
  query and scale).

- ``model.new_item_order``: the items without a trained id keep the places the score gives them as a group,
  and are ordered among themselves by score + this weight x the cosine (``reorder_new_items``): the content
  ranks new items among themselves better than the trained score, and the places held keep warm targets
  where they were.

The whole catalogue is scored once for the first ``n`` validation users; w is chosen among ``SIMILARITY_GRID``
x (score spread / cosine spread), then the order weight among ``ORDER_GRID`` x that unit with w in place, then
the offset among ``OFFSET_GRID`` x the score spread with both in place. A value is eligible only when it costs
no slice: on none of ``GUARDED_SLICES`` is its full-ranking ndcg@10 or its hr@1 among the 1 + 19 candidates
clearly below the value 0's (the paired difference's 95% interval below 0). Among the eligible values the best
full-ranking ndcg@10 is kept only when its paired gain over 0 has a 95% interval above 0 (``clear_best``). So
a term that wins on average by trading one group of users away (the similarity term's cost to warm targets
among 1 + 19, the offset that buries new items to lift the rest) is refused, or taken at a smaller value that
costs no one. The test split is never read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from amfrec.data.dataset import PreparedData
from amfrec.evaluate_full import full_ranks_from_scores, seen_mask
from amfrec.metrics import ranks_from_scores
from amfrec.model.model import AMFRecModel
from amfrec.model.similarity import reorder_new_items, similarity_scores
from amfrec.runs.rundir import write_yaml
from amfrec.runs.scoring import EVAL_BATCH_ITEM_TOKEN, prompt_order
from amfrec.stats import paired_bootstrap_ci, per_example
from amfrec.training.checkpoint import (
    CHECKPOINT_DIR,
    STATE_FILE,
    load_checkpoint,
    load_train_state,
    save_checkpoint,
)
from amfrec.training.distributed import from_env, from_main, gather_rows, rank_share

log = logging.getLogger(__name__)

# Offsets tried, in units of the standard deviation of the validation users' catalogue scores.
OFFSET_GRID = (-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0)
# Similarity weights tried, in units of (score std / cosine std): 1 = the two terms equally spread.
SIMILARITY_GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
# New items' order weights tried, in the same units as the similarity weight.
ORDER_GRID = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)
# The slices (`PreparedData.slices`) a chosen value must not cost: the groups a recommender is judged on.
GUARDED_SLICES = ("cold", "warm", "new")


@dataclass
class Validation:
    """What a calibration is judged on: N validation rows' catalogue scores with neither inference term
    (N, n_items) float32, their content cosines (N, n_items), targets (N,) long, seen items (N, n_items + 1)
    bool (excluded from the ranking), candidate sets (N, C) long | None (the 1 + 19 protocol), slices
    (name -> (N,) bool) and the histories the model read (N, L) long | None."""

    scores: torch.Tensor
    cosines: torch.Tensor
    target: torch.Tensor
    seen: torch.Tensor
    candidates: torch.Tensor | None = None
    slices: dict[str, np.ndarray] | None = None
    history: torch.Tensor | None = None

    @property
    def unit(self) -> float:
        """The similarity weight at which the cosines spread as much as the scores (0: constant cosines)."""
        spread, cos_spread = float(self.scores[torch.isfinite(self.scores)].std()), float(self.cosines.std())
        return spread / cos_spread if cos_spread > 0 else 0.0


@torch.no_grad()
def catalogue_scores(model: AMFRecModel, data: PreparedData, n: int | None) -> Validation:
    """The first n validation rows' ``Validation``: scores over the catalogue with neither inference term,
    content cosines (``similarity_scores``), targets, seen items, candidate sets and slices. Under torchrun
    each rank scores its share of the rows (``rank_share``) and every rank gets them all (``gather_rows``)."""
    part = data.valid.head(n)
    ranks = from_env()
    mine = part.subset(rank_share(ranks, len(part)))
    catalogue = torch.arange(1, data.n_items + 1).unsqueeze(0)  # (1, n_items)
    order = prompt_order(model, mine)  # (N_rank,) as `amfrec evaluate --protocol full` batches its rows
    kept = model.new_item_offset, model.content_similarity, model.new_item_order
    model.new_item_offset, model.content_similarity, model.new_item_order = 0.0, 0.0, 0.0
    try:
        scores, cosines = [], []
        batches = range(0, len(mine), EVAL_BATCH_ITEM_TOKEN)
        for start in tqdm(batches, desc="calibrate", leave=False, disable=None):
            history = mine.history[order[start : start + EVAL_BATCH_ITEM_TOKEN]]  # (B, L)
            cands = catalogue.expand(len(history), -1)  # (B, n_items)
            scores.append(model.score(history, cands).float().cpu())  # (B, n_items)
            cosines.append(similarity_scores(model.item_encoder, history, None).float().cpu())
    finally:
        model.new_item_offset, model.content_similarity, model.new_item_order = kept
    back = torch.argsort(order)  # (N_rank,) this rank's rows in split order again
    empty = torch.empty(0, data.n_items)
    scores, cosines = (torch.cat(t)[back] if t else empty for t in (scores, cosines))  # (N_rank, n_items)
    scores, cosines = gather_rows(ranks, scores, len(part)), gather_rows(ranks, cosines, len(part))  # (N, ..)
    rows, items = data.seen_items("valid")
    seen = seen_mask(rows, items, torch.arange(len(part)), data.n_items)  # (N, n_items + 1)
    slices = {name: mask.numpy() for name, mask in data.slices(part).items()}
    return Validation(scores, cosines, part.target, seen, part.candidates, slices, part.history)


def judged(scores: torch.Tensor, v: Validation) -> dict[str, np.ndarray]:
    """Per validation row (N,): "ndcg@10" of the target in the unseen catalogue and, with candidate sets,
    "hr@1" among them (ties against the model), for scores (N, n_items)."""
    out = {"ndcg@10": per_example(full_ranks_from_scores(scores, v.target, v.seen).numpy(), "ndcg@10")}
    if v.candidates is not None:
        on_candidates = scores.gather(1, v.candidates - 1)  # (N, C)
        target_pos = (v.candidates == v.target.unsqueeze(1)).long().argmax(1)  # (N,)
        out["hr@1"] = per_example(ranks_from_scores(on_candidates, target_pos).numpy(), "hr@1")
    return out


def slice_costs(value: dict[str, np.ndarray], zero: dict[str, np.ndarray], slices: dict | None) -> list[str]:
    """The "slice metric difference" of each of ``GUARDED_SLICES`` x metric where `value`'s per-row metrics
    are clearly below `zero`'s (the paired difference's 95% interval below 0)."""
    costs = []
    for name in GUARDED_SLICES:
        rows = (slices or {}).get(name)
        if rows is None or not rows.any():
            continue
        for metric in value:
            diff = value[metric][rows] - zero[metric][rows]  # (n,)
            if diff.mean() < 0 and paired_bootstrap_ci(diff)[1] < 0:
                costs.append(f"{name} {metric} {diff.mean():+.4f}")
    return costs


def guarded_best(per_user: dict[float, dict[str, np.ndarray]], slices: dict | None) -> tuple[float, dict]:
    """``clear_best`` by ndcg@10 among the values that cost no slice (``slice_costs`` against the value 0,
    which must be a key). Returns (the value, {refused value: its costs})."""
    refused = {v: c for v, m in per_user.items() if v != 0.0 and (c := slice_costs(m, per_user[0.0], slices))}
    eligible = {v: m["ndcg@10"] for v, m in per_user.items() if v not in refused}
    return clear_best(eligible), refused


def clear_best(per_user: dict[float, np.ndarray]) -> float:
    """The value whose (N,) per-user ndcg@10 has the best mean (ties: nearest 0), kept only when its paired
    gain over the value 0 has a 95% bootstrap interval above 0; else 0: a gain within the noise of the
    validation users is no reason to move the scores."""
    best = max(per_user, key=lambda v: (per_user[v].mean(), -abs(v)))
    if best != 0.0 and paired_bootstrap_ci(per_user[best] - per_user[0.0])[0] <= 0.0:
        return 0.0
    return best


def choose_similarity(v: Validation) -> tuple[float, dict[float, float], dict[float, list[str]]]:
    """The weight w of the cosines added to the scores (``guarded_best``). Returns (w, {w: ndcg@10},
    {refused w: the slices it costs}); w = 0 when the cosines are constant."""
    unit = v.unit
    per_user = {k * unit: judged(v.scores + k * unit * v.cosines, v) for k in SIMILARITY_GRID if unit > 0}
    per_user = per_user or {0.0: judged(v.scores, v)}
    best, refused = guarded_best(per_user, v.slices)
    return best, {w: float(m["ndcg@10"].mean()) for w, m in per_user.items()}, refused


def ordered(v: Validation, fresh: torch.Tensor, weight: float, order: float) -> torch.Tensor:
    """(N, n_items) the validation scores with `weight` x cosines and the new items (`fresh`, (n_items,)
    bool) ordered among themselves with `order` (``reorder_new_items``), as the model scores them."""
    scores = v.scores + weight * v.cosines if weight else v.scores
    if not order:
        return scores
    in_history = torch.zeros(v.seen.shape, dtype=torch.bool).scatter_(1, v.history, True)[:, 1:]
    return scores + reorder_new_items(scores, v.cosines, fresh, in_history, order)


def choose_order(
    v: Validation, fresh: torch.Tensor, weight: float = 0.0
) -> tuple[float, dict[float, tuple[float, float]], dict[float, list[str]]]:
    """The new items' order weight (``guarded_best``), with `weight` x cosines in the scores. Returns (the
    weight, {weight: (ndcg@10, recall@10 of the rows whose target is fresh)}, {refused: what it costs})."""
    new_rows, unit = fresh[v.target - 1].numpy(), v.unit  # (N,), a float
    per_user = {k * unit: judged(ordered(v, fresh, weight, k * unit), v) for k in ORDER_GRID if unit > 0}
    per_user = per_user or {0.0: judged(ordered(v, fresh, weight, 0.0), v)}
    found = {o: (float(m["ndcg@10"].mean()), _hit_rate(m, new_rows)) for o, m in per_user.items()}
    best, refused = guarded_best(per_user, v.slices)
    return best, found, refused


def _hit_rate(m: dict[str, np.ndarray], rows: np.ndarray) -> float:
    """recall@10 of the `rows` ((N,) bool) read off their per-row ndcg@10 (> 0 = ranked in the top 10)."""
    return float(np.mean(m["ndcg@10"][rows] > 0)) if rows.any() else float("nan")


def choose_offset(
    v: Validation, fresh: torch.Tensor, weight: float = 0.0, order: float = 0.0
) -> tuple[float, dict[float, tuple[float, float]], dict[float, list[str]]]:
    """The offset for the `fresh` items ((n_items,) bool over items 1..n_items), with `weight` x cosines and
    the new items' `order` in the scores (``ordered``; an offset shifts every new item alike, so it commutes
    with their order) (``guarded_best``). Returns (offset, {offset: (ndcg@10, recall@10 of the rows whose
    target is fresh, NaN without such rows)}, {refused offset: the slices it costs}): the second shows what
    lifting new items buys them against what it costs everyone."""
    scores = ordered(v, fresh, weight, order)  # (N, n_items)
    spread = float(scores[torch.isfinite(scores)].std())
    new_rows = fresh[v.target - 1].numpy()  # (N,) the rows whose target is a new item
    per_user = {k * spread: judged(scores + k * spread * fresh.float(), v) for k in OFFSET_GRID}
    found = {o: (float(m["ndcg@10"].mean()), _hit_rate(m, new_rows)) for o, m in per_user.items()}
    best, refused = guarded_best(per_user, v.slices)
    return best, found, refused


def calibrate(model: AMFRecModel, data: PreparedData, n: int | None) -> dict[str, float]:
    """Choose and set ``model.content_similarity`` and, when some item has no trained id,
    ``model.new_item_order`` and ``model.new_item_offset`` on the first n validation
    users (None = all); returns what was chosen (field name -> value). Under torchrun every rank scores its
    share of the users, rank 0 chooses and every rank sets its choice."""
    v = catalogue_scores(model, data, n)
    ranks = from_env()
    chosen = from_main(ranks, choose_terms(model, v) if ranks.is_main else None)
    for name, value in chosen.items():
        setattr(model, name, value)
    return chosen


def choose_terms(model: AMFRecModel, v: Validation) -> dict[str, float]:
    """The inference terms for `v` (field name -> value), each chosen with the earlier ones in place, and
    what each value gave logged."""
    weight, found, refused = choose_similarity(v)
    log.info("content similarity on %d validation users (full ndcg@10): %s -> %.3f", len(v.target),
             ", ".join(f"{w:.3f}: {m:.4f}" for w, m in found.items()), weight)  # fmt: skip
    _log_refused("content similarity", refused)
    chosen = {"content_similarity": weight}
    fresh = model.fresh_items()  # (n_items + 1,) bool: with or without new_item_control
    if not bool(fresh[1:].any()):
        log.info("new items' order and offset: no item without a trained id, nothing to calibrate")
        return chosen
    fresh = fresh[1:].cpu()
    order, found_orders, refused = choose_order(v, fresh, weight)
    _log_found("new items' order", len(v.target), found_orders, order, refused)
    chosen["new_item_order"] = order
    best, found_offsets, refused = choose_offset(v, fresh, weight, order)
    _log_found("new-item offset", len(v.target), found_offsets, best, refused)
    chosen["new_item_offset"] = best
    return chosen


def _log_found(term: str, n: int, found: dict[float, tuple[float, float]], best: float, refused: dict):
    log.info("%s on %d validation users (full ndcg@10, new targets' recall@10): %s -> %+.3f", term, n,
             ", ".join(f"{o:+.3f}: {m:.4f} {r:.4f}" for o, (m, r) in found.items()), best)  # fmt: skip
    _log_refused(term, refused)


def _log_refused(term: str, refused: dict[float, list[str]]) -> None:
    for value, costs in refused.items():
        log.info("%s %+.3f refused: it costs %s", term, value, "; ".join(costs))


def write_calibration(run: Path, model: AMFRecModel, run_cfg: dict, chosen: dict[str, float]) -> None:
    """Write the model fields `chosen` (``calibrate``'s) into a trained run's checkpoint config and
    config.yaml (each atomically); the run's metrics files are left as they are (re-evaluate to see them)."""
    _, cfg, _ = load_checkpoint(run / CHECKPOINT_DIR)
    for name, value in chosen.items():
        setattr(cfg.model, name, value)
        run_cfg["model"][name] = value
    state = load_train_state(run / CHECKPOINT_DIR) if (run / CHECKPOINT_DIR / STATE_FILE).is_file() else None
    save_checkpoint(model, cfg, run / CHECKPOINT_DIR, state)
    write_yaml(run / "config.yaml", run_cfg)
