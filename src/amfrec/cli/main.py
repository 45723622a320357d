"""Command line: `amfrec <command>`. The only place that reads argv; everything else takes arguments."""

from __future__ import annotations

import argparse
import logging
import sys

from amfrec import __version__
from amfrec.cli.bench import add_bench_parser, add_bench_scale_parser
from amfrec.cli.compare import add_compare_parser
from amfrec.cli.data import add_data_parsers, add_features_parser
from amfrec.cli.experiment import add_experiment_parsers, add_tool_parsers
from amfrec.cli.items import add_items_parser
from amfrec.cli.runs import add_run_parsers
from amfrec.cli.tune import add_tune_parser
from amfrec.errors import AmfrecError

log = logging.getLogger("amfrec")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="amfrec",
        description="AMFRec: a frozen LLM recommends the next item from multimodal soft tokens.",
    )
    p.add_argument("--version", action="version", version=f"amfrec {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings only")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    add_data_parsers(sub)
    add_features_parser(sub)
    add_run_parsers(sub)
    add_items_parser(sub)
    add_experiment_parsers(sub)
    add_compare_parser(sub)
    add_tune_parser(sub)
    add_bench_parser(sub)
    add_tool_parsers(sub)
    add_bench_scale_parser(sub, "bench-scale")
    return p


def _check_counts(args: argparse.Namespace) -> None:
    """Counts given on the command line must be positive (a zero --limit would evaluate nothing)."""
    counts = ("limit", "top", "steps", "batch_size", "seq_len", "negatives", "max_len", "max_batch")
    for name in (*counts, "examples"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise AmfrecError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    import torch

    from amfrec.hardware import use_all_cores
    from amfrec.training.distributed import leave_process_group

    threads = torch.get_num_threads()
    log.debug("torch threads: %d (the CPUs this process may use)", use_all_cores())
    try:
        _check_counts(args)
        args.func(args)
        leave_process_group()  # under torchrun: every rank done before any tears its connections down
    except AmfrecError as e:
        print(f"amfrec: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("amfrec: interrupted", file=sys.stderr)
        return 130
    finally:
        torch.set_num_threads(threads)  # callers in the same process (tests) get their setting back
    return 0


if __name__ == "__main__":
    sys.exit(main())
