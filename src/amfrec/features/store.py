"""Feature directory: per-modality matrices + presence masks, validation, .npy import, cache keys.

Layout (docs/ARCHITECTURE.md): `F/manifest.json`, `F/<name>.npy` float32 (n_items + 1, d) with row 0 = padding
(zeros), `F/<name>.mask.npy` bool (n_items + 1,). Absent rows are zeros and mask False.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from numpy.lib.format import open_memmap

import amfrec
from amfrec.errors import AmfrecError
from amfrec.io import atomic_path, read_json, read_text, write_json

if TYPE_CHECKING:
    from amfrec.data.dataset import PreparedData

log = logging.getLogger(__name__)

FORMAT = "amfrec-features/1"
# Bump when the way a modality is computed changes (preprocessing, pooling, text rendering): new cache keys.
CODE_VERSION = "1"


@dataclass
class Modality:
    """One modality. values: (n_items + 1, d) float32, row 0 = padding; present: (n_items + 1,) bool."""

    name: str
    values: torch.Tensor  # (n_items + 1, d)
    present: torch.Tensor  # (n_items + 1,)

    @property
    def dim(self) -> int:
        return int(self.values.shape[1])


# ---------------------------------------------------------------------------------------------- hashing
def sha256_json(obj: object) -> str:
    """Hex sha256 of a canonical JSON rendering of `obj`."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def cache_key(encoder_info: dict, input_sha256: str) -> str:
    """The cache key of one modality: encoder identity + input content + code version."""
    return sha256_json(
        {
            "encoder": encoder_info,
            "input": input_sha256,
            "code": CODE_VERSION,
            "amfrec": amfrec.__version__,
        }
    )


# ---------------------------------------------------------------------------------------------- manifest
def read_manifest(F: str | Path) -> dict:
    """Read and check `F/manifest.json` (AmfrecError naming the file if missing or not a feature manifest)."""
    path = Path(F) / "manifest.json"
    manifest = read_json(path)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise AmfrecError(f"{path}: not a feature manifest (expected format {FORMAT!r})")
    if not isinstance(manifest.get("modalities"), dict):
        raise AmfrecError(f"{path}: field 'modalities' missing or not an object")
    return manifest


def write_manifest(F: str | Path, data_path: str | Path, items_sha256: str, modalities: dict) -> dict:
    """Write `F/manifest.json` atomically and return it."""
    manifest = {
        "format": FORMAT,
        "amfrec_version": amfrec.__version__,
        "data": {"path": str(data_path), "items_sha256": items_sha256},
        "modalities": modalities,
    }
    write_json(Path(F) / "manifest.json", manifest)
    return manifest


# ---------------------------------------------------------------------------------------------- load
def _load_array(path: Path) -> np.ndarray:
    if not path.is_file():
        raise AmfrecError(f"{path}: feature file not found")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise AmfrecError(f"{path}: not a readable .npy file ({e})") from None
    if not isinstance(arr, np.ndarray):  # an .npz archive (np.load's other answer)
        raise AmfrecError(f"{path}: an .npz archive, expected one .npy array")
    return arr


