"""`amfrec train --model BASELINE` (amfrec.baselines.BASELINES): fit, evaluate valid + test, write the run
directory. The content baselines also read a feature folder (`--features`), recorded as `run.features`."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from amfrec import __version__
from amfrec.baselines import BASELINES, CONTENT_BASELINES
from amfrec.baselines.content import (
    ContentKNN,
    ContentKNNConfig,
    SASRecContent,
    SASRecContentConfig,
    load_content,
)
from amfrec.baselines.popularity import Popularity
from amfrec.baselines.sequential import (
    BERT4Rec,
    BERT4RecConfig,
    GRU4Rec,
    GRU4RecConfig,
    SASRec,
    SASRecConfig,
)
from amfrec.data.dataset import PreparedData
from amfrec.errors import AmfrecError
from amfrec.evaluate import evaluate
from amfrec.io import atomic_dir, read_yaml_mapping
from amfrec.recommender import Recommender
from amfrec.runs.ranks import ranks_path, ranks_record, write_ranks
from amfrec.runs.rundir import (
    PACKAGED_CONFIGS,
    metrics_record,
    resolve_config,
    run_info,
    run_log,
    tuned_config,
    write_run,
)

log = logging.getLogger(__name__)


def _popularity(overrides: Mapping[str, Any]) -> tuple[Recommender, dict]:
    if overrides:
        raise AmfrecError(f"popularity has no hyperparameters, got overrides {sorted(overrides)}")
    return Popularity(), {}


def _coerce(name: str, key: str, value: Any, default: Any) -> Any:
    """A command-line string ("3e-3", "64", "null") -> the field's type, judged by its default value."""
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            raise AmfrecError(f"{name} config field '{key}': cannot parse {value!r}") from None
    if isinstance(default, float) and isinstance(value, int | str) and not isinstance(value, bool):
        try:
            value = float(value)  # YAML reads "3e-3" as a string and "1" as an int
        except ValueError:
            raise AmfrecError(f"{name} config field '{key}': expected a number, got {value!r}") from None
    return value


def _sequential(model_cls: type, config_cls: type) -> Callable[[Mapping[str, Any]], tuple[Recommender, dict]]:
    def build(overrides: Mapping[str, Any]) -> tuple[Recommender, dict]:
        fields = {f.name: f.default for f in dataclasses.fields(config_cls)}
        unknown = sorted(set(overrides) - set(fields))
        if unknown:
            raise AmfrecError(f"{model_cls.name}: unknown config field(s) {unknown}; known: {sorted(fields)}")
        values = {k: _coerce(model_cls.name, k, v, fields[k]) for k, v in overrides.items()}
        try:
            config = config_cls(**values)
        except ValueError as e:
            raise AmfrecError(f"{model_cls.name} config: {e}") from None
        return model_cls(config), dataclasses.asdict(config)

    return build


BUILDERS: dict[str, Callable[[Mapping[str, Any]], tuple[Recommender, dict]]] = {
    "popularity": _popularity,
    "sasrec": _sequential(SASRec, SASRecConfig),
    "gru4rec": _sequential(GRU4Rec, GRU4RecConfig),
    "bert4rec": _sequential(BERT4Rec, BERT4RecConfig),
    "sasrec_content": _sequential(SASRecContent, SASRecContentConfig),
    "content_knn": _sequential(ContentKNN, ContentKNNConfig),
}


def baseline_config(
    name: str, config: str | Path | None, inputs: Mapping[str, Any] | None = None
) -> Path | None:
    """The YAML baseline `name` reads: `config` when named; else the one tuned on the interactions file the
    data was prepared from (`inputs`, a prepared manifest's; ``tuned_config``); else the packaged
    `configs/<name>.yaml`; None when there is none (popularity, content_knn)."""
    if config is not None:
        return resolve_config(config, default=name)
    if (tuned := tuned_config(name, inputs)) is not None:
        return tuned
    return PACKAGED_CONFIGS / f"{name}.yaml" if (PACKAGED_CONFIGS / f"{name}.yaml").is_file() else None


