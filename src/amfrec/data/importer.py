"""`amfrec data import`: a shop's tables (CSV, Parquet or JSON Lines, by extension) -> the folder `data
prepare` reads: RecBole atomic files, the dataset card `dataset.yaml` and `posters/<item_id>.<ext>`.

Interactions: user, item, time (numbers, or ISO dates / date-times, read as seconds since 1970; with a time
zone in every row or in none), an optional rating. Items (optional; without them an item's title is its id;
with them every interaction's item must be one): the id, a title and any other text columns; JPEG or PNG
images from a folder named by item id, or from a column of file paths (relative to the items file).
Every check names the file, the row and the column; the output folder (new, empty or an earlier import) is
written under a temporary name and renamed, so it is whole or absent.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from amfrec.data.card import CARD_FILE, DatasetCard, write_card
from amfrec.data.images import IMAGE_SUFFIXES, image_format
from amfrec.errors import AmfrecError
from amfrec.io import atomic_dir

log = logging.getLogger(__name__)
READERS = {".csv": "CSV", ".parquet": "Parquet", ".jsonl": "JSON Lines", ".json": "JSON Lines"}
_SEPARATORS = r"[\t\r\n,]"  # an id may not hold a field or list separator


@dataclass(frozen=True)
class Columns:
    """Column names of the input tables (the options of `amfrec data import`)."""

    user: str = "user_id"
    item: str = "item_id"
    time: str = "timestamp"
    rating: str | None = None  # None = no ratings
    title: str = "title"
    text: tuple[str, ...] | None = None  # the item text columns besides the title; None = every text column
    image: str | None = None  # a column of image file paths


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
        raise AmfrecError(found or f"{path}: not a valid {kind} file ({_one_line(str(e))})") from None
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


def _one_line(text: str, limit: int = 200) -> str:
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
        return f"{path}:line {reader.line_num}: {_one_line(str(e))}"
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
                return f"{where}: not valid JSON ({_one_line(msg)})"
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


def _column(table: pa.Table, name: str, path: Path) -> pa.ChunkedArray:
    """A column that holds plain values (not lists or objects)."""
    if name not in table.column_names:
        raise AmfrecError(f"{path}: no column {name!r} (columns: {', '.join(table.column_names)})")
    col = table[name]
    if pa.types.is_nested(col.type):
        raise AmfrecError(f"{path}: column {name!r} holds {col.type} values (lists or objects), not plain")
    return col


def _first(mask: pa.ChunkedArray | pa.Array) -> int:
    """The first row where a boolean column is true."""
    return int(pc.index(mask, True).as_py())


def _where(path: Path, row: int) -> str:
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


def _ids(table: pa.Table, name: str, path: Path) -> pa.Array:
    """A column of ids as text, none empty, none with a separator."""
    col = pc.cast(_column(table, name, path), pa.string()).combine_chunks()
    empty = pc.or_(pc.is_null(col), pc.equal(pc.utf8_trim_whitespace(col.fill_null("")), ""))
    if pc.any(empty).as_py():
        raise AmfrecError(f"{_where(path, _first(empty))}: column {name!r} is empty")
    bad = pc.match_substring_regex(col, _SEPARATORS)
    if pc.any(bad).as_py():
        row = _first(bad)
        raise AmfrecError(
            f"{_where(path, row)}: column {name!r}: id {col[row].as_py()!r} holds a tab, newline or comma"
        )
    return col


def _numbers(table: pa.Table, name: str, path: Path, dates: bool) -> pa.Array:
    """A numeric column as float64; with `dates`, ISO dates / date-times too (as seconds since 1970)."""
    col = _column(table, name, path).combine_chunks()
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
        values = pc.cast(col, pa.float64())
    elif dates and pa.types.is_timestamp(col.type):
        values = pc.divide(pc.cast(pc.cast(col, pa.timestamp("us", tz=col.type.tz)), pa.int64()), 1e6)
    else:
        text = pc.utf8_trim_whitespace(pc.cast(col, pa.string()))
        text = pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)  # "" = empty, not a value
        values = _parse_text(text, name, path, dates)
    if values.null_count:
        raise AmfrecError(f"{_where(path, _first(pc.is_null(values)))}: column {name!r} is empty")
    if not pc.all(pc.is_finite(values)).as_py():
        raise AmfrecError(
            f"{_where(path, _first(pc.invert(pc.is_finite(values))))}: column {name!r} is not finite"
        )
    return values


def _parse_text(col: pa.Array, name: str, path: Path, dates: bool) -> pa.Array:
    try:
        return pc.cast(col, pa.float64())
    except pa.ArrowInvalid:
        if not dates:
            row = next(r for r, v in enumerate(col.to_pylist()) if not _is_number(v))
            raise AmfrecError(
                f"{_where(path, row)}: column {name!r}: {col[row].as_py()!r} is not a number"
            ) from None
    try:
        return _seconds(col)
    except pa.ArrowInvalid:  # the error path only: find the row
        values = col.to_pylist()
        forms = [_date_form(v) for v in values]
        row = next((r for r, v in enumerate(values) if forms[r] is None and not _is_number(v)), None)
        if row is not None:
            raise AmfrecError(f"{_where(path, row)}: column {name!r}: cannot read {values[row]!r} as a "
                              "number or an ISO date") from None  # fmt: skip
        if None in forms:
            row = forms.index(None)
            raise AmfrecError(f"{_where(path, row)}: column {name!r}: {values[row]!r} is a number where "
                              "other rows hold dates") from None  # fmt: skip
        dated = [r for r, v in enumerate(values) if v is not None]
        row = next(r for r in dated if forms[r] != forms[dated[0]])
        has = ("has", "lacks")
        raise AmfrecError(f"{_where(path, row)}: column {name!r}: {values[row]!r} {has[forms[row]]} a time "
                          f"zone where row {dated[0] + 1} ({values[dated[0]]!r}) {has[forms[dated[0]]]} one; "
                          "give every time a zone or none") from None  # fmt: skip


_DATE_TYPES = (pa.timestamp("us", tz="UTC"), pa.timestamp("us"))  # with a time zone; without (read as UTC)


def _seconds(col: pa.Array) -> pa.Array:
    """ISO date-times ("2020-01-31T10:00:00Z", "2020-01-31 10:00") or dates ("2020-01-31") -> float64
    seconds since 1970 (UTC); pa.ArrowInvalid unless every value is one of them, all with a time zone or all
    without."""
    for form in range(len(_DATE_TYPES)):
        try:
            return _stamps(col, form)
        except pa.ArrowInvalid:
            continue
    raise pa.ArrowInvalid("not ISO dates")


def _stamps(col: pa.Array, form: int) -> pa.Array:
    micros = pc.cast(pc.cast(col, _DATE_TYPES[form]), pa.int64())
    return pc.divide(pc.cast(micros, pa.float64()), 1e6)


def _date_form(value: object) -> int | None:
    """0: an ISO date-time with a time zone, 1: a date or date-time without one, None: neither."""
    for form in range(len(_DATE_TYPES)):
        try:
            _stamps(pa.array([value], pa.string()), form)
        except pa.ArrowInvalid:
            continue
        return form
    return None


def _is_number(value: object) -> bool:
    """Whether Arrow reads the text as a number (as the whole column is read)."""
    try:
        pc.cast(pa.array([value], pa.string()), pa.float64())
    except pa.ArrowInvalid:
        return False
    return True


def _text(col: pa.ChunkedArray) -> pa.Array:
    """Text for an atomic file: no tabs or line breaks, null = ""."""
    col = pc.cast(col, pa.string()).combine_chunks().fill_null("")
    return pc.utf8_trim_whitespace(pc.replace_substring_regex(col, r"[\t\r\n]+", " "))


def _write_atomic(path: Path, header: list[str], columns: list[pa.Array]) -> None:
    """A RecBole atomic file: the typed header, then tab-separated rows (no quoting: no value holds a tab)."""
    table = pa.table({f"c{i}": c for i, c in enumerate(columns)})
    with path.open("wb") as f:
        f.write(("\t".join(header) + "\n").encode())
        opts = pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
        pacsv.write_csv(table, f, opts)


def import_data(
    interactions: Path,
    out: Path,
    items: Path | None = None,
    images: Path | None = None,
    columns: Columns | None = None,
    card: DatasetCard | None = None,
    name: str | None = None,
) -> dict:
    """Convert the tables into `out` (see the module docstring); returns counts {"interactions", "users",
    "items", "images"}. name: the atomic files' stem (default: the output folder's name)."""
    cols = columns or Columns()
    interactions, out = Path(interactions), Path(out)
    items = Path(items) if items is not None else None
    _check_out(out)
    if items is None and (cols.image is not None or cols.text is not None):
        raise AmfrecError("--image-col and --text-cols name columns of the items table: give --items too")
    if images is not None and not Path(images).is_dir():
        raise AmfrecError(f"{images}: no such folder (--images: a folder of images named by item id)")
    inter = read_table(interactions)
    if inter.num_rows == 0:
        raise AmfrecError(f"{interactions}: no rows")
    user, item = _ids(inter, cols.user, interactions), _ids(inter, cols.item, interactions)
    time = _numbers(inter, cols.time, interactions, dates=True)
    inter_cols, header = [user, item, time], ["user_id:token", "item_id:token", "timestamp:float"]
    if cols.rating is not None:
        inter_cols.append(_numbers(inter, cols.rating, interactions, dates=False))
        header.append("rating:float")
    item_header, item_cols, paths = _items(items, cols, pc.unique(item))
    if items is not None:
        unknown = pc.invert(pc.is_in(item, value_set=item_cols[0]))
        if pc.any(unknown).as_py():
            row = _first(unknown)
            what = f"column {cols.item!r}: item {item[row].as_py()!r}"
            raise AmfrecError(f"{_where(interactions, row)}: {what} is not in {items}")
    found = _find_images(item_cols[0].to_pylist(), images, paths)
    stem = name or out.name
    with atomic_dir(out) as tmp:
        _write_atomic(tmp / f"{stem}.inter", header, inter_cols)
        _write_atomic(tmp / f"{stem}.item", item_header, item_cols)
        write_card(tmp, card or DatasetCard())
        _copy_images(tmp / "posters", found)
    counts = {"interactions": inter.num_rows, "users": len(pc.unique(user)), "items": len(item_cols[0]),
              "images": len(found)}  # fmt: skip
    log.info("imported %s into %s", counts, out)
    return counts


def _check_out(out: Path) -> None:
    """The output folder may be new, empty or an earlier import (replaced whole); anything else is kept."""
    if out.exists() and not out.is_dir():
        raise AmfrecError(f"{out}: a file, not a folder (--out: the folder to write)")
    if out.is_dir() and any(out.iterdir()) and not (out / CARD_FILE).is_file():
        raise AmfrecError(f"{out}: a folder that holds other files, not an earlier import (no {CARD_FILE}); "
                          "--out: give a new or empty folder")  # fmt: skip


def _items(
    path: Path | None, cols: Columns, used: pa.Array
) -> tuple[list[str], list[pa.Array], dict[str, Path] | None]:
    """The item file's header and columns (id, title, text...) and, with an image column, id -> image path."""
    if path is None:  # no catalogue: the id is the title
        return ["item_id:token", "title:token_seq"], [used, used], None
    table = read_table(path)
    if table.num_rows == 0:
        raise AmfrecError(f"{path}: no rows")
    ids = _ids(table, cols.item, path)
    seen: dict[str, int] = {}
    for row, item_id in enumerate(ids.to_pylist()):
        if item_id in seen:
            raise AmfrecError(
                f"{_where(path, row)}: item {item_id!r} given twice (first at row {seen[item_id] + 1})"
            )
        seen[item_id] = row
    title = _text(_column(table, cols.title, path))
    skip = {cols.item, cols.title, cols.image}
    text = list(cols.text) if cols.text is not None else [
        c for c in table.column_names if c not in skip and pa.types.is_string(table[c].type)]  # fmt: skip
    header = ["item_id:token", "title:token_seq", *(f"{c}:token_seq" for c in text)]
    columns = [ids, title, *(_text(_column(table, c, path)) for c in text)]
    paths = None
    if cols.image is not None:
        files = _text(_column(table, cols.image, path)).to_pylist()
        paths = {i: (path.parent / f) for i, f in zip(ids.to_pylist(), files, strict=True) if f}
        for row, (item_id, file) in enumerate(zip(ids.to_pylist(), files, strict=True)):
            if not file:
                continue
            if not paths[item_id].is_file():
                raise AmfrecError(
                    f"{_where(path, row)}: column {cols.image!r}: no image file {paths[item_id]}"
                )
            if image_format(paths[item_id]) is None:
                raise AmfrecError(
                    f"{_where(path, row)}: column {cols.image!r}: {paths[item_id]} is not a JPEG or PNG image"
                )
    return header, columns, paths


def _find_images(item_ids: list[str], folder: Path | None, paths: dict[str, Path] | None) -> dict[str, Path]:
    """item id -> its image (from a folder named by item id, or from the image column's paths, which are
    checked in `_items`); every one a JPEG or PNG."""
    found: dict[str, Path] = {}
    if folder is not None:
        by_name = {p.name: p for p in Path(folder).iterdir()}
        for item_id in item_ids:
            hit = next((by_name[item_id + s] for s in IMAGE_SUFFIXES if item_id + s in by_name), None)
            if hit is not None:
                if not hit.is_file() or image_format(hit) is None:
                    raise AmfrecError(f"{hit}: not a JPEG or PNG image (the picture of item {item_id!r})")
                found[item_id] = hit
    found.update(paths or {})
    return found


def _copy_images(posters: Path, found: dict[str, Path]) -> None:
    """Copy each item's image to posters/<item_id><ext>."""
    if found:
        posters.mkdir()
    for item_id, src in found.items():
        suffix = src.suffix.lower() if src.suffix.lower() in IMAGE_SUFFIXES else ".jpg"
        shutil.copyfile(src, posters / f"{item_id}{suffix}")
