"""`amfrec quickstart`: the whole pipeline on ml-100k, sized for a 2-core CPU (the README's main job).

Obtains ml-100k (or reads --data), prepares the split and fixed candidates, trains Popularity, SASRec and the
content-aware SASRec (`sasrec_content`, also the recipe's collaborative net), builds the id/text(/image)
features, trains AMFRec (the recipe: `configs/quickstart.yaml` only shrinks its training budget), tests every
model on the same test candidates and returns the comparison table, each model's cost and the paired
comparison of AMFRec with sasrec_content.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from amfrec.data.protocol import DEFAULT_NEGATIVES
from amfrec.experiments.experiment import RECIPE_FILE, prepare_seed, recipe, run_experiment
from amfrec.io import read_json, write_json
from amfrec.reports.compare import compare
from amfrec.runs.rundir import load_run_config

log = logging.getLogger(__name__)

# The item_token head scores a user's 20 candidates in one backbone pass (~0.1 s on 2 CPU cores), so the
# quickstart tests every model on all test users (None = no limit).
EVAL_LIMIT: int | None = None
# sasrec_content before amfrec: the recipe's user token and collaborative score read that very run.
MODELS = ["popularity", "sasrec", "sasrec_content", "amfrec"]
CONFIG = "quickstart"  # the recipe with a smaller training budget (src/amfrec/configs/quickstart.yaml)


def quickstart(data: Path | None, out: Path, seed: int = 1, limit: int | None = EVAL_LIMIT) -> str:
    """Run MODELS on one seed under `out`; return the tables and where things are."""
    t0 = time.perf_counter()
    posters = data is not None and (data / "posters").is_dir()
    modalities = ["id", "text", "image"] if posters else ["id", "text"]
    if not posters:
        log.info("no posters folder: AMFRec and sasrec_content use the id and text modalities")
    runs, overrides = out / f"seed{seed}", {"model.modalities": modalities}
    train_inputs(data, runs, seed, modalities, limit, overrides)
    table = run_experiment(
        models=MODELS,
        data=data,
        features=None,
        config=CONFIG,
        seeds=[seed],
        out=out,
        overrides=overrides,
        limit=limit,
        modalities=modalities,
    )
    paired = compare(str(runs / "amfrec"), str(runs / "sasrec_content"))
    return "\n".join(
        [
            table,
            "",
            cost_table(runs, MODELS),
            "",
            "AMFRec against sasrec_content, paired per test user:",
            paired,
            "",
            f"Run directories (config.yaml, metrics.json, valid_metrics.json): {runs}/<model>",
            f"Evaluate again:   amfrec evaluate --run {runs}/amfrec --split test",
            f"Gate weights:     amfrec recommend --run {runs}/amfrec --history 50,172,181",
            f"Total time: {(time.perf_counter() - t0) / 60:.1f} min",
        ]
    )


def train_inputs(
    data: Path | None, root: Path, seed: int, modalities: list[str], limit: int | None, overrides: dict
) -> None:
    """What `run_experiment` would train first, sooner: the seed's split, its text/image features, then
    SASRec and sasrec_content at once in two processes (each trains on one thread, as its config says, so 2
    cores train both in the time of one), each with the recipe file by which `run_experiment` reuses it."""
    from amfrec.features.build import build_features
    from amfrec.runs.baseline_run import train_baseline

    prepared, features = root / "data", root / "features"
    prepare_seed(data, prepared, seed, 0.0, DEFAULT_NEGATIVES)
    todo = [name for name in ("sasrec", "sasrec_content") if not (root / name / "metrics.json").exists()]
    if "sasrec_content" in todo:
        build_features(prepared, features, modalities=[m for m in modalities if m != "id"])
    if not todo:
        return
    level = logging.getLogger("amfrec").getEffectiveLevel()
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited torch threads
    with ProcessPoolExecutor(
        len(todo), mp_context=spawn, initializer=_log_to_stderr, initargs=(level,)
    ) as pool:
        jobs = [
            pool.submit(train_baseline, name, prepared, seed, root / name, None, limit=limit,
                        features=features if name == "sasrec_content" else None)
            for name in todo
        ]  # fmt: skip
        for job in jobs:
            job.result()  # a child's error is raised here
    for name in todo:
        write_json(root / name / RECIPE_FILE, recipe(name, CONFIG, overrides, None, limit, modalities))


def _log_to_stderr(level: int) -> None:
    """A child process logs as the command line does."""
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )


def train_seconds(run: Path) -> float:
    """A run's training seconds (its validations during training included): the trainer's own clock in
    config.yaml's train_info, else (a model that only counts, e.g. Popularity) the run's wall time minus
    its valid and test scoring."""
    info = load_run_config(run).get("train_info") or {}
    for key in ("train_time_s", "wall_time_s"):  # sequential baselines / AMFRec's trainer
        if isinstance(info.get(key), int | float):
            return float(info[key])
    test, valid = read_json(run / "metrics.json"), read_json(run / "valid_metrics.json")
    return max(test["wall_time_s"] - test.get("eval_time_s", 0.0) - valid.get("eval_time_s", 0.0), 0.0)


def cost_table(runs: Path, models: list[str]) -> str:
    """Markdown: each model's training seconds and its test scoring speed (users/s; a run written before
    metrics.json recorded eval_time_s shows n/a)."""
    lines = [
        "Cost on this machine",
        "| model | training s | test users | test scoring s | users/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for model in models:
        run = runs / model
        test = read_json(run / "metrics.json")
        seconds = test.get("eval_time_s")
        speed = f"{test['n'] / seconds:,.0f}" if seconds else "n/a"
        scoring = f"{seconds:.1f}" if seconds is not None else "n/a"
        lines.append(f"| {model} | {train_seconds(run):.1f} | {test['n']} | {scoring} | {speed} |")
    lines.append(
        "amfrec's cost adds what it reads: sasrec_content's run (its user token and collaborative score), "
        "sasrec's (the id vectors) and the text/image features."
    )
    return "\n".join(lines)
