"""`amfrec data import`, `amfrec data prepare`, `amfrec features`: arguments and commands (part of the command
line; the work is `amfrec.data` and `amfrec.features`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from amfrec.cli.args import add_protocol_args, csv_list


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


def cmd_data_prepare(a: argparse.Namespace) -> None:
    from amfrec.data.prepare import prepare

    kw = {} if a.cold_threshold is None else {"cold_threshold": a.cold_threshold}
    kw.update(kcore=a.kcore, new_items=a.new_items, negatives=a.negatives)
    m = prepare(a.data, a.out, a.seed, a.max_len, **kw)
    c = m["counts"]
    print(
        f"prepared {a.out}: {c['users']} users, {c['items']} items, {c['interactions']} interactions; "
        f"train {c['train']}, valid {c['valid']}, test {c['test']}"
    )


def cmd_features(a: argparse.Namespace) -> None:
    from amfrec.features.build import build_features, parse_import_spec
    from amfrec.runs.baseline_run import ensure_sasrec_run

    out = a.out or Path(a.data) / "features"
    id_from = a.id_from
    if "id" in csv_list(a.modalities) and id_from is None:  # train the SASRec whose item table is `id`
        id_from = ensure_sasrec_run(Path(a.data), a.seed, Path(out) / "sasrec")
    imports = dict(parse_import_spec(spec) for spec in a.import_npy or [])
    m = build_features(
        Path(a.data),
        Path(out),
        modalities=csv_list(a.modalities),
        posters=a.posters,
        id_from=id_from,
        text_encoder=a.text_encoder,
        image_encoder=a.image_encoder,
        import_specs=imports or None,
        batch_size=a.batch_size,
    )
    for name, info in m["modalities"].items():
        print(f"{name:>6}: dim {info['dim']}, present {info['present']}  ({info['encoder']['name']})")
    print(f"features in {out}")


def add_data_parsers(sub) -> None:
    """`amfrec data prepare` and `amfrec data import`."""
    d = sub.add_parser("data", help="import tables; prepare a data set: splits and fixed candidate sets")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    dp = dsub.add_parser("prepare", help="RecBole atomic files -> splits, candidates, manifest")
    dp.add_argument("--data", type=Path, default=None, help="*.inter + *.item folder (default: ml-100k)")
    dp.add_argument("--out", type=Path, required=True, help="output folder")
    dp.add_argument("--seed", type=int, default=1, help="seed of the validation/test candidate sets")
    dp.add_argument("--max-len", type=int, default=10, help="history length L")
    add_protocol_args(dp)
    dp.add_argument("--kcore", type=int, default=0, help="iterative k-core filter (0 = off)")
    dp.add_argument("--cold-threshold", type=int, default=None, help="K of the slice train<=K (default 5)")
    dp.set_defaults(func=cmd_data_prepare)
    add_import_parser(dsub)


def add_features_parser(sub) -> None:
    """`amfrec features`."""
    f = sub.add_parser("features", help="per-item modality vectors (id, text, image), cached")
    f.add_argument("--data", type=Path, required=True, help="prepared data folder")
    f.add_argument("--out", type=Path, default=None, help="feature folder (default: DATA/features)")
    f.add_argument("--modalities", default="id,text,image", help="comma-separated modalities")
    f.add_argument("--posters", type=Path, default=None, help="image folder named by item id")
    f.add_argument("--id-from", type=Path, default=None, help="SASRec run folder (default: train one)")
    f.add_argument("--text-encoder", default=None, help="HF encoder path or hub id (default: MiniLM-L6)")
    f.add_argument(
        "--image-encoder", default=None, help="HF vision model path or hub id (default: ResNet-50)"
    )
    f.add_argument(
        "--import",
        dest="import_npy",
        action="append",
        metavar="NAME=MATRIX.npy:IDS",
        help="import a precomputed matrix as modality NAME (repeatable)",
    )
    f.add_argument("--batch-size", type=int, default=64)
    f.add_argument(
        "--seed", type=int, default=1, help="seed of the SASRec trained for id (without --id-from)"
    )
    f.set_defaults(func=cmd_features)
