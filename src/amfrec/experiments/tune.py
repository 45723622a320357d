"""`amfrec tune`: a staged search of a baseline's settings on validation (never on test).

Each stage is a small grid (`max_len=10,50,200`, or `hidden=64,128 dropout=0.2,0.5`); a stage's trials
carry the best settings of the stages before it (a coordinate search: the history length first, then the
size). Every trial is one `amfrec train` run folder under OUT/<settings>, reused when it is there; a trial
whose resolved config equals an earlier trial's reads that trial's run instead of training again. The best
trial of a stage has the highest validation `metric`. The table shows every trial's validation hr@1 and
ndcg@10 with the paired per-user difference to its stage's best (95% bootstrap interval), so a reader sees
which choices the validation users could tell apart. The best settings are written to OUT/best.yaml: the
packaged config with them applied, a file `amfrec train --config OUT/best.yaml` reads.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from amfrec.baselines import BASELINES, CONTENT_BASELINES
from amfrec.errors import AmfrecError
from amfrec.io import read_json, write_text
from amfrec.reports.compare import markdown_table
from amfrec.runs.ranks import load_run_ranks

log = logging.getLogger(__name__)

BEST_FILE = "best.yaml"


@dataclass(frozen=True)
class Trial:
    """One trained setting: its stage, the settings it differs from the packaged config in, its run folder
    and its validation metrics record."""

    stage: int
    settings: dict[str, Any]
    run: Path
    valid: dict


def parse_stage(text: str) -> dict[str, list[Any]]:
    """`"hidden=64,128 dropout=0.2,0.5"` -> {"hidden": [64, 128], "dropout": [0.2, 0.5]} (values as YAML)."""
    grid: dict[str, list[Any]] = {}
    for part in text.split():
        key, sep, values = part.partition("=")
        if not sep or not key or not values:
            raise AmfrecError(f"--stage {text!r}: expected KEY=V1,V2,... items separated by spaces")
        if key in grid:
            raise AmfrecError(f"--stage {text!r}: {key!r} given twice")
        grid[key] = [yaml.safe_load(v) for v in values.split(",") if v != ""]
        if not grid[key]:
            raise AmfrecError(f"--stage {text!r}: no value for {key!r}")
    if not grid:
        raise AmfrecError("--stage: empty")
    return grid


def trial_name(settings: Mapping[str, Any]) -> str:
    """The run folder of a setting: `dropout0.5_hidden128_max_len50` (keys sorted)."""
    return "_".join(f"{k}{v}" for k, v in sorted(settings.items())) or "default"


def _valid_values(run: Path, metric: str) -> np.ndarray:
    from amfrec.stats import per_example

    rec, _ = load_run_ranks(run, "valid")
    return per_example(np.asarray(rec["ranks"]), metric)  # (N,)


def run_search(
    model: str,
    data: Path,
    seed: int,
    out: Path,
    stages: Sequence[Mapping[str, Sequence[Any]]],
    features: Path | None = None,
    metric: str = "ndcg@10",
) -> list[Trial]:
    """Train every trial of every stage (reusing finished run folders); return the trials in order."""
    from amfrec.runs.baseline_run import baseline_settings, train_baseline

    if model not in BASELINES:
        raise AmfrecError(f"amfrec tune: {model!r} is not a baseline; choose one of {list(BASELINES)}")
    if model in CONTENT_BASELINES and features is None:
        raise AmfrecError(f"--features is required to tune {model}")
    best: dict[str, Any] = {}
    trials: list[Trial] = []
    runs: dict[str, Path] = {}  # the resolved config of every trial so far -> its run folder
    for k, grid in enumerate(stages, start=1):
        stage = []
        for combo in itertools.product(*grid.values()):
            settings = {**best, **dict(zip(grid, combo, strict=True))}
            resolved = yaml.safe_dump(baseline_settings(model, None, settings), sort_keys=True)
            run = runs.setdefault(resolved, out / trial_name(settings))  # a setting seen before: its run
            if not (run / "valid_metrics.json").is_file():
                log.info("tune %s stage %d: %s", model, k, settings)
                train_baseline(model, data, seed, run, settings, features=features)
            stage.append(Trial(k, settings, run, read_json(run / "valid_metrics.json")))
        best = max(stage, key=lambda t: t.valid[metric]).settings  # the first of equals
        trials += stage
    return trials


def search_table(trials: list[Trial], metric: str = "ndcg@10", n_resamples: int = 2000) -> str:
    """Markdown: every trial's validation hr@1 and `metric`, and its paired difference in `metric` to the
    best trial of its stage (the best row is marked)."""
    from amfrec.stats import paired_test

    rows = []
    for stage in sorted({t.stage for t in trials}):
        group = [t for t in trials if t.stage == stage]
        best = max(group, key=lambda t: t.valid[metric])
        ref = _valid_values(best.run, metric)
        for t in group:
            if t is best:
                diff = "best"
            else:
                r = paired_test(_valid_values(t.run, metric), ref, metric, n_resamples=n_resamples)
                diff = f"{r.diff:+.4f} [{r.ci_lo:+.4f}, {r.ci_hi:+.4f}]"
            settings = " ".join(f"{k}={v}" for k, v in t.settings.items())
            rows.append([str(stage), settings, f"{t.valid['hr@1']:.4f}", f"{t.valid[metric]:.4f}", diff,
                         f"{t.valid.get('wall_time_s', 0):.0f}"])  # fmt: skip
    header = ("stage", "settings", "valid hr@1", f"valid {metric}", f"{metric} − stage best (95% CI)", "s")
    return markdown_table(header, rows)


def write_best(model: str, trials: list[Trial], out: Path, metric: str = "ndcg@10") -> Path:
    """OUT/best.yaml: the packaged config of `model` with the last stage's best settings applied."""
    from amfrec.runs.baseline_run import baseline_settings

    last = max(t.stage for t in trials)
    best = max((t for t in trials if t.stage == last), key=lambda t: t.valid[metric])
    settings = baseline_settings(model, None, best.settings)
    score = f"{best.valid[metric]:.4f}"
    head = f"# {model} tuned by `amfrec tune`: validation {metric} {score} (trial {best.run.name})\n"
    path = out / BEST_FILE
    write_text(path, head + yaml.safe_dump(settings, sort_keys=False))
    return path
