"""Argument types and helpers shared by the command-line modules."""

from __future__ import annotations

import argparse


def csv_list(text: str) -> list[str]:
    """ "a, b,,c" -> ["a", "b", "c"]."""
    return [t.strip() for t in text.split(",") if t.strip()]


def int_list(text: str) -> list[int]:
    """ "1,2,3" -> [1, 2, 3]; anything else is an argparse error."""
    try:
        return [int(t) for t in csv_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _overrides(pairs: list[str] | None) -> dict[str, object]:
    """`--set train.max_steps=8` pairs -> {"train.max_steps": 8} (values parsed as YAML)."""
    from amfrec.io import parse_overrides

    return parse_overrides(pairs or [])


def add_protocol_args(p: argparse.ArgumentParser) -> None:
    """The protocol of `data prepare` and `experiment` (amfrec.data.protocol)."""
    p.add_argument("--negatives", type=int, default=19, help="valid/test negatives per target (default 19)")
    p.add_argument("--n-candidates", type=lambda v: int(v) - 1, dest="negatives", help="= --negatives N-1")
    p.add_argument("--new-items", type=float, default=0.0, help="fraction of items kept out of training")
