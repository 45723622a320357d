"""`amfrec compare`'s arguments and command (part of the command line; the work is
`amfrec.reports.compare`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_compare(a: argparse.Namespace) -> None:
    from amfrec.reports.compare import compare

    print(
        compare(
            a.run_a,
            a.run_b,
            exp=a.exp,
            metric=a.metric,
            slice=a.slice,
            split=a.split,
            protocol=a.protocol,
            n_resamples=a.resamples,
            seed=a.seed,
            corrupt=a.corrupt,
        )
    )


def add_compare_parser(sub) -> None:
    """`amfrec compare RUN_A RUN_B`."""
    c = sub.add_parser(
        "compare",
        help="paired per-user difference of two models: users as clusters over seeds, each seed, verdict",
    )
    c.add_argument("run_a", metavar="RUN_A", help="run folder, or comma-separated run folders (one per seed)")
    c.add_argument("run_b", metavar="RUN_B", help="the same for model B (paired with RUN_A's in order)")
    c.add_argument(
        "--exp", type=Path, default=None, help="experiment folder: RUN_A, RUN_B are model names (all seeds)"
    )
    c.add_argument("--metric", default="hr@1", help="hr@K, ndcg@K, recall@K or mrr (default hr@1)")
    c.add_argument("--slice", default="all", help="all (default) or a slice of the ranks files, e.g. cold")
    c.add_argument("--split", choices=("valid", "test"), default="test")
    c.add_argument(
        "--protocol",
        choices=("score", "full"),
        default=None,
        help="the ranks of `amfrec evaluate --protocol P` (default: the run's own RUN/<split>_ranks.json)",
    )
    c.add_argument("--resamples", type=int, default=10000, help="bootstrap resamples and sign flips")
    c.add_argument("--seed", type=int, default=0, help="seed of the resampling (default 0)")
    c.add_argument(
        "--corrupt",
        default=None,
        metavar="MODALITY=HOW",
        help="compare what this corruption costs each side: clean minus `amfrec evaluate --corrupt` ranks",
    )
    c.set_defaults(func=cmd_compare)
