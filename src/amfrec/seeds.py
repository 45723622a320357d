"""Reproducible random streams: a torch generator seeded by a tuple of ints (no domain types).

The same keys give the same stream on every machine, so a resumed run replays exactly the draws (subsets,
batches, negatives) of an uninterrupted one.
"""

from __future__ import annotations

import numpy as np
import torch


def generator(*keys: int) -> torch.Generator:
    """A CPU torch.Generator seeded from a tuple of ints (e.g. (seed, epoch, batch)): reproducible streams."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
