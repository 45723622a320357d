"""`amfrec quickstart`: the whole pipeline on ml-100k, sized for a 2-core CPU (the README's main job).

Obtains ml-100k (or reads --data), prepares the split and fixed candidates, trains Popularity and SASRec,
builds the id/text(/image) features, trains AMFRec with `configs/quickstart.yaml` on a training subset, tests
every model on the same test candidates and returns the comparison table.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from amfrec.runs.experiment import run_experiment

log = logging.getLogger(__name__)

# The item_token head scores a user's 20 candidates in one backbone pass (~0.1 s on 2 CPU cores), so the
# quickstart tests every model on all test users (None = no limit).
EVAL_LIMIT: int | None = None


def quickstart(data: Path | None, out: Path, seed: int = 1, limit: int | None = EVAL_LIMIT) -> str:
    """Run Popularity, SASRec and AMFRec on one seed under `out`; return the table and where things are."""
    t0 = time.perf_counter()
    posters = data is not None and (data / "posters").is_dir()
    modalities = ["id", "text", "image"] if posters else ["id", "text"]
    if not posters:
        log.info("no posters folder: AMFRec uses the id and text modalities")
    table = run_experiment(
        models=["popularity", "sasrec", "amfrec"],
        data=data,
        features=None,
        config="quickstart",
        seeds=[seed],
        out=out,
        overrides={"model.modalities": modalities},
        limit=limit,
        modalities=modalities,
    )
    runs = out / f"seed{seed}"
    return "\n".join(
        [
            table,
            "",
            f"Run directories (config.yaml, metrics.json, valid_metrics.json): {runs}/<model>",
            f"Evaluate again:   amfrec evaluate --run {runs}/amfrec --split test",
            f"Gate weights:     amfrec recommend --run {runs}/amfrec --history 50,172,181",
            f"Total time: {(time.perf_counter() - t0) / 60:.1f} min",
        ]
    )
