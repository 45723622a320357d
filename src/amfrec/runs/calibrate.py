"""Two score terms added at inference, chosen on validation after training (``amfrec calibrate``).

- ``model.content_similarity`` w: w x content_knn's cosine (``model/similarity.py``) added to every item's
  score. It ranks an item by how much its text and image resemble what the user just had, the same way for
  new and warm items, which the trained content term does not (new items hardly surface in full ranking).
- ``model.new_item_offset``: added to the score of every item without a trained id. With
  ``new_item_control`` such an item (a new item, or one added live) is scored by the control's query and
  scale, which nothing in training compares with the warm items' scores: the catalogue softmax has no class
  for an item that was never a target.

The whole catalogue is scored once for the first ``n`` validation users; w is chosen among
``SIMILARITY_GRID`` x (score spread / cosine spread), then the offset among ``OFFSET_GRID`` x the score
spread with w in place. A value is eligible only when it costs no slice: on none of ``GUARDED_SLICES`` is its
full-ranking ndcg@10 or its hr@1 among the 1 + 19 candidates clearly below the value 0's (the paired
difference's 95% interval below 0). Among the eligible values the best full-ranking ndcg@10 is kept only when
its paired gain over 0 has a 95% interval above 0 (``clear_best``). So a term that wins on average by trading
one group of users away (the similarity term's cost to warm targets among 1 + 19, the offset that buries new
items to lift the rest) is refused, or taken at a smaller value that costs no one. The test split is never
read.
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
from amfrec.model.similarity import similarity_scores
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

log = logging.getLogger(__name__)

# Offsets tried, in units of the standard deviation of the validation users' catalogue scores.
OFFSET_GRID = (-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0)
# Similarity weights tried, in units of (score std / cosine std): 1 = the two terms equally spread.
SIMILARITY_GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
# The slices (`PreparedData.slices`) a chosen value must not cost: the groups a recommender is judged on.
GUARDED_SLICES = ("cold", "warm", "new")


@dataclass
class Validation:
    """What a calibration is judged on: N validation rows' catalogue scores with neither inference term
    (N, n_items) float32, their content cosines (N, n_items), targets (N,) long, seen items (N, n_items + 1)
    bool (excluded from the ranking), candidate sets (N, C) long | None (the 1 + 19 protocol) and slices
    (name -> (N,) bool)."""

    scores: torch.Tensor
    cosines: torch.Tensor
    target: torch.Tensor
    seen: torch.Tensor
    candidates: torch.Tensor | None = None
    slices: dict[str, np.ndarray] | None = None


@torch.no_grad()
def catalogue_scores(model: AMFRecModel, data: PreparedData, n: int | None) -> Validation:
    """The first n validation rows' ``Validation``: scores over the catalogue with neither inference term,
    content cosines (``similarity_scores``), targets, seen items, candidate sets and slices."""
    part = data.valid.head(n)
    catalogue = torch.arange(1, data.n_items + 1).unsqueeze(0)  # (1, n_items)
    order = prompt_order(model, part)  # (N,) as `amfrec evaluate --protocol full` batches its rows
    kept = model.new_item_offset, model.content_similarity
    model.new_item_offset, model.content_similarity = 0.0, 0.0
    try:
        scores, cosines = [], []
        batches = range(0, len(part), EVAL_BATCH_ITEM_TOKEN)
        for start in tqdm(batches, desc="calibrate", leave=False, disable=None):
            history = part.history[order[start : start + EVAL_BATCH_ITEM_TOKEN]]  # (B, L)
            cands = catalogue.expand(len(history), -1)  # (B, n_items)
            scores.append(model.score(history, cands).float().cpu())  # (B, n_items)
            cosines.append(similarity_scores(model.item_encoder, history, None).float().cpu())
    finally:
        model.new_item_offset, model.content_similarity = kept
    back = torch.argsort(order)  # (N,) split order again
    rows, items = data.seen_items("valid")
    seen = seen_mask(rows, items, torch.arange(len(part)), data.n_items)  # (N, n_items + 1)
    slices = {name: mask.numpy() for name, mask in data.slices(part).items()}
    scores, cosines = torch.cat(scores)[back], torch.cat(cosines)[back]
    return Validation(scores, cosines, part.target, seen, part.candidates, slices)


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
    spread, cos_spread = float(v.scores[torch.isfinite(v.scores)].std()), float(v.cosines.std())
    unit = spread / cos_spread if cos_spread > 0 else 0.0
    per_user = {k * unit: judged(v.scores + k * unit * v.cosines, v) for k in SIMILARITY_GRID if unit > 0}
    per_user = per_user or {0.0: judged(v.scores, v)}
    best, refused = guarded_best(per_user, v.slices)
    return best, {w: float(m["ndcg@10"].mean()) for w, m in per_user.items()}, refused


def choose_offset(
    v: Validation, fresh: torch.Tensor, weight: float = 0.0
) -> tuple[float, dict[float, tuple[float, float]], dict[float, list[str]]]:
    """The offset for the `fresh` items ((n_items,) bool over items 1..n_items), with `weight` x cosines in
    the scores (``guarded_best``). Returns (offset, {offset: (ndcg@10, recall@10 of the rows whose target is
    fresh, NaN without such rows)}, {refused offset: the slices it costs}): the second shows what lifting new
    items buys them against what it costs everyone."""
    scores = v.scores + weight * v.cosines if weight else v.scores  # (N, n_items)
    spread = float(scores[torch.isfinite(scores)].std())
    new_rows = fresh[v.target - 1].numpy()  # (N,) the rows whose target is a new item
    per_user, found = {}, {}
    for k in OFFSET_GRID:
        shifted = scores + k * spread * fresh.float()  # (N, n_items)
        per_user[k * spread] = judged(shifted, v)
        hits = per_user[k * spread]["ndcg@10"] > 0  # (N,) rank <= 10: recall@10 of one target
        new_recall = float(np.mean(hits[new_rows])) if new_rows.any() else float("nan")
        found[k * spread] = (float(per_user[k * spread]["ndcg@10"].mean()), new_recall)
    best, refused = guarded_best(per_user, v.slices)
    return best, found, refused


def calibrate(model: AMFRecModel, data: PreparedData, n: int | None) -> dict[str, float]:
    """Choose and set ``model.content_similarity`` and, when some item has no trained id (with
    ``new_item_control``), ``model.new_item_offset`` on the first n validation users (None = all); returns
    what was chosen (field name -> value)."""
    v = catalogue_scores(model, data, n)
    weight, found, refused = choose_similarity(v)
    log.info("content similarity on %d validation users (full ndcg@10): %s -> %.3f", len(v.target),
             ", ".join(f"{w:.3f}: {m:.4f}" for w, m in found.items()), weight)  # fmt: skip
    _log_refused("content similarity", refused)
    model.content_similarity = weight
    chosen = {"content_similarity": weight}
    fresh = model.fresh_items()  # (n_items + 1,) bool | None
    if fresh is None or not bool(fresh[1:].any()):
        log.info("new-item offset: no item without a trained id, nothing to calibrate")
        return chosen
    best, found_offsets, refused = choose_offset(v, fresh[1:].cpu(), weight)
    log.info("new-item offset on %d validation users (full ndcg@10, new targets' recall@10): %s -> %+.3f",
             len(v.target), ", ".join(f"{o:+.3f}: {m:.4f} {r:.4f}" for o, (m, r) in found_offsets.items()),
             best)  # fmt: skip
    _log_refused("new-item offset", refused)
    model.new_item_offset = chosen["new_item_offset"] = best
    return chosen


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
