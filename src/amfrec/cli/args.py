"""Argument types shared by the command-line modules."""

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
