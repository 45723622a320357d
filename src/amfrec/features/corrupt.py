"""Test-time corruption of one modality (`amfrec evaluate --corrupt image=noise`): how much does a model
lean on it, and does the gate protect the others?

Only the named modality's feature rows of present items change; its presence mask stays as it is (the model
still believes the modality is there), and every other modality is untouched.
"""

from __future__ import annotations

from enum import StrEnum

import torch

from amfrec.errors import AmfrecError
from amfrec.features.store import Modality


class Corruption(StrEnum):
    NOISE = "noise"  # Gaussian with each column's mean and std over the present rows
    ZERO = "zero"  # all zeros
    SHUFFLE = "shuffle"  # the present rows permuted among the present items


def parse_corruption(spec: str) -> tuple[str, Corruption]:
    """`image=noise` -> ("image", Corruption.NOISE); raises AmfrecError on a malformed spec."""
    name, sep, how = spec.partition("=")
    if not sep or not name.strip():
        raise AmfrecError(f"--corrupt expects MODALITY=HOW, got {spec!r}")
    try:
        return name.strip(), Corruption(how.strip())
    except ValueError:
        choices = ", ".join(c.value for c in Corruption)
        raise AmfrecError(f"--corrupt {spec}: unknown corruption {how!r} (choose from {choices})") from None


def corrupt(modality: Modality, how: Corruption, seed: int = 0) -> Modality:
    """A copy of `modality` with the rows of present items replaced; values (R, d), present (R,) unchanged."""
    values = modality.values.clone()  # (R, d)
    rows = torch.nonzero(modality.present).flatten()  # (P,)
    g = torch.Generator().manual_seed(seed)
    if how == Corruption.ZERO:
        values[rows] = 0.0
    elif how == Corruption.SHUFFLE:
        values[rows] = modality.values[rows[torch.randperm(len(rows), generator=g)]]
    elif how == Corruption.NOISE:
        kept = modality.values[rows]  # (P, d)
        std, mean = torch.std_mean(kept, dim=0) if len(rows) > 1 else (torch.ones(1), kept.mean(0))
        noise = torch.randn(kept.shape, generator=g, dtype=kept.dtype)
        values[rows] = mean + std * noise
    else:  # pragma: no cover - StrEnum exhausts the choices
        raise ValueError(how)
    return Modality(name=modality.name, values=values, present=modality.present.clone())


def corrupt_features(
    features: dict[str, Modality], name: str, how: Corruption, seed: int = 0
) -> dict[str, Modality]:
    """`features` with modality `name` corrupted (the other entries are the same objects)."""
    if name not in features:
        raise AmfrecError(f"--corrupt {name}={how.value}: the model reads no modality {name!r} "
                          f"(it reads {', '.join(features)})")  # fmt: skip
    return {**features, name: corrupt(features[name], how, seed)}