def baseline_settings(
    name: str, config: str | Path | None, overrides: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The config fields of baseline `name`: its YAML (`config`, else the packaged one if any) + overrides."""
    path = baseline_config(name, config)
    if path is None:
        return dict(overrides or {})
    log.info("%s config: %s", name, path)
    return {**read_yaml_mapping(path), **dict(overrides or {})}


def ensure_sasrec_run(data_dir: Path, seed: int, run: Path, limit: int | None = None) -> Path:
    """`run` as a trained SASRec run folder (trained now unless it already holds item_embeddings.npy): the
    source of AMFRec's `id` modality and of its collaborative user token."""
    if not (Path(run) / "item_embeddings.npy").is_file():
        log.info("training SASRec (seed %d) into %s for the id modality", seed, run)
        train_baseline("sasrec", data_dir, seed, run, None, limit=limit)
    return Path(run)


def train_baseline(
    name: str,
    data_dir: str | Path,
    seed: int,
    out: str | Path,
    overrides: Mapping[str, Any] | None = None,
    limit: int | None = None,
    config: str | Path | None = None,
    features: str | Path | None = None,
) -> dict:
    """Fit baseline `name` on the prepared data in `data_dir`, evaluate valid and test with the shared
    evaluator, and write the run directory `out` atomically (config.yaml, metrics.json,
    valid_metrics.json, train.log, model weights; SASRec also item_embeddings.npy).

    `config`: a YAML file of config fields (or a packaged name); None = the config tuned on the data set the
    data was prepared from, else the packaged `configs/<name>.yaml`, where there is one (``baseline_config``;
    the run's config.yaml names the file). `overrides` set fields on top; string values (from the command
    line) are parsed as YAML scalars and converted to the field's type. `limit`: evaluate on the first
    `limit` valid/test examples only. `features`: the feature folder of a content baseline (required for
    those, else unused).
    Returns {"test": test record, "valid": valid record, "info": training info, "out": out}.
    """
    if name not in BUILDERS:
        raise AmfrecError(f"unknown baseline {name!r}; choose one of {list(BASELINES)}")
    if name in CONTENT_BASELINES and features is None:
        raise AmfrecError(
            f"--features is required for --model {name} (a feature folder with text/image vectors)"
        )
    t0 = time.perf_counter()
    data_dir, out = Path(data_dir), Path(out)
    data = PreparedData.load(data_dir)
    config_file = baseline_config(name, config, data.manifest.get("inputs"))
    model, model_config = BUILDERS[name](baseline_settings(name, config_file, overrides))
    with atomic_dir(out) as tmp, run_log(tmp):
        log.info("train %s seed %d on %s (%d train windows, %d items), config %s", name, seed, data_dir,
                 len(data.train), data.n_items, config_file)  # fmt: skip
        if name in CONTENT_BASELINES:
            model.use_features(load_content(features, data.n_items, model.config.modalities))  # type: ignore[attr-defined]
        info = model.fit(data, seed)
        valid_part, test_part = data.valid.head(limit), data.test.head(limit)
        valid_slices, test_slices = data.slices(valid_part), data.slices(test_part)
        valid, test = (
            evaluate(model, part, desc=f"{name} {s}", slices=masks, return_ranks=True)
            for s, part, masks in (("valid", valid_part, valid_slices), ("test", test_part, test_slices))
        )
        wall = time.perf_counter() - t0
        valid_rec = metrics_record(valid, "valid", seed, name, wall)
        test_rec = metrics_record(test, "test", seed, name, wall)
        log.info("%s seed %d: test hr@1 %.4f ndcg@10 %.4f", name, seed, test["hr@1"], test["ndcg@10"])
        config = {
            "model": {"name": name, **model_config},
            "run": {
                "model": name,
                "seed": seed,
                "data": str(data_dir.resolve()),
                "data_seed": data.manifest.get("seed"),
                "max_len": data.max_len,
                "n_candidates": data.manifest.get("n_candidates"),
                "inputs": data.manifest.get("inputs"),
                "config_file": None if config_file is None else str(config_file),
                "eval_limit": limit,
                "amfrec_version": __version__,
                **({"features": str(Path(features).resolve())} if name in CONTENT_BASELINES else {}),
            },
            "train_info": {k: v for k, v in info.items() if k != "epochs"},
        }
        ranks = {
            "valid": ranks_record(valid["ranks"], valid_part, valid_slices, data, "valid", seed, name),
            "test": ranks_record(test["ranks"], test_part, test_slices, data, "test", seed, name),
        }
        write_run(tmp, config, test_rec, valid_rec, ranks=ranks)
        model.save(tmp)  # type: ignore[attr-defined]
    return {"test": test_rec, "valid": valid_rec, "info": info, "out": out}


def _with_features(load: Callable[..., Recommender]) -> Callable[[Path, PreparedData], Recommender]:
    """A content baseline's loader: its feature folder is the run's `run.features`."""

    def loader(run: Path, data: PreparedData) -> Recommender:
        features = run_info(run).get("features")
        if not features:
            raise AmfrecError(
                f"{Path(run) / 'config.yaml'}: run.features missing (the content model's features)"
            )
        return load(run, data, Path(features))

    return loader


LOADERS: dict[str, Callable[[Path, PreparedData], Recommender]] = {
    "popularity": Popularity.load,
    "sasrec": SASRec.load,
    "gru4rec": GRU4Rec.load,
    "bert4rec": BERT4Rec.load,
    "sasrec_content": _with_features(SASRecContent.load),
    "content_knn": _with_features(ContentKNN.load),
}


def evaluate_baseline_run(run: str | Path, split: str = "test", limit: int | None = None) -> dict:
    """Reload a baseline run and score its fixed candidates again; writes RUN/<split>_score_metrics.json and
    RUN/<split>_score_ranks.json."""
    from amfrec.io import write_json

    t0 = time.perf_counter()
    run = Path(run)
    info = run_info(run)
    name = info["model"]
    if name not in LOADERS:
        raise AmfrecError(f"{run / 'config.yaml'}: model {name!r} is not a baseline run")
    data = PreparedData.load(info["data"])
    model = LOADERS[name](run, data)
    part = (data.valid if split == "valid" else data.test).head(limit)
    slices = data.slices(part)
    metrics = evaluate(model, part, desc=f"{name} {split}", slices=slices, return_ranks=True)
    rec = metrics_record(metrics, split, int(info["seed"]), name, time.perf_counter() - t0)
    record = ranks_record(metrics["ranks"], part, slices, data, split, rec["seed"], name)
    write_ranks(ranks_path(run, split, "score"), record)
    write_json(run / f"{split}_score_metrics.json", rec)
    return rec
