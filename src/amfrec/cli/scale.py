"""`amfrec bench scale`'s arguments and command (part of the command line; the work is
`amfrec.bench.scale`). `amfrec bench-scale`, its first name, is the same command."""

from __future__ import annotations

import argparse
from pathlib import Path


def _counts(text: str) -> list[int]:
    """`1e4,1e5,1e6` or `10000,100000` -> [10000, 100000, ...] (positive integers)."""
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated counts like 1e4,1e5, got {text!r}"
        ) from None
    if not values or any(v < 1 or v != int(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected positive whole counts, got {text!r}")
    return [int(v) for v in values]


def cmd_bench_scale(a: argparse.Namespace) -> None:
    from amfrec.bench.scale import run_scale_bench

    print(
        run_scale_bench(
            a.sizes, out=a.out, items=a.items, rank_items=a.rank_items, steps=a.steps,
            batch_size=a.batch_size, threads=a.threads,
        )
    )  # fmt: skip


def add_bench_scale_parser(sub, name: str = "scale") -> None:
    """`amfrec bench scale` (`sub`: bench's actions) or, with name "bench-scale", its first name."""
    s = sub.add_parser(
        name, help="time and peak memory of every stage on synthetic data of growing size (log-log)"
    )
    s.add_argument(
        "--sizes", type=_counts, default=[10**4, 10**5, 10**6], help="interactions (default 1e4,1e5,1e6)"
    )
    s.add_argument("--items", type=_counts, default=None, help="items per size (default: sizes / 10)")
    s.add_argument(
        "--rank-items",
        type=_counts,
        default=[10**6],
        help="catalogue sizes of the ranking alone (default 1e6)",
    )
    s.add_argument(
        "--steps", type=int, default=3, help="timed training steps per model (after a warm-up one)"
    )
    s.add_argument("--batch-size", type=int, default=256, help="baselines' batch (AMFRec: its recipe's)")
    s.add_argument("--threads", type=int, default=None, help="torch threads per stage (default: all cores)")
    s.add_argument("--out", type=Path, default=None, help="folder for scale.md, scale.json, scale.png")
    s.set_defaults(func=cmd_bench_scale)
