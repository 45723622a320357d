"""AMFRec training loop (nanoGPT style) and checkpoints.

The model (`amfrec.llm.model.AMFRecModel` or anything with the same interface) provides:
  `model(history (B, L), candidates (B, C), target (B,)) -> output with .loss` (scalar, to minimise),
  `model.trainable_parameters()` (the only parameters the optimiser sees), `model.parameter_report()`,
  `model.adapter` (an nn.Module holding every trainable parameter: its state_dict is the checkpoint).
Each step logs the loss, and at every validation the head's learned scale (and collaborative weight).

Loop: AdamW (weight decay on matrices only); linear warm-up then cosine decay (`lr_at`); gradient
accumulation; global grad-norm clipping; every `eval_every` steps `evaluate_fn(model, split)` on a fixed
random validation subset, keeping the best checkpoint by `select_metric` (ndcg@10); early stopping after
`patience` validations without improvement. Each training example gets `n_negatives` negatives drawn
uniformly (vectorised) from the items outside its history and target, re-drawn every epoch; the candidates
are shuffled per example.

Files under `out`:
  checkpoint/  the best: trainable.safetensors (adapter state), config.yaml (resolved), backbone.json
               (the backbone's identity), state.pt (optimizer, step, best metric, ...: tensors and plain
               containers only, loaded with weights_only=True)
  last/        the same for the latest validation: `resume=True` continues from here (else from checkpoint/).
At the end the best weights are loaded back into the model.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from amfrec.data.dataset import PreparedData, Split
from amfrec.errors import AmfrecError
from amfrec.io import atomic_dir, read_json, write_json
from amfrec.llm.config import AMFRecConfig, TrainConfig

log = logging.getLogger(__name__)

CHECKPOINT_DIR, LAST_DIR = "checkpoint", "last"
TRAINABLE_FILE, CONFIG_FILE, BACKBONE_FILE, STATE_FILE = (
    "trainable.safetensors",
    "config.yaml",
    "backbone.json",
    "state.pt",
)
FORMAT = "amfrec-checkpoint/1"


# ------------------------------------------------------------------------------------------------ schedule
def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimiser step `step` (0-based).

    Warm-up: lr * (step + 1) / (warmup_steps + 1) for step < warmup_steps; then cosine from lr (at
    step = warmup_steps) down to lr * min_lr_ratio (at step = max_steps); constant after that.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
    min_lr = cfg.lr * cfg.min_lr_ratio
    if step >= cfg.max_steps:
        return min_lr
    ratio = (step - cfg.warmup_steps) / (cfg.max_steps - cfg.warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.lr - min_lr)


def make_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on parameters with >= 2 dims (matrices, expert stacks), none on biases/norms."""
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


