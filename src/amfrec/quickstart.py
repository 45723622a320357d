"""`amfrec quickstart`: the whole pipeline on ml-100k, sized for a 2-core CPU (the README's main job).

Obtains ml-100k (or reads --data), prepares the split and fixed candidates, trains Popularity and SASRec,
builds the id/text(/image) features, trains AMFRec with `configs/quickstart.yaml` on a training subset, tests
every model on the same test candidates and returns the comparison table.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from amfrec.experiment import run_experiment

log = logging.getLogger(__name__)


def has_posters(data: Path | None) -> bool:
    return data is not None and (data / "posters").is_dir()


def quickstart(data: Path | None, out: Path, seed: int = 1) -> str:
    """Run Popularity, SASRec and AMFRec on one seed under `out`; return the table and where things are."""
    t0 = time.perf_counter()
    modalities = ["id", "text", "image"] if has_posters(data) else ["id", "text"]
    if "image" not in modalities:
        log.info("no posters folder: AMFRec uses the id and text modalities")
    table = run_experiment(
        models=["popularity", "sasrec", "amfrec"],
        data=data,
        features=None,
        config="quickstart",
        seeds=[seed],
        out=out,
        overrides={"model.modalities": ",".join(modalities)},
        modalities=modalities,
    )
    minutes = (time.perf_counter() - t0) / 60
    return (
        f"{table}\n\nRun directories (config.yaml, metrics.json, valid_metrics.json): {out}/seed{seed}/<model>\n"
        f"Gate weights and rankings: amfrec recommend --run {out}/seed{seed}/amfrec --history <item ids>\n"
        f"Total time: {minutes:.1f} min"
    )
