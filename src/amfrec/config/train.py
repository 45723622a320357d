"""The training settings of AMFRec (`AMFRecConfig.train`): a validated dataclass, as the model's."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from amfrec.config.options import LossItems, _number, _positive_int, coerce_enum


@dataclass
class TrainConfig:
    # The recipe's schedule (model.positions "all"): 3 passes over every training target, 32 prompts a step,
    # validated on 1,000 users every 139 steps, early stopping (configs/quickstart.yaml shrinks it for a
    # 2-core demo). On amazon-scientific it stopped at 2.6-3 passes (RESULTS "Every position a target").
    # 3e-3: validation ndcg@10 0.7523 vs 0.7500 at lr 1e-3, changed together with model.query_head (ml-100k,
    # seed 1; mean over seeds 1-3 0.7478 vs 0.7441; RESULTS "Item-token head, SASRec user token,
    # collaborative score"). Only these two rates, on that design's SASRec user token; not re-validated.
    lr: float = 3e-3
    weight_decay: float = 0.01  # on matrices only (no decay on biases, norms, scalars), as nanoGPT
    betas: tuple[float, float] = (0.9, 0.95)
    # linear warm-up, then cosine decay to min_lr_ratio * lr at max_steps. 10: nothing found in RESULTS that
    # compares warm-up lengths; not a measured choice.
    warmup_steps: int = 10
    # Optimiser steps (each = grad_accum micro-batches of batch_size); when set, it ends training and
    # max_epochs is not read (the window recipe, positions "last": 200, a CPU budget). null = max_epochs.
    max_steps: int | None = None
    # Passes over every training target (fractions allowed), read when max_steps is null. 3: the LM saw
    # each target 2.6-3 times before validation stopped it on amazon-scientific (RESULTS "Every position a
    # target").
    max_epochs: float | None = 3.0
    min_lr_ratio: float = 0.1
    batch_size: int = 32  # prompts (positions "all") or windows ("last"): a CPU budget, not a quality choice
    grad_accum: int = 1
    clip: float = 1.0  # max global grad norm (0 disables)
    # Optimiser steps between validations. 139: half an amazon-scientific pass (278 steps of 32 prompts), so
    # that 3 passes and their validations fit 30 minutes on 2 cores; every 90 steps (a third) on 2,000 users
    # took 33.1 minutes, a quarter of it validating, and every 139 on 1,500 users 30.2 (RESULTS "The budget on
    # a quiet machine"). ml-100k (317 steps a pass) stopped at step 556 (best at 278): 22.4 minutes with the
    # item text at 8 tokens, 37.4 at 16. With 8 tokens amazon-scientific's 3 passes take 22.0 minutes.
    eval_every: int = 139
    # fixed random validation subset (None = the whole split). 1,000: all of ml-100k's 943 users; on
    # amazon-scientific a standard error of about 0.009 in ndcg@10 (0.02 on 200 users), and a 95% interval of
    # about ±0.004 for the paired difference of two runs of the recipe (±0.003 measured on 2,000), at 16-22 s
    # per validation on 2 cores (27-29 s on ml-100k). The calibration after training reads every validation
    # user.
    eval_examples: int | None = 1000
    select_metric: str = "ndcg@10"  # the validation metric that picks the best checkpoint
    # validations without improvement before stopping (0 = never stop early). 2: a whole pass without
    # progress at the half-pass cadence (3 at every third of a pass before). A budget, not a measured choice.
    patience: int = 2
    train_examples: int | None = None  # fixed random subset of the training windows (None = all)
    n_negatives: int = 19  # training negatives per example: n_negatives + 1 = n_candidates
    seed: int = 0
    # Training negatives are re-drawn every epoch (True) or drawn once (False).
    redraw_negatives: bool = True
    # Bitwise-repeatable training (torch.use_deterministic_algorithms while the loop runs): on the CPU the
    # gradient of an indexed item table (float32, several threads) adds its rows in a varying order, so two
    # runs of one seed parted at step 4 of 12; with this on they agree to the bit (RESULTS "Repeatable
    # training"). On CUDA it needs CUBLAS_WORKSPACE_CONFIG=:4096:8 in the environment (logged when unset).
    deterministic: bool = True
    # What the item_token head's softmax runs over (the title head always learns the target title).
    # catalogue: nothing found in RESULTS that compares it with candidates on validation (or test). Its rule
    # that items with no training interaction are no class: validation ndcg@10 0.5683 -> 0.5701
    # (amazon-scientific, new-item protocol, seed 3), a fix prompted by seed 3's test new slice (RESULTS "The
    # design search where content matters", second round).
    loss_items: LossItems = LossItems.CATALOGUE
    # After training (item_token with collab_score): the content term's weight against the collaborative
    # term, chosen among BLEND_GRID on the first blend_examples validation users (stacking); null = keep 1.
    blend_examples: int | None = None
    # After training (item_token): model.content_similarity, then model.new_item_offset (with items lacking a
    # trained id), chosen on the full-ranking ndcg@10 of the first calibrate_examples validation users and
    # kept only when clearly ahead of 0 (`runs/calibrate.py`); null = keep both. 10,000 = every validation
    # user of both data sets here: 2,000 refused the weight in 4 of 12 amazon-scientific runs although each
    # gained on validation at every weight tried (+0.0055 to +0.013 ndcg@10 at the best); all 8,442 kept it
    # where 2,000 had not (RESULTS "The content similarity on every validation user").
    calibrate_examples: int | None = 10000

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
        if self.max_steps is not None:
            _positive_int(self.max_steps, "train.max_steps", minimum=0)  # 0 = no training (zero-shot)
        elif self.max_epochs is None:
            raise ValueError("train.max_steps, train.max_epochs: one of them must be set (both are null)")
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
        for name in ("redraw_negatives", "deterministic"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"train.{name}: must be true or false, got {getattr(self, name)!r}")
        self.loss_items = coerce_enum(LossItems, self.loss_items, "train.loss_items")
        if self.blend_examples is not None:
            _positive_int(self.blend_examples, "train.blend_examples")
        if self.calibrate_examples is not None:
            _positive_int(self.calibrate_examples, "train.calibrate_examples")