# ------------------------------------------------------------------------------------------------ sampling
def generator(*keys: int) -> torch.Generator:
    """A CPU torch.Generator seeded from a tuple of ints (e.g. (seed, epoch, batch)): reproducible streams."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def draw_candidates(
    history: torch.Tensor, target: torch.Tensor, n_items: int, n_negatives: int, gen: torch.Generator
) -> torch.Tensor:
    """Training candidate sets: the target plus `n_negatives` distinct items drawn uniformly from the items
    (1..n_items) that are neither in the history nor the target, in a random order per example.

    history (B, L) long (0 = padding), target (B,) long -> candidates (B, n_negatives + 1) long.
    Vectorised: random scores with the forbidden items pushed below every allowed one, then top-k.
    """
    B = target.shape[0]
    forbidden = torch.zeros(B, n_items + 1, dtype=torch.bool)
    forbidden[:, 0] = True
    forbidden.scatter_(1, history.cpu(), True)
    forbidden.scatter_(1, target.cpu()[:, None], True)
    allowed = (~forbidden).sum(1)
    if int(allowed.min()) < n_negatives:
        raise ValueError(
            f"cannot draw {n_negatives} negatives: an example leaves only {int(allowed.min())} items "
            f"outside its history and target (n_items = {n_items})"
        )
    scores = torch.rand(B, n_items + 1, generator=gen).masked_fill_(forbidden, -1.0)  # (B, n_items + 1)
    negatives = scores.topk(n_negatives, dim=1).indices  # (B, n_neg)
    cands = torch.cat([negatives, target.cpu()[:, None]], 1)  # (B, C)
    order = torch.rand(cands.shape, generator=gen).argsort(1)
    return cands.gather(1, order)


def fixed_subset(n: int, k: int | None, seed: int) -> torch.Tensor:
    """Sorted indices of a random k-subset of range(n) (all of them when k is None or >= n)."""
    if k is None or k >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=generator(seed, n, k))[:k].sort().values


class TrainBatches:
    """Micro-batch `i` of the endless stream of epochs, computed from (seed, epoch, batch) alone, so resuming
    at step s (micro-batch s * grad_accum) replays exactly the batches of an uninterrupted run."""

    def __init__(self, split: Split, n_items: int, cfg: TrainConfig) -> None:
        self.split, self.n_items, self.cfg = split, n_items, cfg
        self.n = len(split)
        if self.n == 0:
            raise AmfrecError("training split is empty: nothing to train on")
        self.per_epoch = math.ceil(self.n / cfg.batch_size)
        self.fixed = None
        if not cfg.redraw_negatives:  # drawn once, in chunks to bound memory
            chunks = []
            for i, start in enumerate(range(0, self.n, 4096)):
                sl = slice(start, start + 4096)
                chunks.append(
                    draw_candidates(
                        split.history[sl],
                        split.target[sl],
                        n_items,
                        cfg.n_negatives,
                        generator(cfg.seed, 7, i),
                    )
                )
            self.fixed = torch.cat(chunks)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> history (B, L), candidates (B, C), target (B,)."""
        epoch, b = divmod(i, self.per_epoch)
        order = torch.randperm(self.n, generator=generator(self.cfg.seed, epoch))
        idx = order[b * self.cfg.batch_size : (b + 1) * self.cfg.batch_size]
        history, target = self.split.history[idx], self.split.target[idx]
        if self.fixed is not None:
            cands = self.fixed[idx]
        else:
            cands = draw_candidates(
                history, target, self.n_items, self.cfg.n_negatives, generator(self.cfg.seed, epoch, b)
            )
        return history, cands, target

    def epoch_of(self, i: int) -> int:
        return i // self.per_epoch


# ---------------------------------------------------------------------------------------------- checkpoint
def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's state_dict (the feature buffers are non-persistent, so: the trainable weights)."""
    return {k: v.detach().cpu().contiguous() for k, v in model.adapter.state_dict().items()}


def backbone_identity(model: nn.Module) -> dict:
    """The backbone's identity dict (model.backbone.identity, as amfrec.llm.backbone.Backbone has it)."""
    ident = getattr(getattr(model, "backbone", None), "identity", None)
    if ident is None:
        ident = getattr(model, "backbone_identity", None)
        ident = ident() if callable(ident) else ident
    return dict(ident or {})


def save_checkpoint(
    model: nn.Module, cfg: AMFRecConfig | None, directory: str | Path, state: dict | None = None
) -> Path:
    """Write `directory` atomically: trainable.safetensors, config.yaml, backbone.json (+ state.pt)."""
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        save_file(trainable_state(model), str(tmp / TRAINABLE_FILE), metadata={"format": FORMAT})
        (tmp / CONFIG_FILE).write_text(cfg.to_yaml() if cfg is not None else "{}\n", encoding="utf-8")
        write_json(tmp / BACKBONE_FILE, backbone_identity(model))
        if state is not None:
            torch.save(state, tmp / STATE_FILE)
    return directory


def load_checkpoint(directory: str | Path) -> tuple[dict[str, torch.Tensor], AMFRecConfig, dict]:
    """-> (adapter state_dict, resolved config, backbone identity). Missing files raise AmfrecError."""
    directory = Path(directory)
    for name in (TRAINABLE_FILE, CONFIG_FILE, BACKBONE_FILE):
        if not (directory / name).is_file():
            raise AmfrecError(f"{directory / name}: file not found (not an AMFRec checkpoint)")
    state = load_file(str(directory / TRAINABLE_FILE))
    config = AMFRecConfig.from_yaml(directory / CONFIG_FILE)
    return state, config, read_json(directory / BACKBONE_FILE)


def load_train_state(directory: str | Path) -> dict:
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise AmfrecError(f"{path}: file not found (cannot resume)")
    return torch.load(path, map_location="cpu", weights_only=True)


