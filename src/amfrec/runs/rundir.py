"""Run directories: RUN/config.yaml (resolved), RUN/metrics.json (test), RUN/valid_metrics.json, and the
per-example ranks RUN/test_ranks.json, RUN/valid_ranks.json (`amfrec.runs.ranks`).

Every file is written atomically (temporary file + rename). To make a whole run directory appear
at once, write into `amfrec.io.atomic_dir(out)` and call `write_run` on the temporary directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from amfrec.errors import AmfrecError
from amfrec.io import read_yaml_mapping, write_json, write_text
from amfrec.metrics import RANK_KS
from amfrec.runs.ranks import ranks_path, write_ranks

METRIC_KEYS: tuple[str, ...] = (
    *(f"hr@{k}" for k in RANK_KS),
    *(f"ndcg@{k}" for k in RANK_KS),
    "mrr",
    "n",
)
GEN_METRIC_KEYS: tuple[str, ...] = ("gen_hr@1", "valid_ratio")
PACKAGED_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# configs/tuned/<data set>/: the baselines' settings chosen on that data set's validation (`amfrec tune`), and
# `inter.sha256`, the sha256 of the interactions file they were tuned on: a prepared folder made from that
# very file (its manifest's `inputs`) trains a baseline with them unless a config is named.
TUNED_CONFIGS = PACKAGED_CONFIGS / "tuned"
TUNED_DATA_FILE = "inter.sha256"


def metrics_record(
    metrics: Mapping[str, Any], split: str, seed: int, model: str, wall_time_s: float
) -> dict[str, Any]:
    """The flat metrics-file record: METRIC_KEYS (+ GEN_METRIC_KEYS when present), split, seed, model,
    wall_time_s (+ slices, and eval_time_s, the scoring's seconds, when present). Raises ValueError when a
    ranking metric is missing."""
    missing = [k for k in METRIC_KEYS if k not in metrics]
    if missing:
        raise ValueError(f"metrics lack {missing}")
    rec: dict[str, Any] = {k: float(metrics[k]) for k in METRIC_KEYS if k != "n"}
    rec["n"] = int(metrics["n"])
    rec.update({k: float(metrics[k]) for k in GEN_METRIC_KEYS if k in metrics})
    if "slices" in metrics:  # {name: {metric: value, "n": count}}, e.g. the cold-start slice
        rec["slices"] = {name: dict(m) for name, m in metrics["slices"].items()}
    rec.update(split=str(split), seed=int(seed), model=str(model), wall_time_s=round(float(wall_time_s), 3))
    if "eval_time_s" in metrics:  # the scoring alone (evaluate): n / eval_time_s users/s
        rec["eval_time_s"] = round(float(metrics["eval_time_s"]), 3)
    return rec


def to_plain(obj: Any) -> Any:
    """Dataclasses, enums, paths, tuples -> plain YAML/JSON-safe values (recursively)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_plain(dataclasses.asdict(obj))
    if isinstance(obj, enum.Enum):
        return to_plain(obj.value)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_plain(v) for v in obj]
    return obj


def write_yaml(path: str | Path, obj: Any) -> None:
    """Write `obj` (made plain by `to_plain`) as block-style YAML, atomically."""
    write_text(path, yaml.safe_dump(to_plain(obj), sort_keys=False, default_flow_style=False))