def check_values(path: Path, arr: np.ndarray, n_rows: int, dim: int | None) -> None:
    """Validate a (n_rows, dim) float matrix; AmfrecError naming `path` on the first problem."""
    if arr.ndim != 2:
        raise AmfrecError(f"{path}: expected a 2-D matrix, got shape {tuple(arr.shape)}")
    if arr.shape[0] != n_rows:
        raise AmfrecError(f"{path}: {arr.shape[0]} rows, expected {n_rows} (n_items + 1, row 0 = padding)")
    if dim is not None and arr.shape[1] != dim:
        raise AmfrecError(f"{path}: dimension {arr.shape[1]}, expected {dim}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise AmfrecError(f"{path}: dtype {arr.dtype}, expected float")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise AmfrecError(f"{path}: {len(rows)} row(s) contain NaN or inf (first: row {int(rows[0])})")


def load_features(F: str | Path, n_items: int, names: list[str] | None = None) -> dict[str, Modality]:
    """Load and validate modalities from a feature directory.

    Returns {name: Modality(values (n_items + 1, d) float32, present (n_items + 1,) bool)}. Every problem (row
    count, dimension vs manifest, non-finite values, mask shape/dtype) raises AmfrecError naming the file.
    """
    F = Path(F)
    manifest = read_manifest(F)
    available = manifest["modalities"]
    names = list(available) if names is None else names
    out: dict[str, Modality] = {}
    for name in names:
        if name not in available:
            raise AmfrecError(
                f"{F / 'manifest.json'}: no modality {name!r} (available: {', '.join(sorted(available))})"
            )
        entry = available[name]
        vpath = F / entry.get("file", f"{name}.npy")
        mpath = F / entry.get("mask", f"{name}.mask.npy")
        values = _load_array(vpath)
        check_values(vpath, values, n_items + 1, int(entry["dim"]))
        mask = _load_array(mpath)
        if mask.shape != (n_items + 1,):
            raise AmfrecError(f"{mpath}: mask shape {tuple(mask.shape)}, expected ({n_items + 1},)")
        if mask.dtype != np.bool_:
            raise AmfrecError(f"{mpath}: mask dtype {mask.dtype}, expected bool")
        if mask[0]:
            raise AmfrecError(f"{mpath}: row 0 is padding and must be absent (False)")
        out[name] = Modality(
            name=name,
            values=torch.from_numpy(np.array(values, dtype=np.float32)),
            present=torch.from_numpy(np.array(mask, dtype=np.bool_)),
        )
    return out


# ---------------------------------------------------------------------------------------------- write
def write_modality(
    F: str | Path,
    name: str,
    values: np.ndarray | Iterable[tuple[np.ndarray, np.ndarray]],
    present: np.ndarray,
    encoder_info: dict,
    input_sha256: str,
    dim: int | None = None,
) -> dict:
    """Write `F/<name>.npy` and `F/<name>.mask.npy`; return the modality's manifest entry.

    values: either a full array (n_items + 1, d), or an iterable of `(rows, batch)` pairs — `rows` (b,) int
    row indices, `batch` (b, d) — streamed into a memory-mapped temporary .npy (so the matrix never has to fit
    in memory) that is renamed into place at the end. With an iterable, `dim` must be given.
    present: (n_items + 1,) bool, read only after the batches are consumed (a generator may fill it in as it
    goes); absent rows (and row 0) are written as zeros.
    """
    F = Path(F)
    F.mkdir(parents=True, exist_ok=True)
    n_rows = len(present)
    if isinstance(values, np.ndarray):
        if values.ndim != 2 or values.shape[0] != n_rows:
            raise ValueError(f"{name}: values shape {values.shape}, expected ({n_rows}, d)")
        dim = int(values.shape[1])
        batches: Iterable[tuple[np.ndarray, np.ndarray]] = [(np.arange(n_rows), values)]
    else:
        if dim is None:
            raise ValueError(f"{name}: dim is required when values is an iterable of batches")
        batches = values
    vpath, mpath = F / f"{name}.npy", F / f"{name}.mask.npy"
    with atomic_path(vpath) as tmp:
        mm = open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n_rows, dim))  # zero-filled
        for rows, batch in batches:
            batch = np.asarray(batch, dtype=np.float32)  # (b, d)
            if batch.shape != (len(rows), dim):
                raise ValueError(f"{name}: batch shape {batch.shape}, expected ({len(rows)}, {dim})")
            if not np.isfinite(batch).all():
                raise AmfrecError(f"{name}: the encoder produced NaN or inf values")
            mm[rows] = batch
        present = np.asarray(present, dtype=np.bool_).copy()  # read after the batches (see docstring)
        present[0] = False
        mm[~present] = 0.0
        mm.flush()
        del mm
    with atomic_path(mpath) as tmp:
        np.save(tmp, present, allow_pickle=False)
    return {
        "encoder": encoder_info,
        "dim": dim,
        "present": int(present.sum()),
        "input_sha256": input_sha256,
        "cache_key": cache_key(encoder_info, input_sha256),
        "file": vpath.name,
        "mask": mpath.name,
    }


# ---------------------------------------------------------------------------------------------- import
def read_ids(ids: str | Path | list | np.ndarray) -> list[str]:
    """Item ids of an imported matrix, as strings.

    Accepted: a Python list/array; a `.npy` file holding a 1-D array (ints or strings); a `.json` file holding
    a list; any other file is read as text, one id per line (blank lines ignored).
    """
    if isinstance(ids, (list, tuple, np.ndarray)):
        return [str(x) for x in ids]
    path = Path(ids)
    if not path.is_file():
        raise AmfrecError(f"{path}: id file not found")
    if path.suffix == ".npy":
        arr = _load_array(path)
        if arr.ndim != 1:
            raise AmfrecError(f"{path}: expected a 1-D array of item ids, got shape {tuple(arr.shape)}")
        return [str(x) for x in arr.tolist()]
    if path.suffix == ".json":
        obj = read_json(path)
        if not isinstance(obj, list):
            raise AmfrecError(f"{path}: expected a JSON list of item ids")
        return [str(x) for x in obj]
    return [line.strip() for line in read_text(path).splitlines() if line.strip()]


def import_npy(
    matrix_path: str | Path,
    ids: str | Path | list | np.ndarray,
    data: PreparedData,
    dim: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Import a precomputed matrix (MMRec style): row r belongs to item id `ids[r]`.

    Returns values (n_items + 1, d) float32 in D's item order (row 0 and items not in the import = zeros) and
    present (n_items + 1,) bool. Checks: 2-D, rows == len(ids), ids unique and known to D, `dim` if given,
    finite values — AmfrecError naming the file otherwise.
    """
    matrix_path = Path(matrix_path)
    mat = _load_array(matrix_path)
    id_list = read_ids(ids)
    src = ids if isinstance(ids, (str, Path)) else matrix_path
    if mat.ndim != 2:
        raise AmfrecError(f"{matrix_path}: expected a 2-D matrix, got shape {tuple(mat.shape)}")
    if mat.shape[0] != len(id_list):
        raise AmfrecError(f"{matrix_path}: {mat.shape[0]} rows but {len(id_list)} item ids in {src}")
    check_values(matrix_path, mat, len(id_list), dim)
    index = data.index
    rows = np.empty(len(id_list), dtype=np.int64)
    for r, item_id in enumerate(id_list):
        k = index.get(item_id)
        if k is None:
            raise AmfrecError(f"{src}: unknown item id {item_id!r} (entry {r})")
        rows[r] = k
    if len(np.unique(rows)) != len(rows):
        raise AmfrecError(f"{src}: duplicate item ids")
    values = np.zeros((data.n_items + 1, mat.shape[1]), dtype=np.float32)
    values[rows] = mat
    present = np.zeros(data.n_items + 1, dtype=np.bool_)
    present[rows] = True
    log.info("imported %s: %d of %d items, %d-d", matrix_path, len(rows), data.n_items, mat.shape[1])
    return values, present
