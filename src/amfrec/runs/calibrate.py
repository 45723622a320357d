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
spread with w in place, each by the best full-ranking ndcg@10, kept only when its paired gain over 0 has a 95%
interval above 0 (``clear_best``). The test split is never read.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from amfrec.data.dataset import PreparedData
from amfrec.evaluate_full import full_ranks_from_scores, seen_mask
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
SIMILARITY_GRID = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0)


@torch.no_grad()
def catalogue_scores(model: AMFRecModel, data: PreparedData, n: int | None) -> tuple[torch.Tensor, ...]:
    """The first n validation rows' scores over the catalogue with neither inference term, (N, n_items)
    float32, their content cosines (``similarity_scores``, (N, n_items)), their targets (N,) long and their
    seen items (N, n_items + 1) bool (excluded from the ranking)."""
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
    scores, cosines = torch.cat(scores)[back], torch.cat(cosines)[back]
    return scores, cosines, part.target, seen


def clear_best(per_user: dict[float, np.ndarray]) -> float:
    """The value whose (N,) per-user ndcg@10 has the best mean (ties: nearest 0), kept only when its paired
    gain over the value 0 has a 95% bootstrap interval above 0; else 0: a gain within the noise of the
    validation users is no reason to move the scores."""
    best = max(per_user, key=lambda v: (per_user[v].mean(), -abs(v)))
    if best != 0.0 and paired_bootstrap_ci(per_user[best] - per_user[0.0])[0] <= 0.0:
        return 0.0
    return best


def choose_similarity(
    scores: torch.Tensor, cosines: torch.Tensor, target: torch.Tensor, seen: torch.Tensor
) -> tuple[float, dict[float, float]]:
    """The weight w of `cosines` (N, n_items) added to `scores` (N, n_items) by the ndcg@10 of the targets
    among the unseen catalogue (``clear_best``). Returns (w, {w: ndcg@10}); w = 0 when the cosines are
    constant."""
    spread, cos_spread = float(scores[torch.isfinite(scores)].std()), float(cosines.std())
    unit = spread / cos_spread if cos_spread > 0 else 0.0
    per_user = {}
    for k in SIMILARITY_GRID if unit > 0 else (0.0,):
        ranks = full_ranks_from_scores(scores + k * unit * cosines, target, seen).numpy()  # (N,)
        per_user[k * unit] = per_example(ranks, "ndcg@10")
    return clear_best(per_user), {w: float(v.mean()) for w, v in per_user.items()}


def choose_offset(
    scores: torch.Tensor, target: torch.Tensor, seen: torch.Tensor, fresh: torch.Tensor
) -> tuple[float, dict[float, tuple[float, float]]]:
    """The offset for the `fresh` items ((n_items,) bool over items 1..n_items) by the ndcg@10 of the targets
    among the unseen catalogue (``clear_best``); scores (N, n_items). Returns (offset, {offset: (ndcg@10,
    recall@10 of the rows whose target is fresh, NaN without such rows)}): the second shows what lifting new
    items buys them against what it costs everyone."""
    spread = float(scores[torch.isfinite(scores)].std())
    new_rows = fresh[target - 1].numpy()  # (N,) the rows whose target is a new item
    per_user, found = {}, {}
    for k in OFFSET_GRID:
        ranks = full_ranks_from_scores(scores + k * spread * fresh.float(), target, seen).numpy()  # (N,)
        new_recall = float(np.mean(ranks[new_rows] <= 10)) if new_rows.any() else float("nan")
        per_user[k * spread] = per_example(ranks, "ndcg@10")
        found[k * spread] = (float(per_user[k * spread].mean()), new_recall)
    return clear_best(per_user), found


def calibrate(model: AMFRecModel, data: PreparedData, n: int | None) -> dict[str, float]:
    """Choose and set ``model.content_similarity`` and, when some item has no trained id (with
    ``new_item_control``), ``model.new_item_offset`` on the first n validation users (None = all); returns
    what was chosen (field name -> value)."""
    scores, cosines, target, seen = catalogue_scores(model, data, n)
    weight, found = choose_similarity(scores, cosines, target, seen)
    log.info("content similarity on %d validation users (full ndcg@10): %s -> %.3f", len(target),
             ", ".join(f"{w:.3f}: {v:.4f}" for w, v in found.items()), weight)  # fmt: skip
    model.content_similarity = weight
    chosen = {"content_similarity": weight}
    fresh = model.fresh_items()  # (n_items + 1,) bool | None
    if fresh is None or not bool(fresh[1:].any()):
        log.info("new-item offset: no item without a trained id, nothing to calibrate")
        return chosen
    best, found_offsets = choose_offset(scores + weight * cosines, target, seen, fresh[1:].cpu())
    log.info("new-item offset on %d validation users (full ndcg@10, new targets' recall@10): %s -> %+.3f",
             len(target), ", ".join(f"{off:+.3f}: {v:.4f} {r:.4f}" for off, (v, r) in found_offsets.items()),
             best)  # fmt: skip
    model.new_item_offset = chosen["new_item_offset"] = best
    return chosen


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