def write_run(
    out: str | Path,
    config: Mapping[str, Any],
    test_metrics: Mapping[str, Any],
    valid_metrics: Mapping[str, Any],
    files: Mapping[str, Callable[[Path], None]] | None = None,
    ranks: Mapping[str, dict] | None = None,
) -> Path:
    """Write RUN/config.yaml, RUN/metrics.json (test) and RUN/valid_metrics.json into `out`.

    `ranks` maps a split ("test", "valid") to its ranks record (`amfrec.runs.ranks.ranks_record`), written
    to RUN/<split>_ranks.json.

    The metrics must already be flat records (see `metrics_record`). `files` maps a name inside
    the run directory to a writer `fn(path)`; each writer gets a temporary path beside the final
    one, which is renamed into place once the writer returns (a file or a directory).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, rec in (("metrics.json", test_metrics), ("valid_metrics.json", valid_metrics)):
        missing = [k for k in (*METRIC_KEYS, "split", "seed", "model", "wall_time_s") if k not in rec]
        if missing:
            raise ValueError(f"{name}: record lacks {missing} (build it with metrics_record)")
    for name, writer in (files or {}).items():
        final = out / name
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        try:
            writer(tmp)
            if final.is_dir():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            if tmp.is_dir():
                shutil.rmtree(tmp)
            elif tmp.exists():
                tmp.unlink()
    for split, record in (ranks or {}).items():
        write_ranks(ranks_path(out, split), record)
    write_yaml(out / "config.yaml", config)
    write_json(out / "valid_metrics.json", dict(valid_metrics))
    write_json(out / "metrics.json", dict(test_metrics))
    return out


@contextlib.contextmanager
def run_log(directory: str | Path) -> Iterator[None]:
    """While the block runs, the package's INFO log also goes to DIRECTORY/train.log (appended)."""
    pkg_log = logging.getLogger("amfrec")
    Path(directory).mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(Path(directory) / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    old_level = pkg_log.level
    pkg_log.addHandler(handler)
    if pkg_log.getEffectiveLevel() > logging.INFO:
        pkg_log.setLevel(logging.INFO)
    try:
        yield
    finally:
        pkg_log.removeHandler(handler)
        handler.close()
        pkg_log.setLevel(old_level)


def run_info(run: str | Path) -> dict[str, Any]:
    """RUN/config.yaml's "run" section: {"model": "amfrec" | a baseline, "seed", "data", ...}.

    Every run folder states its model as `model.name` and `run.model`; baseline folders written before
    (model: "sasrec", data: {path}) are read too. Anything else raises AmfrecError naming the file.
    """
    cfg = load_run_config(run)
    info = cfg.get("run")
    if isinstance(info, Mapping) and isinstance(info.get("model"), str):
        return dict(info)
    if isinstance(cfg.get("model"), str) and isinstance(cfg.get("data"), Mapping):  # baseline format 0
        return {"model": cfg["model"], "seed": cfg.get("seed"), "data": cfg["data"].get("path")}
    raise AmfrecError(f"{Path(run) / 'config.yaml'}: unknown run format (no run.model)")


def load_run_config(run: str | Path) -> dict[str, Any]:
    """Read RUN/config.yaml; a missing or malformed file raises AmfrecError naming it."""
    path = Path(run) / "config.yaml"
    if not path.is_file():
        raise AmfrecError(f"{path}: file not found (not a run directory?)")
    return read_yaml_mapping(path)


def resolve_config(config: str | Path | None, default: str = "amfrec") -> Path:
    """A YAML path, or the name of a packaged config ("amfrec", "quickstart", "sasrec"); None = `default`."""
    config = default if config is None else str(config)
    path = Path(config)
    if path.is_file():
        return path
    packaged = PACKAGED_CONFIGS / f"{path.stem}.yaml"
    if path.suffix in ("", ".yaml") and packaged.is_file() and not path.parent.parts[:-1]:
        return packaged
    names = sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml"))
    raise AmfrecError(f"{config}: config file not found (packaged configs: {', '.join(names)})")


def tuned_config(model: str, inputs: Mapping[str, Any] | None) -> Path | None:
    """configs/tuned/<data set>/<model>.yaml of the data set whose `inter.sha256` is the sha256 of the
    interactions file a prepared folder was made from (`inputs`: its manifest's record of its source files);
    None when no folder was tuned on that file or it holds no config of `model`."""
    sha = ((inputs or {}).get("inter") or {}).get("sha256")
    if not sha or not TUNED_CONFIGS.is_dir():
        return None
    for folder in sorted(TUNED_CONFIGS.iterdir()):
        mark, path = folder / TUNED_DATA_FILE, folder / f"{model}.yaml"
        if path.is_file() and mark.is_file() and mark.read_text(encoding="utf-8").split()[:1] == [sha]:
            return path
    return None
