"""`amfrec data import`: arguments and command (part of the command line; the work is
`amfrec.data.importer`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from amfrec.cli.args import csv_list


def cmd_data_import(a: argparse.Namespace) -> None:
    from amfrec.data.card import DatasetCard
    from amfrec.data.importer import Columns, import_data

    cols = Columns(user=a.user_col, item=a.item_col, time=a.time_col, rating=a.rating_col, title=a.title_col,
                   text=tuple(csv_list(a.text_cols)) if a.text_cols else None, image=a.image_col)  # fmt: skip
    card = DatasetCard(a.noun, a.noun_plural or "", tuple(csv_list(a.text_cols)) if a.text_cols else None)
    counts = import_data(a.interactions, a.out, a.items, a.images, cols, card)
    print(f"{counts['interactions']:,} interactions of {counts['users']:,} users, {counts['items']:,} items "
          f"({counts['images']:,} with an image) -> {a.out}; next: amfrec data prepare")  # fmt: skip


def add_import_parser(dsub) -> None:
    """`amfrec data import --interactions FILE [--items FILE] [--images DIR] ... --out DIR`."""
    p = dsub.add_parser(
        "import", help="CSV / Parquet / JSON Lines tables -> the folder `data prepare` reads (+ dataset card)"
    )
    p.add_argument("--interactions", type=Path, required=True, help="user, item, time [, rating] table")
    p.add_argument(
        "--items", type=Path, default=None, help="item table: id, title, other text [, image path]"
    )
    p.add_argument("--images", type=Path, default=None, help="folder of images named by item id (.jpg/.png)")
    p.add_argument("--user-col", default="user_id")
    p.add_argument("--item-col", default="item_id", help="the item id column, in both tables")
    p.add_argument("--time-col", default="timestamp", help="numbers or ISO dates")
    p.add_argument("--rating-col", default=None, help="optional")
    p.add_argument("--title-col", default="title")
    p.add_argument("--text-cols", default=None, help="comma-separated item text columns (default: all text)")
    p.add_argument("--image-col", default=None, help="item column of image paths (relative to --items)")
    p.add_argument("--noun", default="item", help="what the prompt calls an item (the dataset card)")
    p.add_argument("--noun-plural", default=None)
    p.add_argument(
        "--out", type=Path, required=True, help="output folder (atomic files, dataset.yaml, posters/)"
    )
    p.set_defaults(func=cmd_data_import)
