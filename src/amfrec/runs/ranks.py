"""Per-example ranks files, and paired comparisons of two models over them (`amfrec compare`, the report).

A run writes RUN/test_ranks.json and RUN/valid_ranks.json beside its metrics (the main evaluation);
`amfrec evaluate` writes RUN/<split>_<protocol>_ranks.json beside <split>_<protocol>_metrics.json. Format
"amfrec-ranks/1" (docs/ARCHITECTURE.md): {"format", "split", "seed", "model", "n_candidates", "users": [N],
"targets": [N item ids], "ranks": [N ints, 1 = best], "slices": {name: [row indices in the slice]}}.

Two runs are paired by (seed, user): both files must hold the same seed, users and targets, in the same
order. Over several seeds a user is one cluster (every seed scores the same users): the statistics are
`amfrec.stats.clustered_test` (cluster bootstrap, per-seed tests, verdict).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from amfrec.data.dataset import PreparedData, Split
from amfrec.errors import AmfrecError
from amfrec.io import read_json, read_yaml_mapping, write_text
from amfrec.stats import ClusteredResult, clustered_test, per_example

RANKS_FORMAT = "amfrec-ranks/1"
ALL = "all"  # the slice of every row
# AMFRec's score terms set after training (`amfrec calibrate`): a ranks file records the values it was
# scored with, so a comparison never reads ranks that the run's config.yaml no longer describes.
INFERENCE_TERMS = ("content_similarity", "new_item_offset", "new_item_order")


def ranks_record(
    ranks: torch.Tensor,
    part: Split,
    slices: dict[str, torch.Tensor],
    data: PreparedData,
    split: str,
    seed: int,
    model: str,
    n_candidates: int | None = None,
    terms: dict[str, float] | None = None,
) -> dict:
    """The ranks file's record for the (N,) long `ranks` of the examples of `part` (a split of `data`);
    `slices` are the named (N,) bool masks the metrics were taken on (`data.slices(part)`), kept as row
    indices. n_candidates: what a rank is out of (default: the width of `part.candidates`; a full ranking
    gives the catalogue size). terms: AMFRec's ``INFERENCE_TERMS`` as scored (``inference_terms``)."""
    if n_candidates is None:
        if part.candidates is None:
            raise ValueError("n_candidates is needed for a split without candidate sets")
        n_candidates = int(part.candidates.shape[1])
    if ranks.shape != (len(part),):
        raise ValueError(f"ranks of shape {tuple(ranks.shape)} for a split of {len(part)} examples")
    return {
        "format": RANKS_FORMAT,
        "split": str(split),
        "seed": int(seed),
        "model": str(model),
        "n_candidates": int(n_candidates),
        "users": list(part.users),
        "targets": [data.items[i].item_id for i in part.target.tolist()],
        "ranks": [int(r) for r in ranks.tolist()],
        "slices": {name: torch.nonzero(mask).flatten().tolist() for name, mask in slices.items()},
        **({"terms": terms} if terms is not None else {}),
    }


def inference_terms(model) -> dict[str, float]:
    """An AMFRec model's ``INFERENCE_TERMS`` as it scores now (name -> value)."""
    return {name: float(getattr(model, name)) for name in INFERENCE_TERMS}


def check_terms(record: dict, path: Path, run: Path) -> None:
    """Raise AmfrecError when a ranks record was scored with other ``INFERENCE_TERMS`` than the run's
    config.yaml holds now (`amfrec calibrate` changed the run after the ranks were written)."""
    now = (read_yaml_mapping(Path(run) / "config.yaml").get("model") or {}) if record.get("terms") else {}
    for name, value in (record.get("terms") or {}).items():
        if isinstance(now.get(name), int | float) and abs(float(now[name]) - float(value)) > 1e-9:
            raise AmfrecError(
                f"{path}: scored with model.{name} = {float(value):+.4f}, but {Path(run) / 'config.yaml'} "
                f"now has {float(now[name]):+.4f} (`amfrec calibrate` changed it); re-run `amfrec evaluate "
                f"--run {run} --protocol full+score` and compare with --protocol score or full"
            )


