"""`amfrec data import`: a shop's tables (CSV, Parquet or JSON Lines, by extension) -> the folder `data
prepare` reads: RecBole atomic files, the dataset card `dataset.yaml` and `posters/<item_id>.<ext>`.

Interactions: user, item, time (numbers, or ISO dates / date-times, read as seconds since 1970), an optional
rating. Items (optional; without them an item's title is its id): the id, a title and any other text
columns; images from a folder named by item id, or from a column of file paths (relative to the items file).
Every check names the file, the row and the column; the output folder is written under a temporary name and
renamed, so it is whole or absent.
"""

from __future__ import annotations

import csv
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from amfrec.data.card import DatasetCard, write_card
from amfrec.errors import AmfrecError
from amfrec.io import atomic_dir

log = logging.getLogger(__name__)
READERS = {".csv": "CSV", ".parquet": "Parquet", ".jsonl": "JSON Lines", ".json": "JSON Lines"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
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
    if not path.is_file():
        raise AmfrecError(f"{path}: no such file")
    try:
        if kind == "CSV":
            return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(strings_can_be_null=False,
                                  column_types=_all_text(path)))  # fmt: skip
        if kind == "Parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path)
        import pyarrow.json as pajson

        return pajson.read_json(path)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise AmfrecError(f"{path}: not a valid {kind} file ({first})") from None


def _all_text(path: Path) -> dict[str, pa.DataType]:
    """Every header column of a CSV as text (ids stay as written: "007" is not 7)."""
    with path.open(encoding="utf-8", errors="replace", newline="") as f:
        header = next(csv.reader(f), [])
    return dict.fromkeys(header, pa.string())


def _column(table: pa.Table, name: str, path: Path) -> pa.ChunkedArray:
    if name not in table.column_names:
        raise AmfrecError(f"{path}: no column {name!r} (columns: {', '.join(table.column_names)})")
    return table[name]


def _first(mask: pa.ChunkedArray | pa.Array) -> int:
    """The first row where a boolean column is true."""
    return int(pc.index(mask, True).as_py())


def _where(path: Path, row: int) -> str:
    """ "FILE:row N" (1-based data row; a CSV's line is N + 1, after its header)."""
    return f"{path}:row {row + 1}" + (f" (line {row + 2})" if path.suffix.lower() == ".csv" else "")


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
        values = _parse_text(pc.cast(col, pa.string()), name, path, dates)
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
        is_date = [_is_date(v) for v in values]
        row = next((r for r, v in enumerate(values) if not is_date[r] and not _is_number(v)), None)
        if row is not None:
            raise AmfrecError(f"{_where(path, row)}: column {name!r}: cannot read {values[row]!r} as a "
                              "number or an ISO date") from None  # fmt: skip
        if all(is_date):
            raise AmfrecError(
                f"{path}: column {name!r} mixes dates and date-times; use one of them"
            ) from None
        row = is_date.index(False)
        raise AmfrecError(f"{_where(path, row)}: column {name!r}: {values[row]!r} is a number where "
                          "other rows hold dates") from None  # fmt: skip


def _seconds(col: pa.Array) -> pa.Array:
    """ISO date-times ("2020-01-31T10:00:00Z", "2020-01-31 10:00") or dates ("2020-01-31") -> float64
    seconds since 1970 (UTC); pa.ArrowInvalid when a value is neither."""
    try:
        stamps = pc.cast(col, pa.timestamp("s", tz="UTC"))
    except pa.ArrowInvalid:
        stamps = pc.cast(pc.cast(col, pa.date32()), pa.timestamp("s", tz="UTC"))
    return pc.cast(pc.cast(stamps, pa.int64()), pa.float64())


def _is_date(value: object) -> bool:
    try:
        _seconds(pa.array([value], pa.string()))
    except pa.ArrowInvalid:
        return False
    return True


def _is_number(value: object) -> bool:
    try:
        float(str(value))
    except ValueError:
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
    stem = name or Path(out).name
    with atomic_dir(out) as tmp:
        _write_atomic(tmp / f"{stem}.inter", header, inter_cols)
        _write_atomic(tmp / f"{stem}.item", item_header, item_cols)
        write_card(tmp, card or DatasetCard())
        n_images = _copy_images(tmp / "posters", item_cols[0].to_pylist(), images, paths)
    counts = {"interactions": inter.num_rows, "users": len(pc.unique(user)), "items": len(item_cols[0]),
              "images": n_images}  # fmt: skip
    log.info("imported %s into %s", counts, out)
    return counts


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
            if file and not paths[item_id].is_file():
                raise AmfrecError(
                    f"{_where(path, row)}: column {cols.image!r}: no image file {paths[item_id]}"
                )
    return header, columns, paths


def _copy_images(
    posters: Path, item_ids: list[str], folder: Path | None, paths: dict[str, Path] | None
) -> int:
    """Copy each item's image to posters/<item_id><ext> (from a folder named by item id, or from the image
    column's paths); returns how many items have one."""
    found: dict[str, Path] = {}
    if folder is not None:
        if not Path(folder).is_dir():
            raise AmfrecError(f"--images: {folder} is not a folder")
        by_name = {p.name: p for p in Path(folder).iterdir()}
        for item_id in item_ids:
            hit = next((by_name[item_id + s] for s in IMAGE_SUFFIXES if item_id + s in by_name), None)
            if hit is not None:
                found[item_id] = hit
    for item_id, src in (paths or {}).items():
        found[item_id] = src
    if found:
        posters.mkdir()
    for item_id, src in found.items():
        suffix = src.suffix.lower() if src.suffix.lower() in IMAGE_SUFFIXES else ".jpg"
        shutil.copyfile(src, posters / f"{item_id}{suffix}")
    return len(found)
