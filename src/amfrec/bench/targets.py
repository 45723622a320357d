"""`amfrec bench targets`: training targets per second of the recipe on real data, one prompt per window
(``model.positions: last``) against every item boundary a target (``all``), per dtype, ratios in one table.

Each cell builds the model from the config (with its overrides), runs one warm-up step, then times
``steps`` optimiser steps (forward, backward, AdamW) on the real training batches, as ``amfrec train`` does
them, validation excluded.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from amfrec.config.model import AMFRecConfig
from amfrec.data.dataset import PreparedData
from amfrec.hardware import cpu_flags, resolve_dtype
from amfrec.runs.rundir import resolve_config
from amfrec.training.train import make_batches, make_optimizer

log = logging.getLogger(__name__)


@dataclass
class TargetsRow:
    dtype: str
    positions: str
    batch_size: int
    targets_per_s: float
    tokens_per_s: float
    s_per_step: float


def time_steps(cfg: AMFRecConfig, data: PreparedData, features: Path, steps: int) -> TargetsRow:
    """Targets/s, tokens/s and seconds per step of ``steps`` timed training steps (after one warm-up)."""
    from amfrec.runs.amfrec_run import build_model, use_card

    use_card(cfg.model, data.manifest)
    model = build_model(cfg, data, features)
    model.train()
    params = model.trainable_parameters()
    opt = make_optimizer(params, cfg.train)
    batches = make_batches(model, data.train, data.n_items, cfg.train)
    targets = tokens = 0
    t0 = time.perf_counter()
    for i in range(steps + 1):
        if i == 1:  # the first step (allocation, caches) is not timed
            targets = tokens = 0
            t0 = time.perf_counter()
        out = model(*(t.to(model.device) for t in batches[i]))
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        targets += int(batches[i][2].shape[0])
        tokens += int(out.n_tokens)
    wall = time.perf_counter() - t0
    dtype = str(next(model.lm.parameters()).dtype).removeprefix("torch.")
    return TargetsRow(dtype, str(cfg.model.positions), cfg.train.batch_size, targets / wall, tokens / wall,
                      wall / steps)  # fmt: skip


def run_targets_bench(
    data_dir: Path,
    features: Path,
    config: str | None,
    overrides: dict,
    dtypes: list[str],
    steps: int,
    batch_sizes: dict[str, int],
) -> str:
    """A markdown table: one row per (dtype, positions), targets/s and its ratio to positions "last"."""
    if steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    data = PreparedData.load(data_dir)
    rows = []
    for dtype in dtypes:
        for positions in ("last", "all"):
            settings = {**overrides, "model.dtype": dtype, "model.positions": positions,
                        "train.batch_size": batch_sizes[positions]}  # fmt: skip
            cfg = AMFRecConfig.from_yaml(resolve_config(config), settings)
            torch.manual_seed(0)
            rows.append(time_steps(cfg, data, Path(features), steps))
            log.info("%s", rows[-1])
    lines = [
        f"training targets/s, {data_dir} ({len(data.train):,} targets), {steps} steps per cell; "
        f"CPU flags: {cpu_flags() or 'unknown'}; auto -> {resolve_dtype('auto')[0]}",
        "",
        "| dtype | positions | prompts per step | targets/s | tokens/s | s/step | targets/s vs last |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        base = next(b for b in rows if b.dtype == r.dtype and b.positions == "last")
        ratio = r.targets_per_s / base.targets_per_s
        lines.append(f"| {r.dtype} | {r.positions} | {r.batch_size} | {r.targets_per_s:.1f} | "
                     f"{r.tokens_per_s:.0f} | {r.s_per_step:.2f} | {ratio:.2f}x |")  # fmt: skip
    return "\n".join(lines)
