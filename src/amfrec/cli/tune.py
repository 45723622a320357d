"""`amfrec tune`'s arguments and command (part of the command line; the work is `amfrec.experiments.tune`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_tune(a: argparse.Namespace) -> None:
    from amfrec.experiments.tune import parse_stage, run_search, search_table, write_best
    from amfrec.io import write_text

    stages = [parse_stage(s) for s in a.stage]
    trials = run_search(a.model, a.data, a.seed, a.out, stages, a.features, a.metric)
    table = search_table(trials, a.metric)
    write_text(a.out / "search.md", table + "\n")
    print(table)
    print(f"\nbest settings: {write_best(a.model, trials, a.out, a.metric)}")


def add_tune_parser(sub) -> None:
    """`amfrec tune --model M --data D --stage GRID [--stage GRID ...] --out DIR`."""
    t = sub.add_parser(
        "tune", help="staged search of a baseline's settings on validation: table + OUT/best.yaml"
    )
    t.add_argument(
        "--model", required=True, help="a baseline: sasrec, gru4rec, bert4rec, sasrec_content, ..."
    )
    t.add_argument("--data", type=Path, required=True, help="prepared data folder (--max-len as the longest)")
    t.add_argument("--features", type=Path, default=None, help="feature folder (content baselines)")
    t.add_argument("--seed", type=int, default=1)
    t.add_argument("--out", type=Path, required=True, help="folder of the trial runs, search.md, best.yaml")
    t.add_argument(
        "--stage",
        action="append",
        required=True,
        metavar="'KEY=V1,V2 ...'",
        help="a grid searched with the best of the stages before it, e.g. --stage max_len=10,50,200 "
        "--stage 'hidden=64,128 dropout=0.2,0.5'",
    )
    t.add_argument(
        "--metric", default="ndcg@10", help="validation metric that picks the best (default ndcg@10)"
    )
    t.set_defaults(func=cmd_tune)
