"""Reader for RecBole atomic files (`.inter`, `.item`, ...) with validation.

Format: UTF-8 text, tab-separated, one header line of `name:type` fields, one row per line.
Types: `token` (a string), `token_seq` (space-separated strings), `float`, `float_seq`
(space-separated floats).
Every problem is an AmfrecError whose message names `file:line` and the field.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

from amfrec.errors import AmfrecError

log = logging.getLogger(__name__)

FIELD_TYPES = ("token", "token_seq", "float", "float_seq")


@dataclass
class AtomicTable:
    """The parsed columns of one atomic file.

    columns: field name -> one value per data row (token: str, token_seq: list[str], float: float,
    float_seq: list[float]).
    lines: the 1-based line number of each data row in the file (for error messages).
    """

    path: Path
    types: dict[str, str]
    columns: dict[str, list]
    lines: list[int]

    def __len__(self) -> int:
        return len(self.lines)

    def __getitem__(self, field: str) -> list:
        return self.columns[field]

    def __contains__(self, field: str) -> bool:
        return field in self.columns

    def where(self, row: int) -> str:
        """`file:line` of data row `row` (0-based)."""
        return f"{self.path}:{self.lines[row]}"


def _decode(raw: bytes, path: Path, lineno: int, warned: list[bool]) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        if not warned[0]:
            log.warning("%s:%d: not valid UTF-8; reading such lines as latin-1", path, lineno)
            warned[0] = True
        return raw.decode("latin-1")


def _parse_header(line: str, path: Path) -> dict[str, str]:
    types: dict[str, str] = {}
    for col in line.split("\t"):
        name, sep, typ = col.strip().partition(":")
        if not sep or not name:
            raise AmfrecError(f"{path}:1: header field {col!r} is not of the form name:type")
        if typ not in FIELD_TYPES:
            raise AmfrecError(
                f"{path}:1: header field '{name}' has unknown type {typ!r} (one of {FIELD_TYPES})"
            )
        if name in types:
            raise AmfrecError(f"{path}:1: header field '{name}' appears twice")
        types[name] = typ
    return types


def _parse_float(value: str, where: str, field: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise AmfrecError(f"{where}: field '{field}' is not a number: {value!r}") from None
    if not math.isfinite(x):
        raise AmfrecError(f"{where}: field '{field}' is not a finite number: {value!r}")
    return x


def read_atomic(path: str | Path, required: dict[str, str]) -> AtomicTable:
    """Read and validate one RecBole atomic file.

    required: field name -> type ('token', 'token_seq', 'float', 'float_seq'); each must be in the header
    with exactly that type (except that token and token_seq are interchangeable: the value is parsed as the
    required type) and must be non-empty in every row. Other header fields are parsed by their declared type.
    Blank lines are skipped. Raises AmfrecError for a missing file, a bad header, a row with the wrong
    column count, a non-numeric float field, an empty required value, or a file without data rows.
    """
    path = Path(path)
    if not path.is_file():
        raise AmfrecError(f"{path}: file not found")
    for field, typ in required.items():
        if typ not in FIELD_TYPES:
            raise ValueError(f"required type of '{field}' must be one of {FIELD_TYPES}, got {typ!r}")
    with path.open("rb") as f:
        raw_lines = f.read().split(b"\n")
    warned = [False]
    header = _decode(raw_lines[0], path, 1, warned).rstrip("\r") if raw_lines else ""
    if not header.strip():
        raise AmfrecError(
            f"{path}:1: empty file or empty header line (expected tab-separated name:type fields)"
        )
    declared = _parse_header(header, path)
    for field, typ in required.items():
        if field not in declared:
            have = ", ".join(f"{n}:{t}" for n, t in declared.items())
            raise AmfrecError(f"{path}:1: header lacks required field '{field}:{typ}' (header has {have})")
        if declared[field] != typ and {declared[field], typ} != {"token", "token_seq"}:
            raise AmfrecError(f"{path}:1: field '{field}' is declared {declared[field]!r}, expected {typ!r}")
    types = {name: required.get(name, typ) for name, typ in declared.items()}
    names = list(types)
    n_cols = len(names)
    columns: dict[str, list] = {name: [] for name in names}
    cols = [columns[name] for name in names]
    kinds = [types[name] for name in names]
    needed = [name in required for name in names]
    lines: list[int] = []
    for lineno, raw in enumerate(raw_lines[1:], 2):
        line = _decode(raw, path, lineno, warned).rstrip("\r")
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != n_cols:
            raise AmfrecError(
                f"{path}:{lineno}: expected {n_cols} tab-separated columns ({', '.join(names)}), "
                f"found {len(parts)}"
            )
        for name, value, kind, col, need in zip(names, parts, kinds, cols, needed, strict=True):
            if need and not value.strip():
                raise AmfrecError(f"{path}:{lineno}: field '{name}' is empty")
            if kind == "token":
                col.append(value)
            elif kind == "token_seq":
                col.append(value.split())
            elif kind == "float":
                col.append(_parse_float(value, f"{path}:{lineno}", name) if value.strip() else math.nan)
            else:  # float_seq
                col.append([_parse_float(v, f"{path}:{lineno}", name) for v in value.split()])
        lines.append(lineno)
    if not lines:
        raise AmfrecError(f"{path}: no data rows after the header line")
    return AtomicTable(path=path, types=types, columns=columns, lines=lines)
