"""AMFRec training loop (nanoGPT style).

The model (`amfrec.model.model.AMFRecModel` or anything with the same interface) provides:
  `model(history (B, L), candidates (B, C), target (B,)) -> output with .loss` (scalar, to minimise),
  `model.trainable_parameters()` (the only parameters the optimiser sees), `model.parameter_report()`,
  `model.adapter` (an nn.Module holding every trainable parameter: its state_dict is the checkpoint).

Loop: AdamW (weight decay on matrices only); linear warm-up then cosine decay (`lr_at`); gradient
accumulation; global grad-norm clipping; every `eval_every` steps `evaluate_fn(model, split)` on a fixed
random validation subset, keeping the best checkpoint by `select_metric` (ndcg@10); early stopping after
`patience` validations without improvement. Batches and negatives: `amfrec.training.sampling`. With
`deterministic` (the default) the loop runs on deterministic kernels, so a seed repeats its run to the bit.

Files under `out` (`amfrec.training.checkpoint`): checkpoint/ (the best), last/ (the latest validation, which
`resume=True` continues from). At the end the best weights are loaded back into the model. `max_steps: 0`
trains nothing and saves the initial adapter (the zero-shot LM).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from amfrec.config.model import AMFRecConfig, TrainConfig
from amfrec.data.dataset import PreparedData, Split
from amfrec.hardware import deterministic_algorithms
from amfrec.training.checkpoint import (
    CHECKPOINT_DIR,
    LAST_DIR,
    STATE_FILE,
    TRAINABLE_FILE,
    load_checkpoint,
    load_train_state,
    save_checkpoint,
)
from amfrec.training.distributed import (
    Ranks,
    average_gradients,
    barrier,
    from_env,
    mean_over_ranks,
    rank_share,
    shard,
)
from amfrec.training.sampling import ChunkBatches, TrainBatches

log = logging.getLogger(__name__)
LOOP_FORMAT = "amfrec-train-state/1"
SINGLE = Ranks()  # one process


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
    Under torchrun (`amfrec.training.distributed`) every rank trains on its slice of each global batch with
    averaged gradients and validates its share of the users (`_validate`); only rank 0 writes.
    """
    ranks = from_env()
    full_cfg = cfg if isinstance(cfg, AMFRecConfig) else None
    tcfg = cfg.train if isinstance(cfg, AMFRecConfig) else cfg
    out = Path(out)
    params = list(model.trainable_parameters())
    _check_trainable(model, params)
    n_trainable, n_total = _param_counts(model, params)
    train_split = data.train.sample(tcfg.train_examples, tcfg.seed)
    valid_split = data.valid.sample(tcfg.eval_examples, tcfg.seed + 1)
    batches = make_batches(model, train_split, data.n_items, tcfg)
    tcfg = steps_for_epochs(tcfg, batches.per_epoch)
    opt = make_optimizer(params, tcfg)
    st = _restore(model, opt, out) if resume else _fresh_state()

    def save(name: str) -> None:
        if ranks.is_main:
            snapshot = {"optimizer": opt.state_dict(), "train": st, "format": LOOP_FORMAT, **_rng_state()}
            save_checkpoint(model, full_cfg, out / name, snapshot)

    if tcfg.max_steps == 0 and not resume:  # no training (zero-shot): the initial adapter is the model
        save(CHECKPOINT_DIR)
    log.info("training on %d targets (%d micro-batches of %d %s an epoch), %d steps, validation on %d",
             len(train_split), batches.per_epoch, tcfg.batch_size, _unit(model), tcfg.max_steps,
             len(valid_split))  # fmt: skip
    model.train()
    t0, counts, losses, stopped_early = time.perf_counter(), {"examples": 0, "tokens": 0}, [], False
    seen0 = (st.get("targets", 0), st.get("wall_s", 0.0))  # what a resumed run had seen before
    bar = _progress_bar(tcfg.max_steps, st["step"], ranks.is_main)
    with deterministic_algorithms(tcfg.deterministic, params[0].device):
        while st["step"] < tcfg.max_steps:
            loss, lr, grad_norm = _train_step(model, opt, params, batches, st["step"], tcfg, counts, ranks)
            st["step"] += 1
            losses.append(loss)
            st["targets"], st["wall_s"] = seen0[0] + counts["examples"], seen0[1] + time.perf_counter() - t0
            _show_progress(bar, loss, lr, grad_norm, counts, time.perf_counter() - t0)
            due = st["step"] % tcfg.eval_every == 0 or st["step"] == tcfg.max_steps
            if due and _validate(model, evaluate_fn, valid_split, tcfg, st, loss, save, ranks):  # ranks alike
                stopped_early = True
                break
    bar.close()
    wall = time.perf_counter() - t0
    barrier(ranks)  # rank 0's last checkpoint is on disk before anyone reads it
    if (out / CHECKPOINT_DIR / TRAINABLE_FILE).is_file():
        weights, _, _ = load_checkpoint(out / CHECKPOINT_DIR)
        model.adapter.load_state_dict(weights, strict=True)
    model.eval()
    return {
        "best_step": st["best_step"],
        "best_valid": {tcfg.select_metric: st["best"]},
        "steps": st["step"],
        "epochs": st["step"] * tcfg.grad_accum / batches.per_epoch,  # fractional: passes over the targets
        "stopped_early": stopped_early,
        "train_examples": len(train_split),
        "valid_examples": len(valid_split),
        "trainable_params": n_trainable,
        "total_params": n_total,
        "wall_time_s": wall,
        "losses": losses,
        "examples_per_s": counts["examples"] / wall if wall > 0 else None,
        "tokens_per_s": counts["tokens"] / wall if wall > 0 and counts["tokens"] else None,
        "evals": st["evals"],
    }


