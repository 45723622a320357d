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

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from amfrec.data.card import CARD_FILE, DatasetCard, write_card
from amfrec.data.images import IMAGE_SUFFIXES, image_format
from amfrec.data.tables import column, first_row, read_table, where
from amfrec.errors import AmfrecError
from amfrec.io import atomic_dir

log = logging.getLogger(__name__)
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


def _ids(table: pa.Table, name: str, path: Path) -> pa.Array:
    """A column of ids as text, none empty, none with a separator."""
    col = pc.cast(column(table, name, path), pa.string()).combine_chunks()
    empty = pc.or_(pc.is_null(col), pc.equal(pc.utf8_trim_whitespace(col.fill_null("")), ""))
    if pc.any(empty).as_py():
        raise AmfrecError(f"{where(path, first_row(empty))}: column {name!r} is empty")
    bad = pc.match_substring_regex(col, _SEPARATORS)
    if pc.any(bad).as_py():
        row = first_row(bad)
        raise AmfrecError(
            f"{where(path, row)}: column {name!r}: id {col[row].as_py()!r} holds a tab, newline or comma"
        )
    return col


def _numbers(table: pa.Table, name: str, path: Path, dates: bool) -> pa.Array:
    """A numeric column as float64; with `dates`, ISO dates / date-times too (as seconds since 1970)."""
    col = column(table, name, path).combine_chunks()
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
        values = pc.cast(col, pa.float64())
    elif dates and pa.types.is_timestamp(col.type):
        values = pc.divide(pc.cast(pc.cast(col, pa.timestamp("us", tz=col.type.tz)), pa.int64()), 1e6)
    else:
        text = pc.utf8_trim_whitespace(pc.cast(col, pa.string()))
        text = pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)  # "" = empty, not a value
        values = _parse_text(text, name, path, dates)
    if values.null_count:
        raise AmfrecError(f"{where(path, first_row(pc.is_null(values)))}: column {name!r} is empty")
    if not pc.all(pc.is_finite(values)).as_py():
        raise AmfrecError(
            f"{where(path, first_row(pc.invert(pc.is_finite(values))))}: column {name!r} is not finite"
        )
    return values


def _parse_text(col: pa.Array, name: str, path: Path, dates: bool) -> pa.Array:
    try:
        return pc.cast(col, pa.float64())
    except pa.ArrowInvalid:
        if not dates:
            row = next(r for r, v in enumerate(col.to_pylist()) if not _is_number(v))
            raise AmfrecError(
                f"{where(path, row)}: column {name!r}: {col[row].as_py()!r} is not a number"
            ) from None
    try:
        return _seconds(col)
    except pa.ArrowInvalid:  # the error path only: find the row
        values = col.to_pylist()
        forms = [_date_form(v) for v in values]
        row = next((r for r, v in enumerate(values) if forms[r] is None and not _is_number(v)), None)
        if row is not None:
            raise AmfrecError(f"{where(path, row)}: column {name!r}: cannot read {values[row]!r} as a "
                              "number or an ISO date") from None  # fmt: skip
        if None in forms:
            row = forms.index(None)
            raise AmfrecError(f"{where(path, row)}: column {name!r}: {values[row]!r} is a number where "
                              "other rows hold dates") from None  # fmt: skip
        dated = [r for r, v in enumerate(values) if v is not None]
        row = next(r for r in dated if forms[r] != forms[dated[0]])
        has = ("has", "lacks")
        raise AmfrecError(f"{where(path, row)}: column {name!r}: {values[row]!r} {has[forms[row]]} a time "
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
            row = first_row(unknown)
            what = f"column {cols.item!r}: item {item[row].as_py()!r}"
            raise AmfrecError(f"{where(interactions, row)}: {what} is not in {items}")
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
                f"{where(path, row)}: item {item_id!r} given twice (first at row {seen[item_id] + 1})"
            )
        seen[item_id] = row
    title = _text(column(table, cols.title, path))
    skip = {cols.item, cols.title, cols.image}
    text = list(cols.text) if cols.text is not None else [
        c for c in table.column_names if c not in skip and pa.types.is_string(table[c].type)]  # fmt: skip
    header = ["item_id:token", "title:token_seq", *(f"{c}:token_seq" for c in text)]
    columns = [ids, title, *(_text(column(table, c, path)) for c in text)]
    paths = None
    if cols.image is not None:
        files = _text(column(table, cols.image, path)).to_pylist()
        paths = {i: (path.parent / f) for i, f in zip(ids.to_pylist(), files, strict=True) if f}
        for row, (item_id, file) in enumerate(zip(ids.to_pylist(), files, strict=True)):
            if not file:
                continue
            if not paths[item_id].is_file():
                raise AmfrecError(
                    f"{where(path, row)}: column {cols.image!r}: no image file {paths[item_id]}"
                )
            if image_format(paths[item_id]) is None:
                raise AmfrecError(
                    f"{where(path, row)}: column {cols.image!r}: {paths[item_id]} is not a JPEG or PNG image"
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