def write_ranks(path: str | Path, record: dict) -> None:
    """Write a ranks record as compact JSON, atomically."""
    write_text(path, json.dumps(record, separators=(",", ":")) + "\n")


def ranks_path(run: str | Path, split: str = "test", protocol: str | None = None) -> Path:
    """RUN/<split>_ranks.json (the main evaluation), or RUN/<split>_<protocol>_ranks.json (`amfrec evaluate`)
    when `protocol` is given."""
    return Path(run) / (f"{split}_ranks.json" if protocol is None else f"{split}_{protocol}_ranks.json")


def read_ranks(path: str | Path) -> dict:
    """Read and check a ranks file; anything malformed raises AmfrecError naming the file and field."""
    rec = read_json(path)
    if not isinstance(rec, dict) or rec.get("format") != RANKS_FORMAT:
        raise AmfrecError(f"{path}: not a ranks file (format is not {RANKS_FORMAT!r})")
    for key, kind in (("users", list), ("targets", list), ("ranks", list), ("slices", dict)):
        if not isinstance(rec.get(key), kind):
            raise AmfrecError(f"{path}: field {key!r} missing or not a {kind.__name__}")
    for key in ("seed", "n_candidates"):
        if not isinstance(rec.get(key), int):
            raise AmfrecError(f"{path}: field {key!r} missing or not an integer")
    n = len(rec["ranks"])
    if len(rec["users"]) != n or len(rec["targets"]) != n:
        raise AmfrecError(f"{path}: {n} ranks, {len(rec['users'])} users, {len(rec['targets'])} targets")
    if not all(isinstance(r, int) and 1 <= r <= rec["n_candidates"] for r in rec["ranks"]):
        raise AmfrecError(f"{path}: field 'ranks' holds a value outside 1..{rec['n_candidates']}")
    for name, rows in rec["slices"].items():
        if not isinstance(rows, list) or not all(isinstance(i, int) and 0 <= i < n for i in rows):
            raise AmfrecError(f"{path}: slice {name!r} holds a row index outside 0..{n - 1}")
    return rec


def load_run_ranks(run: str | Path, split: str = "test", protocol: str | None = None) -> tuple[dict, Path]:
    """(ranks record, its path) of a run; a run without one raises AmfrecError saying how to write it.
    protocol "score" falls back to the run's own RUN/<split>_ranks.json (its training's evaluation, the same
    1 + 19 candidates) when `amfrec evaluate` never wrote RUN/<split>_score_ranks.json: so a calibrated run,
    evaluated again, compares with a baseline evaluated once by its training."""
    path = ranks_path(run, split, protocol)
    if protocol == "score" and not path.is_file() and ranks_path(run, split).is_file():
        path = ranks_path(run, split)
    if not Path(run).is_dir():
        raise AmfrecError(f"{run}: run folder not found")
    if not path.is_file():
        command = f"`amfrec evaluate --run {run} --split {split} --protocol {protocol or 'score'}`"
        corrupt = (protocol or "").partition("_corrupt-")[2].replace("-", "=", 1)  # image=noise
        if corrupt:
            command = f"`amfrec evaluate --run {run} --split {split} --corrupt {corrupt}`"
        if protocol:
            raise AmfrecError(f"{path}: no ranks file; write it with {command}")
        raise AmfrecError(
            f"{path}: no ranks file (a run from before ranks were kept); re-run {command} and compare with "
            "--protocol score"
        )
    record = read_ranks(path)
    check_terms(record, path, Path(run))
    return record, path


def _first_difference(a: list, b: list) -> str:
    if len(a) != len(b):
        return f"{len(a)} vs {len(b)} rows"
    i = next(i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)
    return f"first at row {i}: {a[i]!r} vs {b[i]!r}"


def check_pair(a: dict, path_a: Path, b: dict, path_b: Path) -> None:
    """Raise AmfrecError unless both ranks files hold the same seed, candidate count, users and targets."""
    for key in ("seed", "n_candidates"):
        if a[key] != b[key]:
            raise AmfrecError(
                f"{path_a} and {path_b}: {key} differs ({a[key]} vs {b[key]}); cannot pair them"
            )
    for key in ("users", "targets"):
        if a[key] != b[key]:
            raise AmfrecError(
                f"{path_a} and {path_b}: the {key} differ ({_first_difference(a[key], b[key])}); "
                "pair runs of the same prepared data, seed and --limit"
            )


