"""`amfrec items add|remove --run RUN --items FILE`: the live catalogue from the command line (the work is
`amfrec.runs.live_catalogue`; a running `amfrec serve` of the same run sees the change after a restart).

`add` reads a JSON Lines, CSV or Parquet item table: item_id, title, optional year, genres (a list, or
"a|b"), image (a file path, relative to the table), vectors ({modality: [floats]}, JSON Lines) and any other
text column as one of the data's text fields. `remove` reads item ids: a .txt file (one per line) or a table
with an item_id column.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from amfrec.errors import AmfrecError
from amfrec.io import read_jsonl

log = logging.getLogger(__name__)
RESERVED = ("item_id", "title", "year", "genres", "image", "vectors", "fields")


def read_rows(path: Path) -> list[tuple[str, dict]]:
    """(where, row) of every row of an item table; `where` = "FILE:LINE" (JSON Lines) or "FILE: row N"."""
    if not path.is_file():
        raise AmfrecError(f"--items: {path} is not a file")
    if path.suffix in (".jsonl", ".json"):
        return [(f"{path}:{lineno}", row) for lineno, row in read_jsonl(path)]
    from amfrec.data.tables import read_table

    table = read_table(path)  # one-line AmfrecError naming the file when it is not what its suffix says
    return [(f"{path}: row {k + 1}", row) for k, row in enumerate(table.to_pylist())]


def item_spec(where: str, row: dict, folder: Path):
    """One table row -> ItemSpec; AmfrecError naming the row and column."""
    from amfrec.runs.live_catalogue import ItemSpec

    for col in ("item_id", "title"):
        if row.get(col) in (None, ""):
            raise AmfrecError(f"{where}: column {col!r}: missing or empty")
    genres = row.get("genres") or ()
    genres = genres.split("|") if isinstance(genres, str) else genres
    vectors = row.get("vectors") or {}
    if not isinstance(vectors, dict) or not isinstance(genres, list | tuple):
        raise AmfrecError(
            f"{where}: column {'vectors' if not isinstance(vectors, dict) else 'genres'!r}: bad type"
        )
    fields = {str(k): str(v) for k, v in (row.get("fields") or {}).items()}
    fields |= {k: str(v) for k, v in row.items() if k not in RESERVED and v is not None}
    image = row.get("image")
    year = None if row.get("year") is None else str(row["year"])
    return ItemSpec(
        item_id=str(row["item_id"]),
        title=str(row["title"]),
        year=year,
        genres=tuple(map(str, genres)),
        fields=fields,
        image=None if not image else folder / str(image),
        vectors=vectors,
    )


def cmd_items(a: argparse.Namespace) -> None:
    from amfrec.runs.live_catalogue import LiveCatalogue
    from amfrec.runs.ranker import Ranker

    path = Path(a.items)
    if a.items_command == "add":
        rows = read_rows(path)
        if not rows:
            raise AmfrecError(f"{path}: no items in it")
        specs = [item_spec(where, row, path.parent) for where, row in rows]
        changed = LiveCatalogue(Ranker.load(a.run)).add(specs)
        print(f"{len(changed['added'])} added, {len(changed['updated'])} updated -> {a.run}")
        return
    if path.suffix == ".txt" and path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines()
        ids = [s.strip() for s in lines if s.strip() and not s.strip().startswith("#")]
    else:
        ids = []
        for where, row in read_rows(path):
            if row.get("item_id") in (None, ""):
                raise AmfrecError(f"{where}: column 'item_id': missing or empty")
            ids.append(str(row["item_id"]))
    if not ids:
        raise AmfrecError(f"{path}: no item ids in it")
    LiveCatalogue(Ranker.load(a.run)).remove(ids)
    print(f"{len(ids)} withdrawn -> {a.run}")


def add_items_parser(sub) -> None:
    """`amfrec items add|remove --run RUN --items FILE`."""
    p = sub.add_parser("items", help="add, update or withdraw items of a trained run (the live catalogue)")
    isub = p.add_subparsers(dest="items_command", required=True, metavar="ACTION")
    for name, what in (("add", "add or update items (AMFRec runs)"), ("remove", "withdraw items (any run)")):
        q = isub.add_parser(name, help=what)
        q.add_argument("--run", type=Path, required=True, help="run folder")
        q.add_argument(
            "--items", type=Path, required=True, help="item table (.jsonl/.csv/.parquet; remove: or .txt)"
        )
        q.set_defaults(func=cmd_items)
