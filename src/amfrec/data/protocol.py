"""The evaluation protocols a prepared directory is built under (recorded in its manifest's "protocol").

- standard: every item may appear in training; validation/test rank the target among 1 + `n_negatives`
  candidates (19 by default; 100 for the 1 + 100 protocol).
- new items (`new_items` = fraction f > 0): round(f * n) of the n items that occur in the interactions
  (round half up), drawn with `numpy.random.default_rng([seed, NEW_ITEMS_STREAM])` (a stream of its own, so
  the candidate sets, drawn from `default_rng(seed)`, are the same for every f), are *new*: they are removed
  from each user's training part before the training windows are cut, so no training window holds one, as
  target or in its history. Validation and test examples keep their real histories and targets.
"""

from __future__ import annotations

import numpy as np

from amfrec.errors import AmfrecError

NEW_ITEMS_STREAM = 1
DEFAULT_NEGATIVES = 19
NEW_ITEMS_FILE = "new_items.json"  # {"fraction": f, "items": [item ids, in index order]} (only when f > 0)


def round_half_up(fraction: float, n: int) -> int:
    """round(fraction * n), halves rounded up (not to even), computed without float error for 2 decimals."""
    return int(np.floor(fraction * n + 0.5 + 1e-9))


def check_new_items_fraction(fraction: float) -> float:
    """The fraction as a float in [0, 1); AmfrecError otherwise."""
    fraction = float(fraction)
    if not 0.0 <= fraction < 1.0:
        raise AmfrecError(f"new_items must be a fraction in [0, 1), got {fraction}")
    return fraction


def draw_new_items(seq_items: np.ndarray, n_items: int, fraction: float, seed: int) -> np.ndarray:
    """(n_items + 1,) bool: True for the new items (index 0, padding, is never new).

    seq_items: (N,) every interaction's item index; only items occurring there are eligible.
    """
    is_new = np.zeros(n_items + 1, dtype=bool)
    eligible = np.unique(seq_items[seq_items > 0])  # (E,) ascending
    n_new = round_half_up(check_new_items_fraction(fraction), len(eligible))
    if n_new:
        rng = np.random.default_rng([seed, NEW_ITEMS_STREAM])
        is_new[rng.choice(eligible, size=n_new, replace=False)] = True
    return is_new


def protocol_of(manifest: dict) -> dict:
    """{"new_items": fraction, "n_negatives": N} of a prepared manifest (older ones: standard protocol)."""
    proto = manifest.get("protocol") or {}
    n_neg = proto.get("n_negatives", int(manifest.get("n_candidates", DEFAULT_NEGATIVES + 1)) - 1)
    return {"new_items": float(proto.get("new_items", 0.0)), "n_negatives": int(n_neg)}