def steps_for_epochs(tcfg: TrainConfig, per_epoch: int) -> TrainConfig:
    """``tcfg`` with max_steps (and, when it would not fit, warmup_steps) from ``max_epochs`` passes over the
    training targets of ``per_epoch`` micro-batches each; ``tcfg`` itself when max_steps is set."""
    if tcfg.max_steps is not None:
        return tcfg
    steps = max(math.ceil(tcfg.max_epochs * per_epoch / tcfg.grad_accum), 1)
    return dataclasses.replace(tcfg, max_steps=steps, warmup_steps=min(tcfg.warmup_steps, steps - 1))


def _unit(model: nn.Module) -> str:
    return "prompts" if _chunked(model) else "windows"


def _chunked(model: nn.Module) -> bool:
    """Whether the model trains on chunks (``model.positions`` "all": every window of a prompt a target)."""
    return str(getattr(model, "positions", "last")) == "all"


def make_batches(
    model: nn.Module, split: Split, n_items: int, tcfg: TrainConfig
) -> TrainBatches | ChunkBatches:
    """The micro-batch stream: chunks of up to ``model.max_len`` windows per prompt (positions "all"), else
    one window per prompt."""
    if _chunked(model):
        return ChunkBatches(split, n_items, tcfg, getattr(model, "max_len", None) or 10)
    return TrainBatches(split, n_items, tcfg)


def _fresh_state() -> dict:
    """The loop state of a new run (saved with every checkpoint; `_restore` reads it back)."""
    return {"step": 0, "best": None, "best_step": None, "bad_evals": 0, "evals": []}


def _restore(model: nn.Module, opt: torch.optim.Optimizer, out: Path) -> dict:
    """Weights, optimizer and loop state from out/last (else out/checkpoint); returns the loop state."""
    src = out / LAST_DIR if (out / LAST_DIR / STATE_FILE).is_file() else out / CHECKPOINT_DIR
    weights, _, _ = load_checkpoint(src)
    model.adapter.load_state_dict(weights, strict=True)
    saved = load_train_state(src)
    opt.load_state_dict(saved["optimizer"])
    if saved.get("torch_rng") is not None:  # the random draws (modality dropout) go on as they would have
        torch.set_rng_state(saved["torch_rng"])
    if saved.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(saved["cuda_rng"])
    log.info("resumed from %s at step %d", src, saved["train"]["step"])
    return saved["train"]