# ------------------------------------------------------------------------------------------------ training
def train(
    model: nn.Module,
    data: PreparedData,
    cfg: TrainConfig | AMFRecConfig,
    out: str | Path,
    evaluate_fn: Callable[[nn.Module, Split], dict],
    *,
    resume: bool = False,
) -> dict:
    """Train the model's adapter; return a summary dict (also the best validation metrics).

    cfg: a TrainConfig, or the whole AMFRecConfig (then it is written to checkpoint/config.yaml).
    evaluate_fn(model, split) -> metrics dict holding cfg.select_metric (higher = better); it is called on a
    fixed random subset of data.valid (cfg.eval_examples) every cfg.eval_every steps and after the last step.
    resume: continue from out/last (or out/checkpoint): weights, optimizer, step, best metric, patience.
    """
    full_cfg = cfg if isinstance(cfg, AMFRecConfig) else None
    tcfg = cfg.train if isinstance(cfg, AMFRecConfig) else cfg
    out = Path(out)
    params = list(model.trainable_parameters())
    _check_trainable(model, params)
    n_trainable, n_total = _param_counts(model, params)
    log.info(
        "parameters: %s trainable of %s total (%.4f%%)",
        f"{n_trainable:,}",
        f"{n_total:,}",
        100 * n_trainable / max(n_total, 1),
    )
    device = params[0].device

    train_split = data.train.subset(fixed_subset(len(data.train), tcfg.train_examples, tcfg.seed))
    valid_split = data.valid.subset(fixed_subset(len(data.valid), tcfg.eval_examples, tcfg.seed + 1))
    batches = TrainBatches(train_split, data.n_items, tcfg)
    opt = make_optimizer(params, tcfg)
    st: dict[str, Any] = {"step": 0, "best": None, "best_step": None, "bad_evals": 0, "evals": []}

    if resume:
        src = out / LAST_DIR if (out / LAST_DIR / STATE_FILE).is_file() else out / CHECKPOINT_DIR
        weights, _, _ = load_checkpoint(src)
        model.adapter.load_state_dict(weights, strict=True)
        saved = load_train_state(src)
        opt.load_state_dict(saved["optimizer"])
        st = saved["train"]
        log.info("resumed from %s at step %d", src, st["step"])

    def snapshot() -> dict:
        return {"optimizer": opt.state_dict(), "train": st, "format": FORMAT}

    log.info(
        "training on %d examples (%d micro-batches of %d per epoch), %d steps, validation on %d examples",
        len(train_split),
        batches.per_epoch,
        tcfg.batch_size,
        tcfg.max_steps,
        len(valid_split),
    )
    if tcfg.max_steps == 0 and not resume:  # no training (zero-shot): the initial adapter is the model
        save_checkpoint(model, full_cfg, out / CHECKPOINT_DIR, snapshot())
    model.train()
    t0, seen_examples, seen_tokens, stopped_early = time.perf_counter(), 0, 0, False
    start_step = st["step"]
    losses: list[float] = []  # per optimiser step, this session (not restored on resume)
    bar = tqdm(total=tcfg.max_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)
    while st["step"] < tcfg.max_steps:
        step = st["step"]
        lr = lr_at(step, tcfg)
        for group in opt.param_groups:
            group["lr"] = lr
        loss_sum = 0.0
        for micro in range(tcfg.grad_accum):
            history, cands, target = batches[step * tcfg.grad_accum + micro]
            output = model(history.to(device), cands.to(device), target.to(device))
            loss = output.loss
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss is {loss.item()} at step {step}")
            (loss / tcfg.grad_accum).backward()
            loss_sum += loss.item()
            seen_examples += target.shape[0]
            seen_tokens += int(getattr(output, "n_tokens", 0) or 0)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, tcfg.clip if tcfg.clip > 0 else float("inf"))
        opt.step()
        opt.zero_grad(set_to_none=True)
        st["step"] = step = step + 1
        losses.append(loss_sum / tcfg.grad_accum)
        elapsed = time.perf_counter() - t0
        bar.update(1)
        bar.set_postfix(
            loss=f"{loss_sum / tcfg.grad_accum:.4f}",
            lr=f"{lr:.2e}",
            gnorm=f"{float(grad_norm):.2f}",
            **(
                {"tok/s": f"{seen_tokens / elapsed:.0f}"}
                if seen_tokens
                else {"ex/s": f"{seen_examples / elapsed:.2f}"}
            ),
        )
        log.debug(
            "step %d loss %.4f lr %.3e grad_norm %.3f", step, loss_sum / tcfg.grad_accum, lr, float(grad_norm)
        )

        if step % tcfg.eval_every == 0 or step == tcfg.max_steps:
            model.eval()
            with torch.no_grad():
                metrics = evaluate_fn(model, valid_split)
            model.train()
            if tcfg.select_metric not in metrics:
                raise ValueError(
                    f"train.select_metric: {tcfg.select_metric!r} not in the validation metrics "
                    f"({', '.join(metrics)})"
                )
            value = float(metrics[tcfg.select_metric])
            improved = st["best"] is None or value > st["best"]
            st["evals"].append({"step": step, "loss": loss_sum / tcfg.grad_accum, tcfg.select_metric: value})
            if improved:
                st["best"], st["best_step"], st["bad_evals"] = value, step, 0
                save_checkpoint(model, full_cfg, out / CHECKPOINT_DIR, snapshot())
            else:
                st["bad_evals"] += 1
            save_checkpoint(model, full_cfg, out / LAST_DIR, snapshot())
            log.info(
                "step %d: valid %s %.4f (best %.4f at step %d)%s%s",
                step,
                tcfg.select_metric,
                value,
                st["best"],
                st["best_step"],
                "" if improved else f", {st['bad_evals']} without improvement",
                _head_state(model),
            )
            if tcfg.patience and st["bad_evals"] >= tcfg.patience:
                log.info("early stop at step %d: %d validations without improvement", step, st["bad_evals"])
                stopped_early = True
                break
    bar.close()
    wall = time.perf_counter() - t0

    if (out / CHECKPOINT_DIR / TRAINABLE_FILE).is_file():
        weights, _, _ = load_checkpoint(out / CHECKPOINT_DIR)
        model.adapter.load_state_dict(weights, strict=True)
    model.eval()
    return {
        "best_step": st["best_step"],
        "best_valid": {tcfg.select_metric: st["best"]},
        "steps": st["step"],
        "epochs": batches.epoch_of(max(st["step"] * tcfg.grad_accum - 1, 0)) + 1,
        "stopped_early": stopped_early,
        "train_examples": len(train_split),
        "valid_examples": len(valid_split),
        "trainable_params": n_trainable,
        "total_params": n_total,
        "wall_time_s": wall,
        "losses": losses,
        "examples_per_s": seen_examples / wall if wall > 0 else None,
        "tokens_per_s": seen_tokens / wall if wall > 0 and seen_tokens else None,
        "evals": st["evals"],
    }


