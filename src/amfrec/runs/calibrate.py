"""New items against warm ones in full ranking: one score offset for the items without a trained id.

With ``new_item_control`` an item that has no trained id (a new item, or one added live) is scored by the
control's query and scale, which nothing in training compares with the warm items' scores: the catalogue
softmax has no class for an item that was never a target. In full ranking such items then sit too low (or
too high) as a group. ``model.new_item_offset`` is added to each of their scores at inference; this module
chooses it on validation after training: the whole catalogue is scored once for the first ``n`` validation
users, and the offset among ``OFFSET_GRID`` x the scores' spread with the best full-ranking ndcg@10 is kept
(ties keep the offset nearest 0). The test split is never read.
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
from amfrec.runs.rundir import write_yaml
from amfrec.stats import per_example
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
BATCH = (
    8  # prompts per backbone pass, each scoring the whole catalogue (as `amfrec evaluate --protocol full`)
)


@torch.no_grad()
def catalogue_scores(model: AMFRecModel, data: PreparedData, n: int | None) -> tuple[torch.Tensor, ...]:
    """The first n validation rows' scores over the catalogue with no offset, (N, n_items) float32, their
    targets (N,) long and their seen items (N, n_items + 1) bool (excluded from the ranking)."""
    part = data.valid.head(n)
    catalogue = torch.arange(1, data.n_items + 1).unsqueeze(0)  # (1, n_items)
    offset, model.new_item_offset = model.new_item_offset, 0.0
    try:
        scores = []
        for start in tqdm(range(0, len(part), BATCH), desc="calibrate new items", leave=False, disable=None):
            stop = min(start + BATCH, len(part))
            cands = catalogue.expand(stop - start, -1)  # (B, n_items)
            scores.append(model.score(part.history[start:stop], cands).float().cpu())  # (B, n_items)
    finally:
        model.new_item_offset = offset
    rows, items = data.seen_items("valid")
    seen = seen_mask(rows, items, 0, len(part), data.n_items)  # (N, n_items + 1)
    return torch.cat(scores), part.target, seen


def choose_offset(
    scores: torch.Tensor, target: torch.Tensor, seen: torch.Tensor, fresh: torch.Tensor
) -> tuple[float, dict[float, tuple[float, float]]]:
    """The offset for the `fresh` items ((n_items,) bool over items 1..n_items) with the best ndcg@10 of
    the targets among the unseen catalogue; scores (N, n_items). Returns (offset, {offset: (ndcg@10, recall@10
    of the rows whose target is fresh, NaN without such rows)}): the second shows what lifting new items buys
    them against what it costs everyone."""
    spread = float(scores[torch.isfinite(scores)].std())
    new_rows = fresh[target - 1].numpy()  # (N,) the rows whose target is a new item
    found = {}
    for k in OFFSET_GRID:
        ranks = full_ranks_from_scores(scores + k * spread * fresh.float(), target, seen).numpy()  # (N,)
        new_recall = float(np.mean(ranks[new_rows] <= 10)) if new_rows.any() else float("nan")
        found[k * spread] = (float(np.mean(per_example(ranks, "ndcg@10"))), new_recall)
    best = max(found, key=lambda off: (found[off][0], -abs(off)))
    return best, found


def calibrate_new_items(model: AMFRecModel, data: PreparedData, n: int | None) -> float | None:
    """Set and return ``model.new_item_offset`` chosen on the first n validation users (None = all); None
    (nothing changed) when the model has no ``new_item_control`` or every item has a trained id."""
    fresh = model.fresh_items()  # (n_items + 1,) bool | None
    if fresh is None or not bool(fresh[1:].any()):
        log.info("new-item offset: no item without a trained id, nothing to calibrate")
        return None
    scores, target, seen = catalogue_scores(model, data, n)
    best, found = choose_offset(scores, target, seen, fresh[1:].cpu())
    log.info("new-item offset on %d validation users (full ndcg@10, new targets' recall@10): %s -> %+.3f",
             len(target), ", ".join(f"{off:+.3f}: {v:.4f} {r:.4f}" for off, (v, r) in found.items()),
             best)  # fmt: skip
    model.new_item_offset = best
    return best


def write_offset(run: Path, model: AMFRecModel, run_cfg: dict, offset: float) -> None:
    """Write `offset` into a trained run's checkpoint config and config.yaml (each atomically), after
    `amfrec calibrate` chose it; the run's metrics files are left as they are (re-evaluate to see them)."""
    _, cfg, _ = load_checkpoint(run / CHECKPOINT_DIR)
    cfg.model.new_item_offset = offset
    state = load_train_state(run / CHECKPOINT_DIR) if (run / CHECKPOINT_DIR / STATE_FILE).is_file() else None
    save_checkpoint(model, cfg, run / CHECKPOINT_DIR, state)
    run_cfg["model"]["new_item_offset"] = offset
    write_yaml(run / "config.yaml", run_cfg)
