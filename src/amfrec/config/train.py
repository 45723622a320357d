"""The training settings of AMFRec (`AMFRecConfig.train`): a validated dataclass, as the model's."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from amfrec.config.options import LossItems, _number, _positive_int, coerce_enum


@dataclass
class TrainConfig:
    # The recipe's schedule: 200 steps of 16 windows (configs/quickstart.yaml shrinks it for a 2-core demo).
    # 3e-3: validation ndcg@10 0.7523 vs 0.7500 at lr 1e-3, changed together with model.query_head (ml-100k,
    # seed 1; mean over seeds 1-3 0.7478 vs 0.7441; RESULTS "Item-token head, SASRec user token,
    # collaborative score"). Only these two rates, on that design's SASRec user token; not re-validated.
    lr: float = 3e-3
    weight_decay: float = 0.01  # on matrices only (no decay on biases, norms, scalars), as nanoGPT
    betas: tuple[float, float] = (0.9, 0.95)
    # linear warm-up, then cosine decay to min_lr_ratio * lr at max_steps. 10: nothing found in RESULTS that
    # compares warm-up lengths; not a measured choice.
    warmup_steps: int = 10
    # optimiser steps (each = grad_accum micro-batches of batch_size). 200: a CPU budget, not a quality
    # choice. Validation ndcg@10 (200-user subset) is flat from step 50 (ml-100k, seed 1: 0.7647 at 50,
    # 0.7580 at 200; RESULTS "Item-token head, SASRec user token, collaborative score"), and 2,000 steps on
    # an H200 stayed flat too (0.754 first, 0.756 last; RESULTS "Why the frozen LM does not earn its cost").
    max_steps: int = 200
    # Passes over the training targets (fractions allowed); when set, it fixes max_steps. None = max_steps.
    max_epochs: float | None = None
    min_lr_ratio: float = 0.1
    batch_size: int = 16  # a CPU budget, not a quality choice; RESULTS compares no batch sizes
    grad_accum: int = 1
    clip: float = 1.0  # max global grad norm (0 disables)
    eval_every: int = 50  # optimiser steps between validations
    # fixed random validation subset (None = the whole split). 200: a CPU budget (the cost of each
    # validation), not a quality choice; nothing in RESULTS compares subset sizes.
    eval_examples: int | None = 200
    select_metric: str = "ndcg@10"  # the validation metric that picks the best checkpoint
    # validations without improvement before stopping (0 = never stop early). 3: nothing found in RESULTS
    # that compares patience values; not a measured choice.
    patience: int = 3
    train_examples: int | None = None  # fixed random subset of the training windows (None = all)
    n_negatives: int = 19  # training negatives per example: n_negatives + 1 = n_candidates
    seed: int = 0
    # Training negatives are re-drawn every epoch (True) or drawn once (False).
    redraw_negatives: bool = True
    # What the item_token head's softmax runs over (the title head always learns the target title).
    # catalogue: nothing found in RESULTS that compares it with candidates on validation (or test). Its rule
    # that items with no training interaction are no class: validation ndcg@10 0.5683 -> 0.5701
    # (amazon-scientific, new-item protocol, seed 3), a fix prompted by seed 3's test new slice (RESULTS "The
    # design search where content matters", second round).
    loss_items: LossItems = LossItems.CATALOGUE
    # After training (item_token with collab_score): the content term's weight against the collaborative
    # term, chosen among BLEND_GRID on the first blend_examples validation users (stacking); null = keep 1.
    blend_examples: int | None = None
    # After training (new_item_control): model.new_item_offset chosen on the full-ranking ndcg@10 of the first
    # calibrate_examples validation users (`runs/calibrate.py`); null = keep model.new_item_offset.
    calibrate_examples: int | None = None

    def __post_init__(self) -> None:
        self.lr = _number(self.lr, "train.lr", strict=True)
        self.weight_decay = _number(self.weight_decay, "train.weight_decay")
        if not isinstance(self.betas, Sequence) or len(self.betas) != 2:
            raise ValueError(f"train.betas: must be two numbers, got {self.betas!r}")
        b1, b2 = (_number(b, "train.betas") for b in self.betas)
        if b1 >= 1 or b2 >= 1:
            raise ValueError(f"train.betas: each must be in [0, 1), got {self.betas!r}")
        self.betas = (b1, b2)
        _positive_int(self.warmup_steps, "train.warmup_steps", minimum=0)
        _positive_int(self.max_steps, "train.max_steps", minimum=0)  # 0 = no training (zero-shot)
        if self.max_epochs is not None:
            self.max_epochs = _number(self.max_epochs, "train.max_epochs", strict=True)
        if self.max_steps and self.warmup_steps >= self.max_steps:
            raise ValueError(
                f"train.warmup_steps: {self.warmup_steps} must be < train.max_steps ({self.max_steps})"
            )
        self.min_lr_ratio = _number(self.min_lr_ratio, "train.min_lr_ratio")
        if self.min_lr_ratio > 1:
            raise ValueError(f"train.min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio!r}")
        _positive_int(self.batch_size, "train.batch_size")
        _positive_int(self.grad_accum, "train.grad_accum")
        self.clip = _number(self.clip, "train.clip")
        _positive_int(self.eval_every, "train.eval_every")
        if self.eval_examples is not None:
            _positive_int(self.eval_examples, "train.eval_examples")
        if not isinstance(self.select_metric, str) or not self.select_metric:
            raise ValueError(f"train.select_metric: must be a metric name, got {self.select_metric!r}")
        _positive_int(self.patience, "train.patience", minimum=0)
        if self.train_examples is not None:
            _positive_int(self.train_examples, "train.train_examples")
        _positive_int(self.n_negatives, "train.n_negatives")
        _positive_int(self.seed, "train.seed", minimum=0)
        if not isinstance(self.redraw_negatives, bool):
            raise ValueError(f"train.redraw_negatives: must be true or false, got {self.redraw_negatives!r}")
        self.loss_items = coerce_enum(LossItems, self.loss_items, "train.loss_items")
        if self.blend_examples is not None:
            _positive_int(self.blend_examples, "train.blend_examples")
        if self.calibrate_examples is not None:
            _positive_int(self.calibrate_examples, "train.calibrate_examples")