def _check_trainable(model: nn.Module, params: list[nn.Parameter]) -> None:
    """Every trainable parameter must live in model.adapter (the checkpoint holds nothing else)."""
    if not params:
        raise ValueError("model.trainable_parameters() is empty: nothing to train")
    enc = {id(p) for p in model.adapter.parameters()}
    outside = [p for p in params if id(p) not in enc]
    if outside:
        raise ValueError(
            f"{len(outside)} trainable parameters are outside model.adapter; checkpoints would lose them"
        )
    frozen_grad = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in enc]
    if frozen_grad:
        raise ValueError(f"parameters outside the adapter require grad: {frozen_grad[:3]}")


def _head_state(model: nn.Module) -> str:
    """ ", scale s, collab weight w" of an item_token head (its learned scalars), or ""."""
    if getattr(model, "answer", None) != "item_token":
        return ""
    adapter = model.adapter
    parts = []
    if hasattr(adapter, "log_scale"):
        parts.append(f"scale {float(adapter.log_scale.detach().exp()):.2f}")
    if getattr(adapter, "collab_weight", None) is not None:
        parts.append(f"collab weight {float(adapter.collab_weight.detach()):.3f}")
    return "; " + ", ".join(parts) if parts else ""


def _param_counts(model: nn.Module, params: list[nn.Parameter]) -> tuple[int, int]:
    report = model.parameter_report() if hasattr(model, "parameter_report") else None
    if isinstance(report, tuple | list) and len(report) == 2:
        return int(report[0]), int(report[1])
    if isinstance(report, dict) and {"trainable", "total"} <= set(report):
        return int(report["trainable"]), int(report["total"])
    return sum(p.numel() for p in params), sum(p.numel() for p in model.parameters())