def slice_rows(rec: dict, name: str, path: Path) -> np.ndarray:
    """(K,) row indices of slice `name` in a ranks record ("all" = every row)."""
    if name == ALL:
        return np.arange(len(rec["ranks"]))
    if name not in rec["slices"]:
        known = ", ".join([ALL, *rec["slices"]])
        raise AmfrecError(f"{path}: no slice {name!r} (this file has: {known})")
    return np.asarray(rec["slices"][name], dtype=np.int64)


def load_pairs(pairs: Sequence[tuple[Path, Path]], split: str = "test", protocol: str | None = None) -> list:
    """[((record A, path A), (record B, path B)) per pair of run folders], every pair checked."""
    loaded = []
    for run_a, run_b in pairs:
        (a, path_a), (b, path_b) = (
            load_run_ranks(run_a, split, protocol),
            load_run_ranks(run_b, split, protocol),
        )
        check_pair(a, path_a, b, path_b)
        loaded.append(((a, path_a), (b, path_b)))
    if not loaded:
        raise AmfrecError("no pair of runs to compare")
    return loaded


def common_slices(loaded: list) -> list[str]:
    """The slice names present in every file of `loaded` (in the first file's order)."""
    names = list(loaded[0][0][0]["slices"])
    return [n for n in names if all(n in a["slices"] and n in b["slices"] for (a, _), (b, _) in loaded)]


def paired_result(
    loaded: list,
    metric: str = "hr@1",
    slice: str = ALL,
    n_resamples: int = 10000,
    seed: int = 0,
    minus: list | None = None,
) -> ClusteredResult:
    """The paired test of A against B on `metric` over slice `slice`: users resampled with all their seeds
    (one cluster per user id), and each pair of runs (a seed) tested on its own.
    minus: pairs loaded like `loaded` from the same runs' other ranks files (a corrupted evaluation): each
    side's per-user value is then its `loaded` value minus its `minus` value (the cost of the corruption)."""
    values_a, values_b, users, seeds = [], [], [], []
    for k, ((a, path_a), (b, path_b)) in enumerate(loaded):
        rows = slice_rows(a, slice, path_a)  # (K,)
        if not np.array_equal(rows, slice_rows(b, slice, path_b)):
            raise AmfrecError(f"{path_a} and {path_b}: slice {slice!r} holds different rows")
        try:
            va, vb = (per_example(np.asarray(r["ranks"])[rows], metric) for r in (a, b))  # (K,) each
            if minus is not None:
                for (other, path), (rec, own) in zip(minus[k], ((a, path_a), (b, path_b)), strict=True):
                    if other["users"] != rec["users"]:
                        raise AmfrecError(f"{path} and {own}: different users, cannot subtract")
                (ca, _), (cb, _) = minus[k]
                va = va - per_example(np.asarray(ca["ranks"])[rows], metric)
                vb = vb - per_example(np.asarray(cb["ranks"])[rows], metric)
        except ValueError as e:
            raise AmfrecError(f"--metric {metric}: {e}") from None
        values_a.append(va)
        values_b.append(vb)
        users.append(np.asarray(a["users"], dtype=str)[rows])
        seeds.append(np.full(rows.size, a["seed"]))
    va, vb = np.concatenate(values_a), np.concatenate(values_b)  # (sum K,)
    if va.size == 0:
        raise AmfrecError(f"slice {slice!r} is empty in {', '.join(str(p) for (_, p), _ in loaded)}")
    if n_resamples < 1:
        raise AmfrecError(f"--resamples must be >= 1, got {n_resamples}")
    run_seeds = [a["seed"] for (a, _), _ in loaded]
    if len(set(run_seeds)) < len(run_seeds):
        raise AmfrecError(f"seeds {run_seeds}: two pairs of runs share a seed; give one pair per seed")
    return clustered_test(
        va,
        vb,
        np.concatenate(users),
        np.concatenate(seeds),
        metric,
        slice,
        n_resamples=n_resamples,
        seed=seed,
    )
