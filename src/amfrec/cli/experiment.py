"""`amfrec experiment`, `report`, `quickstart`: arguments and commands (part of the command line; the work
is `amfrec.experiments` and `amfrec.reports`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from amfrec.cli.args import _overrides, add_protocol_args
from amfrec.cli.args import csv_list as _csv
from amfrec.cli.args import int_list as _ints


def cmd_experiment(a: argparse.Namespace) -> None:
    from amfrec.experiments.experiment import run_experiment

    table = run_experiment(
        models=_csv(a.models),
        data=Path(a.data),
        features=Path(a.features) if a.features else None,
        config=a.config,
        seeds=a.seeds,
        out=Path(a.out),
        overrides=_overrides(a.set),
        limit=a.limit,
        new_items=a.new_items,
        negatives=a.negatives,
    )
    print(table)


def cmd_report(a: argparse.Namespace) -> None:
    from amfrec.reports.report import write_report

    path = write_report(Path(a.exp), Path(a.out) if a.out else None)
    print(f"report: {path}")


def cmd_quickstart(a: argparse.Namespace) -> None:
    from amfrec.experiments.quickstart import quickstart

    print(quickstart(data=Path(a.data) if a.data else None, out=Path(a.out), seed=a.seed))


def add_experiment_parsers(sub) -> None:
    """`amfrec experiment, report`."""
    x = sub.add_parser("experiment", help="several models x seeds on the same candidates -> mean/std table")
    x.add_argument(
        "--models",
        default="popularity,sasrec,gru4rec,amfrec",
        help="comma-separated: popularity, sasrec, gru4rec, bert4rec, sasrec_content, content_knn, amfrec, "
        "amfrec:VARIANT (an ablation, e.g. amfrec:no_llm; see amfrec.experiments.experiment.VARIANTS)",
    )
    x.add_argument("--data", type=Path, required=True, help="raw data folder (prepared once per seed)")
    x.add_argument("--features", type=Path, default=None)
    x.add_argument("--config", default=None)
    x.add_argument("--seeds", type=_ints, default=[1, 2, 3])
    x.add_argument("--out", type=Path, required=True)
    x.add_argument("--set", action="append", metavar="KEY=VALUE")
    x.add_argument("--limit", type=int, default=None)
    add_protocol_args(x)
    x.set_defaults(func=cmd_experiment)

    rp = sub.add_parser(
        "report", help="report.md + PNG plots (metrics, curves, gate, robustness) of an experiment"
    )
    rp.add_argument("--exp", type=Path, required=True, help="experiment folder (amfrec experiment --out)")
    rp.add_argument("--out", type=Path, default=None, help="output folder (default: EXP/report)")
    rp.set_defaults(func=cmd_report)


def add_tool_parsers(sub) -> None:
    """`amfrec quickstart` (`amfrec bench` is in cli/bench.py)."""
    q = sub.add_parser("quickstart", help="the whole pipeline on ml-100k, sized for a laptop CPU")
    q.add_argument("--data", type=Path, default=None, help="ml-100k folder (default: download it)")
    q.add_argument("--out", type=Path, default=Path("quickstart"))
    q.add_argument("--seed", type=int, default=1)
    q.set_defaults(func=cmd_quickstart)
