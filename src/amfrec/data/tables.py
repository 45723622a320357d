"""Reading a shop's tables (CSV, Parquet or JSON Lines, by extension) with pyarrow, and locating a row of
one for error messages: every problem is one line naming the file, and the row, line and column where it is
in one (used by `amfrec data import` and `amfrec items`)."""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from amfrec.errors import AmfrecError

READERS = {".csv": "CSV", ".parquet": "Parquet", ".jsonl": "JSON Lines", ".json": "JSON Lines"}


def read_table(path: Path) -> pa.Table:
    """A CSV / Parquet / JSON Lines file by its extension; every column of a CSV read as text."""
    path = Path(path)
    kind = READERS.get(path.suffix.lower())
    if kind is None:
        raise AmfrecError(f"{path}: unknown extension {path.suffix!r} (expected {', '.join(READERS)})")
    if path.is_dir():
        raise AmfrecError(f"{path}: a folder, not a file")
    if not path.is_file():
        raise AmfrecError(f"{path}: no such file")
    try:
        table = _read(path, kind)
    except (pa.ArrowException, OSError, UnicodeDecodeError, csv.Error) as e:
        found = {"CSV": _csv_problem, "JSON Lines": _jsonl_problem}.get(kind, lambda _: None)(path)
        raise AmfrecError(found or f"{path}: not a valid {kind} file ({one_line(str(e))})") from None
    names = table.column_names
    twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if twice is not None:
        raise AmfrecError(f"{path}: column {twice!r} appears twice in the header")
    return table


def _read(path: Path, kind: str) -> pa.Table:
    if kind == "CSV":
        return pacsv.read_csv(path, parse_options=pacsv.ParseOptions(newlines_in_values=True),
                              convert_options=pacsv.ConvertOptions(strings_can_be_null=False,
                                                                   column_types=_all_text(path)))  # fmt: skip
    if kind == "Parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path)
    import pyarrow.json as pajson

    return pajson.read_json(path)


def _all_text(path: Path) -> dict[str, pa.DataType]:
    """Every header column of a CSV as text (ids stay as written: "007" is not 7)."""
    with path.open(encoding="utf-8-sig", newline="") as f:
        header = next(csv.reader(f), [])
    return dict.fromkeys(header, pa.string())


def one_line(text: str, limit: int = 200) -> str:
    """The first line of a message, control characters escaped, at most `limit` characters."""
    first = text.strip().split("\n")[0] or "unreadable"
    first = "".join(c if c.isprintable() else repr(c)[1:-1] for c in first)
    return first if len(first) <= limit else first[:limit] + "..."


def _csv_problem(path: Path) -> str | None:
    """Why Arrow could not read a CSV, as "FILE:row N (line M): ..." (None: not found here). Reads the bytes
    as latin-1 (one character per byte) to find the first field that is not UTF-8 or the first row whose
    field count differs from the header's."""
    raw = path.read_bytes()
    if not raw.strip():
        return f"{path}: empty file (expected a header line)"
    reader = csv.reader(io.StringIO(raw.removeprefix(codecs.BOM_UTF8).decode("latin-1"), newline=""))
    header: list[str] | None = None
    row, start = 0, 1  # data row (0-based), first line of the record
    try:
        for record in reader:
            if record:
                where = f"{path}:line {start}" if header is None else f"{path}:row {row + 1} (line {start})"
                for c, field in enumerate(record):
                    try:
                        field.encode("latin-1").decode("utf-8")
                    except UnicodeDecodeError as e:
                        what = "the header" if header is None else f"column {_name(header, c)!r}"
                        return (f"{where}: {what} is not UTF-8 text (byte 0x{e.object[e.start]:02x}); "
                                "save the file as UTF-8")  # fmt: skip
                if header is None:
                    header = record
                elif len(record) != len(header):
                    return f"{where}: {len(record)} fields where the header has {len(header)}"
                else:
                    row += 1
            start = reader.line_num + 1
    except csv.Error as e:
        return f"{path}:line {reader.line_num}: {one_line(str(e))}"
    return None


def _name(header: list[str], c: int) -> str:
    return header[c] if c < len(header) else f"#{c + 1}"


def _jsonl_problem(path: Path) -> str | None:
    """Why Arrow could not read a JSON Lines file, as "FILE:row N (line M): ..." (None: not found here): a
    line that is not UTF-8, not JSON or not an object, or a column whose kind of value changes."""
    first: dict[str, tuple[str, int]] = {}  # column -> (kind of value, row) where first seen
    row = 0
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                return f"{path}:line {lineno}: not UTF-8 text (byte 0x{e.object[e.start]:02x})"
            if not line.strip():
                continue
            where = f"{path}:row {row + 1} (line {lineno})"
            try:
                value = json.loads(line)
            except ValueError as e:
                msg = f"{e.msg} at character {e.colno}" if isinstance(e, json.JSONDecodeError) else str(e)
                return f"{where}: not valid JSON ({one_line(msg)})"
            if not isinstance(value, dict):
                return f"{where}: {_json_kind(value)}, not an object (JSON Lines: one object per line)"
            for key, v in value.items():
                if v is None:
                    continue
                kind = _json_kind(v)
                was, at = first.setdefault(key, (kind, row))
                if kind != was:
                    return f"{where}: column {key!r}: {kind} where row {at + 1} holds {was}"
            row += 1
    return f"{path}: empty file (expected one JSON object per line)" if row == 0 else None


def _json_kind(value: object) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    return {str: "text", list: "a JSON array", dict: "a JSON object"}.get(type(value), "null")


def column(table: pa.Table, name: str, path: Path) -> pa.ChunkedArray:
    """A column that holds plain values (not lists or objects)."""
    if name not in table.column_names:
        raise AmfrecError(f"{path}: no column {name!r} (columns: {', '.join(table.column_names)})")
    col = table[name]
    if pa.types.is_nested(col.type):
        raise AmfrecError(f"{path}: column {name!r} holds {col.type} values (lists or objects), not plain")
    return col


def first_row(mask: pa.ChunkedArray | pa.Array) -> int:
    """The first row where a boolean column is true."""
    return int(pc.index(mask, True).as_py())


def where(path: Path, row: int) -> str:
    """ "FILE:row N (line M)": the 1-based data row and, in a CSV or JSON Lines file, its first line (blank
    lines and values that hold line breaks counted; read only on this error path)."""
    kind = READERS.get(path.suffix.lower())
    line = _csv_line(path, row) if kind == "CSV" else _jsonl_line(path, row) if kind == "JSON Lines" else None
    return f"{path}:row {row + 1}" + (f" (line {line})" if line is not None else "")


def _csv_line(path: Path, row: int) -> int | None:
    with path.open(encoding="utf-8-sig", errors="replace", newline="") as f:
        reader = csv.reader(f)
        n, start = -1, 1  # data rows seen (-1: the header is next), first line of the record
        with contextlib.suppress(csv.Error):  # e.g. a field over csv.field_size_limit(): no line then
            for record in reader:
                if record:
                    if n == row:
                        return start
                    n += 1
                start = reader.line_num + 1
    return None


def _jsonl_line(path: Path, row: int) -> int | None:
    with path.open("rb") as f:
        nonblank = (lineno for lineno, line in enumerate(f, 1) if line.strip())
        return next((lineno for n, lineno in enumerate(nonblank) if n == row), None)
