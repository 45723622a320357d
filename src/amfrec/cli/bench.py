"""`amfrec bench [train]`, `amfrec bench targets`, `amfrec bench serve` and `amfrec bench scale`: arguments
and commands (part of the command line; the work is `amfrec.bench.train`, `amfrec.bench.ddp`,
`amfrec.bench.targets`, `amfrec.bench.serve` and `amfrec.bench.scale`).

`amfrec bench` without an action is `amfrec bench train` (so `amfrec bench --dtypes ...` keeps working); the
training options may come before or after `train`. `amfrec bench-scale`, the first name of
`amfrec bench scale`, is the same command.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from amfrec.cli.args import csv_list as _csv
from amfrec.cli.args import int_list as _ints
from amfrec.errors import AmfrecError
from amfrec.serve.batcher import MAX_WAIT_MS


def cmd_bench_train(a: argparse.Namespace) -> None:
    if a.ddp:
        from amfrec.bench.ddp import run_ddp_bench

        dtype = _csv(a.dtypes)[0] if a.dtypes else "auto"
        print(run_ddp_bench(a.ddp, a.backbone, dtype, a.seq_len, a.batch_size, a.answer_len, a.steps))
        return
    from amfrec.bench.train import run_bench

    print(run_bench(a.backbone, _csv(a.dtypes), a.seq_len, a.batch_size, a.answer_len, a.steps, a.compile))


def cmd_bench_targets(a: argparse.Namespace) -> None:
    from amfrec.bench.targets import run_targets_bench
    from amfrec.io import parse_overrides

    sizes = {"last": a.batch_last, "all": a.batch_all}
    sets = parse_overrides(a.set or [])
    print(run_targets_bench(a.data, a.features, a.config, sets, _csv(a.dtypes), a.steps, sizes))


def cmd_bench_serve(a: argparse.Namespace) -> None:
    from amfrec.bench.serve import bench_serve

    if not a.clients or min(a.clients) < 1:
        raise AmfrecError(f"--clients must be positive integers, got {a.clients}")
    for name in ("requests", "max_batch", "repeats", "k"):
        if getattr(a, name) < 1:
            raise AmfrecError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if not 0 <= a.max_wait_ms <= 1000:
        raise AmfrecError(f"--max-wait-ms must be in [0, 1000], got {a.max_wait_ms}")
    print(bench_serve(a.run, a.clients, a.requests, a.max_batch, a.max_wait_ms, a.k, a.repeats))


def cmd_bench_scoring(a: argparse.Namespace) -> None:
    from amfrec.bench.scoring import bench_scoring
    from amfrec.data.fetch import fetch_ml100k

    data = a.data or fetch_ml100k()  # as `data prepare` without --data
    print(bench_scoring(data, [d.strip() for d in a.dtypes.split(",")], a.batch_sizes, a.examples, a.repeats))


def _add_train_args(p: argparse.ArgumentParser, defaults: bool) -> None:
    """The training bench's options; without `defaults` (the `train` action) an option not given keeps the
    value parsed before `train` (or the default of `amfrec bench`)."""

    def d(value):
        return value if defaults else argparse.SUPPRESS

    p.add_argument("--backbone", default=d("smollm2-135m"))
    p.add_argument(
        "--dtypes", default=d("auto"), help="comma-separated: auto (the probe's pick), float32, bfloat16"
    )
    p.add_argument("--seq-len", type=int, default=d(256))
    p.add_argument("--batch-size", type=int, default=d(8))
    p.add_argument("--answer-len", type=int, default=d(8), help="positions whose logits are computed")
    p.add_argument("--steps", type=int, default=d(5))
    p.add_argument(
        "--compile", action="store_true", default=d(False), help="also time the torch.compile'd fast path"
    )
    p.add_argument("--ddp", type=int, default=d(0), help="N: also N data-parallel processes -> scaling table")


def cmd_bench_recommend(a: argparse.Namespace) -> None:
    from amfrec.bench.recommend import bench_recommend, format_recommend

    if a.limit is not None and a.limit < 1:
        raise AmfrecError(f"--limit must be >= 1, got {a.limit}")
    print(format_recommend(bench_recommend(a.run, a.limit), a.run))


def add_bench_parser(sub) -> None:
    """`amfrec bench [train] ...`, `amfrec bench serve --run RUN ...`, `amfrec bench scale ...`."""
    b = sub.add_parser(
        "bench",
        help="throughput, MFU (default: `bench train`); `bench targets|serve|scale|scoring|recommend`",
        description="ACTION is optional: without one, `amfrec bench` is `amfrec bench train`.",
    )
    _add_train_args(b, defaults=True)
    b.set_defaults(func=cmd_bench_train)
    actions = b.add_subparsers(dest="bench_action", metavar="ACTION", required=False)
    t = actions.add_parser("train", help="backbone training throughput and MFU vs measured matmul peak")
    _add_train_args(t, defaults=False)
    t.set_defaults(func=cmd_bench_train)

    g = actions.add_parser(
        "targets", help="the recipe's training targets/s: one prompt per window vs every position a target"
    )
    g.add_argument("--data", type=Path, required=True, help="prepared data folder")
    g.add_argument("--features", type=Path, required=True, help="feature folder")
    g.add_argument("--config", default=None, help="YAML config or packaged name (default amfrec)")
    g.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override")
    g.add_argument("--dtypes", default="auto", help="comma-separated: auto, float32, bfloat16")
    g.add_argument("--steps", type=int, default=8, help="timed steps per cell (after one warm-up)")
    g.add_argument("--batch-last", type=int, default=16, help="windows per step, positions last")
    g.add_argument("--batch-all", type=int, default=32, help="prompts per step, positions all")
    g.set_defaults(func=cmd_bench_targets)

    s = actions.add_parser(
        "serve", help="in-process forward of one request vs `amfrec serve` over loopback (p50/p99, req/s)"
    )
    s.add_argument("--run", type=Path, required=True, help="run folder (AMFRec or a baseline)")
    s.add_argument("--clients", type=_ints, default=[1, 8], help="client counts, comma-separated (1,8)")
    s.add_argument("--requests", type=int, default=20, help="requests per client")
    s.add_argument("--max-batch", type=int, default=16, help="the server's --max-batch")
    s.add_argument("--max-wait-ms", type=float, default=MAX_WAIT_MS, help="the server's --max-wait-ms")
    s.add_argument("--k", type=int, default=10, help="items per answer")
    s.add_argument("--repeats", type=int, default=5, help="timed in-process calls (median)")
    s.set_defaults(func=cmd_bench_serve)
    add_bench_scale_parser(actions)

    r = actions.add_parser(
        "recommend", help="`recommend --users` against the evaluation on one AMFRec run (users/s, tokens/s)"
    )
    r.add_argument("--run", type=Path, required=True, help="AMFRec run folder")
    r.add_argument("--limit", type=int, default=None, help="the first N test users (default: all)")
    r.set_defaults(func=cmd_bench_recommend)

    c = actions.add_parser(
        "scoring", help="the title head's candidate scoring: repeated cache vs packed tree"
    )
    c.add_argument("--data", type=Path, default=None, help="raw ml-100k folder (default: fetched, cached)")
    c.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated; the first is the reference")
    c.add_argument("--batch-sizes", type=_ints, default=[1, 4], help="comma-separated")
    c.add_argument("--examples", type=int, default=8, help="test examples scored per timing")
    c.add_argument("--repeats", type=int, default=3, help="timings per method, old and new interleaved")
    c.set_defaults(func=cmd_bench_scoring)


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