def _rng_state() -> dict:
    """torch's random state, saved beside the loop state: a resumed run draws what the run would have."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    return {"torch_rng": torch.get_rng_state(), "cuda_rng": torch.cuda.get_rng_state() if cuda else None}


def _train_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    params: list[nn.Parameter],
    batches: TrainBatches,
    step: int,
    tcfg: TrainConfig,
    counts: dict[str, int],
    ranks: Ranks | None = None,
) -> tuple[float, float, float]:
    """One optimiser step over `grad_accum` micro-batches -> (mean loss, lr, grad norm before clipping).

    With several ranks each reads its slice of every micro-batch and the gradients are averaged."""
    lr = lr_at(step, tcfg)
    for group in opt.param_groups:
        group["lr"] = lr
    device = params[0].device
    loss_sum = 0.0
    for micro in range(tcfg.grad_accum):
        batch = batches[step * tcfg.grad_accum + micro]
        history, cands, target, *lengths = shard(ranks or SINGLE, *batch)  # lengths: [(B,)] with chunks
        output = model(history.to(device), cands.to(device), target.to(device), *lengths)
        if not torch.isfinite(output.loss):
            raise FloatingPointError(f"training loss is {output.loss.item()} at step {step}")
        # chunks give the ranks unequal numbers of targets: weight each rank's mean by its share, so that the
        # ranks' averaged gradient is the whole micro-batch's mean (1 with one process or equal shares)
        share = (ranks or SINGLE).world * target.shape[0] / batch[2].shape[0]
        (output.loss * share / tcfg.grad_accum).backward()
        loss_sum += output.loss.item()
        counts["examples"] += target.shape[0]
        counts["tokens"] += int(getattr(output, "n_tokens", 0) or 0)
    average_gradients(ranks or SINGLE, params)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, tcfg.clip if tcfg.clip > 0 else float("inf"))
    opt.step()
    opt.zero_grad(set_to_none=True)
    log.debug("step %d loss %.4f lr %.3e grad_norm %.3f", step + 1, loss_sum / tcfg.grad_accum, lr, grad_norm)
    return loss_sum / tcfg.grad_accum, lr, float(grad_norm)


def _progress_bar(total: int, done: int, show: bool) -> tqdm:
    return tqdm(total=total, initial=done, desc="train", unit="step", dynamic_ncols=True, disable=not show)


def _show_progress(
    bar, loss: float, lr: float, grad_norm: float, counts: dict[str, int], elapsed: float
) -> None:
    rate = {"tgt/s": f"{counts['examples'] / elapsed:.1f}"}
    if counts["tokens"]:
        rate["tok/s"] = f"{counts['tokens'] / elapsed:.0f}"
    bar.update(1)
    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", gnorm=f"{grad_norm:.2f}", **rate)


def _validate(
    model: nn.Module,
    evaluate_fn: Callable[[nn.Module, Split], dict],
    valid_split: Split,
    tcfg: TrainConfig,
    st: dict,
    loss: float,
    save: Callable[[str], None],
    ranks: Ranks = SINGLE,
) -> bool:
    """Evaluate this rank's share of `valid_split`, keep the best checkpoint and the latest; return True when
    patience has run out. Under torchrun the metric is the mean over every rank's users, so every rank keeps
    the same loop state; only rank 0 logs (and `save` writes only there)."""
    valid_split = valid_split.subset(rank_share(ranks, len(valid_split)))  # this rank's users
    value = float("nan")
    if len(valid_split) or ranks.world == 1:  # a rank holds no user when there are fewer users than ranks
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
    value, step = mean_over_ranks(ranks, value, len(valid_split)), st["step"]
    improved = st["best"] is None or value > st["best"]
    seen = {"targets": st.get("targets"), "wall_s": st.get("wall_s")}  # targets trained on, training seconds
    st["evals"].append({"step": step, "loss": loss, tcfg.select_metric: value, **seen})
    if improved:
        st["best"], st["best_step"], st["bad_evals"] = value, step, 0
        save(CHECKPOINT_DIR)
    else:
        st["bad_evals"] += 1
    save(LAST_DIR)
    stop = bool(tcfg.patience and st["bad_evals"] >= tcfg.patience)
    if ranks.is_main:
        log.info("step %d: valid %s %.4f (best %.4f at step %d)%s%s", step, tcfg.select_metric, value,
                 st["best"], st["best_step"], "" if improved else f", {st['bad_evals']} without improvement",
                 _head_state(model))  # fmt: skip
        if stop:
            log.info("early stop at step %d: %d validations without improvement", step, st["bad_evals"])
    return stop


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
    """(trainable, total) parameter counts, logged."""
    trainable, total = _counts(model, params)
    log.info("parameters: %s trainable of %s total (%.4f%%)", f"{trainable:,}", f"{total:,}",
             100 * trainable / max(total, 1))  # fmt: skip
    return trainable, total


def _counts(model: nn.Module, params: list[nn.Parameter]) -> tuple[int, int]:
    report = model.parameter_report() if hasattr(model, "parameter_report") else None
    if isinstance(report, tuple | list) and len(report) == 2:
        return int(report[0]), int(report[1])
    if isinstance(report, dict) and {"trainable", "total"} <= set(report):
        return int(report["trainable"]), int(report["total"])
    return sum(p.numel() for p in params), sum(p.numel() for p in model.parameters())
