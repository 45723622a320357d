"""Glue for the command line: config + prepared data + features -> AMFRecModel; train, evaluate, recommend.

A run directory holds everything needed to rebuild the model: `config.yaml` (resolved AMFRec config plus the
data and feature folders it used) and `checkpoint/` (trainable weights, config, backbone identity).
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from amfrec import __version__
from amfrec.config.model import AMFRecConfig, AnswerHead, UserToken
from amfrec.data.dataset import PreparedData, Split
from amfrec.errors import AmfrecError
from amfrec.evaluate import candidate_metrics, evaluate
from amfrec.features.corrupt import corrupt_features, parse_corruption
from amfrec.features.store import load_features
from amfrec.io import write_json
from amfrec.llm.backbone import load_backbone
from amfrec.metrics import generation_metrics
from amfrec.model.build import build_amfrec, prompt_texts
from amfrec.model.collab import collab_run_from_features, load_collaborative
from amfrec.model.model import AMFRecModel
from amfrec.runs.baseline_run import train_baseline
from amfrec.runs.calibrate import calibrate
from amfrec.runs.ranks import inference_terms, ranks_record, write_ranks
from amfrec.runs.rundir import (
    load_run_config,
    metrics_record,
    resolve_config,
    run_info,
    run_log,
    write_run,
)
from amfrec.runs.scoring import (
    EVAL_BATCH,
    EVAL_BATCH_ITEM_TOKEN,
    choose_blend,
    fold_blend,
    parts_metrics,
    prompt_order,
)
from amfrec.training.checkpoint import CHECKPOINT_DIR, load_checkpoint, load_train_state, save_checkpoint
from amfrec.training.distributed import from_env, from_main, gather_rows, rank_share
from amfrec.training.train import train

log = logging.getLogger(__name__)

GATE_FILE = "gate_weights.json"


def build_model(
    cfg: AMFRecConfig, data: PreparedData, features_dir: Path, corrupt: str | None = None
) -> AMFRecModel:
    """Load the frozen backbone, the features and (for a user token) the frozen collaborative run; build the
    AMFRec model. corrupt: `MODALITY=noise|zero|shuffle`, that modality's features replaced (test time)."""
    features = load_features(features_dir, data.n_items, names=cfg.model.used_modalities)
    if corrupt is not None:
        name, how = parse_corruption(corrupt)
        features = corrupt_features(features, name, how, seed=cfg.train.seed)
        log.info("corrupted the %s features: %s", name, how.value)
    backbone = load_backbone(cfg.model.backbone, dtype=cfg.model.dtype.value)
    collab = None
    if cfg.model.user_token is not None:
        run = Path(cfg.model.collab_run) if cfg.model.collab_run else collab_run_from_features(features_dir)
        known = data.item_train_counts > 0  # (n_items + 1,): items whose collaborative rows were trained
        collab = load_collaborative(cfg.model.user_token.value, run, data.n_items, known).to(backbone.device)
        log.info("user token: the frozen %s of %s", cfg.model.user_token.value, run)
    texts = prompt_texts(data.items, cfg.model.item_text, cfg.model.item_tokens, backbone.tokenizer)
    model = build_amfrec(cfg.model, features, texts, backbone=backbone, collab=collab,
                         loss_items=cfg.train.loss_items, train_items=data.item_train_counts > 0)  # fmt: skip
    trainable, total = model.parameter_report()
    log.info(
        "AMFRec: %s trainable of %s parameters (%.3f%%)",
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / total,
    )
    return model


def ensure_collab_run(
    cfg: AMFRecConfig, data_dir: Path, features_dir: Path, seed: int, out: Path, limit: int | None
) -> None:
    """A sasrec_content user token that names no `model.collab_run`: train that run into OUT/sasrec_content
    now (once; `amfrec experiment` names the seed's shared run instead) and record its folder in `cfg`."""
    if cfg.model.user_token is not UserToken.SASREC_CONTENT or cfg.model.collab_run:
        return
    run = Path(out) / "sasrec_content"
    if not (run / "metrics.json").exists():
        if from_env().world > 1:
            raise AmfrecError(
                "model.collab_run: under torchrun, train the sasrec_content run first (amfrec train --model "
                "sasrec_content --features ...) and name its folder with --set model.collab_run=RUN"
            )
        log.info("user token sasrec_content: training its collaborative run into %s first", run)
        train_baseline("sasrec_content", data_dir, seed, run, None, limit=limit, features=features_dir)
    cfg.model.collab_run = str(run.resolve())


def _score(model: AMFRecModel, split: Split, desc: str, masks: dict[str, torch.Tensor] | None = None) -> dict:
    """Evaluate on `split` (rows sorted by prompt length; EVAL_BATCH_ITEM_TOKEN prompts per pass for the
    item_token head, EVAL_BATCH for the title head); with `masks`, the data's named slices of `split`
    (`PreparedData.slices`: the cold-start slice), also on those, and keep the (N,) ranks under "ranks"."""
    batch = EVAL_BATCH_ITEM_TOKEN if model.answer == "item_token" else EVAL_BATCH
    with torch.inference_mode():
        order = prompt_order(model, split)
        return evaluate(model, split, batch, desc, slices=masks, return_ranks=masks is not None, order=order)


def _score_shared(model: AMFRecModel, split: Split, desc: str, masks: dict[str, torch.Tensor]) -> dict:
    """``_score`` of every row of `split` with its (N,) ranks; under torchrun each rank scores its share
    (``rank_share``) and every rank gets every row's rank (``gather_rows``): one process's metrics."""
    ranks = from_env()
    if ranks.world == 1:
        return _score(model, split, desc, masks)
    t0 = time.perf_counter()
    mine = _score(model, split.subset(rank_share(ranks, len(split))), desc, {})["ranks"]  # (N_rank,)
    every = gather_rows(ranks, mine, len(split))  # (N,)
    return {**candidate_metrics(every, time.perf_counter() - t0, masks), "ranks": every}


def use_card(model_cfg, manifest: dict) -> None:
    """model.noun (and noun_plural) left unset: the data's card (manifest "card"), else "item"; the run's
    config.yaml then records the noun its prompts used."""
    if model_cfg.noun is None:
        card = manifest.get("card") or {}
        model_cfg.noun = card.get("noun") or "item"
        if not model_cfg.noun_plural and card.get("noun") == model_cfg.noun:
            model_cfg.noun_plural = card.get("noun_plural") or ""


def train_amfrec(
    data_dir: Path,
    features_dir: Path,
    config: str | Path | None,
    seed: int,
    out: Path,
    overrides: dict[str, Any] | None = None,
    limit: int | None = None,
    resume: bool = False,
    name: str | None = None,
) -> dict:
    """Train AMFRec, test the best checkpoint on the fixed candidates, write the run directory `out`.

    limit: evaluate valid/test on their first `limit` examples only (None = all).
    Under torchrun every rank trains its slice of each global batch, validates, calibrates and tests its share
    of the users; rank 0 makes the choices and writes (the other ranks return "test": None).
    name: the model name in the metrics files (default "amfrec", or "amfrec-no_llm" for the control).
    Returns {"test": record, "valid": record, "info": training summary, "out": out}.
    """
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    config_path = resolve_config(config)
    cfg = AMFRecConfig.from_yaml(config_path, {**(overrides or {}), "train.seed": seed})
    data = PreparedData.load(data_dir)
    use_card(cfg.model, data.manifest)
    if cfg.model.n_candidates != data.valid.candidates.shape[1]:
        raise AmfrecError(
            f"{config_path}: model.n_candidates = {cfg.model.n_candidates}, but {data_dir} has "
            f"{data.valid.candidates.shape[1]} candidates per example"
        )
    name = name or ("amfrec-no_llm" if cfg.model.no_llm else "amfrec")
    ensure_collab_run(cfg, data_dir, features_dir, seed, out, limit)

    def validate(m: AMFRecModel, part: Split) -> dict:  # under torchrun: this rank's share of the users
        return _score(m, part, "validate")

    ranks = from_env()  # under torchrun every rank trains, calibrates and scores its share; rank 0 writes
    with run_log(out) if ranks.is_main else nullcontext():
        model = build_model(cfg, data, features_dir)
        info = train(model, data, cfg, out, evaluate_fn=validate, resume=resume)  # ends on the best weights
        info.update(_fit_on_valid(model, data, cfg, out, limit))
        valid_part, test_part = data.valid.head(limit), data.test.head(limit)
        valid_slices, test_slices = data.slices(valid_part), data.slices(test_part)
        valid = _score_shared(model, valid_part, "valid", valid_slices)
        test = _score_shared(model, test_part, "test", test_slices)
        if not ranks.is_main:
            return {"test": None, "valid": None, "info": info, "out": out}
        wall = time.perf_counter() - t0
        run_config = {
            "model": {"name": "amfrec", **cfg.to_dict()["model"]},
            "train": cfg.to_dict()["train"],
            "run": {
                "model": "amfrec",
                "name": name,
                "seed": seed,
                "data": str(Path(data_dir).resolve()),
                "features": str(Path(features_dir).resolve()),
                "config_file": str(config_path),
                "eval_limit": limit,
                "amfrec_version": __version__,
                "backbone": model.backbone.identity,
            },
            "train_info": {k: v for k, v in info.items() if k not in ("evals", "losses")},
        }
        valid_rec = metrics_record(valid, "valid", seed, name, wall)
        test_rec = metrics_record(test, "test", seed, name, wall)
        write_json(out / "train_history.json", {"losses": info["losses"], "evals": info["evals"]})
        write_gate_weights(model, out / GATE_FILE, data.item_train_counts > 0)
        parts = {"valid": (valid, valid_part, valid_slices), "test": (test, test_part, test_slices)}
        terms = inference_terms(model)
        records = {split: ranks_record(m["ranks"], p, sl, data, split, seed, name, terms=terms)
                   for split, (m, p, sl) in parts.items()}  # fmt: skip
        write_run(out, run_config, test_rec, valid_rec, ranks=records)
        log.info(
            "%s seed %d: test hr@1 %.4f ndcg@10 %.4f (%.0f s, training %.0f s)",
            name, seed, test["hr@1"], test["ndcg@10"], wall, info["wall_time_s"],
        )  # fmt: skip
    return {"test": test_rec, "valid": valid_rec, "info": info, "out": out}


def _fit_on_valid(
    model: AMFRecModel, data: PreparedData, cfg: AMFRecConfig, out: Path, limit: int | None
) -> dict:
    """After training, on validation users only (no more than `limit`): the content term's weight
    (train.blend_examples), the content similarity and the new items' offset (train.calibrate_examples),
    saved into the best checkpoint; returns what it chose. Under torchrun rank 0 chooses, every rank
    applies its choice, rank 0 saves."""
    chosen, ranks = {}, from_env()

    def at_most(n: int) -> int:  # validation users: no more than --limit
        return min(n, limit or n)

    def save() -> None:
        if ranks.is_main:
            save_checkpoint(model, cfg, out / CHECKPOINT_DIR, load_train_state(out / CHECKPOINT_DIR))

    if cfg.train.blend_examples and model.adapter.collab_weight is not None:
        part = data.valid.head(at_most(cfg.train.blend_examples))
        chosen["content_weight"] = from_main(ranks, choose_blend(model, part) if ranks.is_main else None)
        fold_blend(model, chosen["content_weight"])
        save()
    if cfg.train.calibrate_examples and model.answer is AnswerHead.ITEM_TOKEN:
        found = calibrate(model, data, at_most(cfg.train.calibrate_examples))
        for name, value in found.items():
            setattr(cfg.model, name, value)
        chosen.update(found)
        save()
    return chosen


def write_gate_weights(model: AMFRecModel, path: Path, trained: torch.Tensor | None = None) -> None:
    """RUN/gate_weights.json: every item's modality weights (the gate's; mean fusion's equal shares), which
    modalities it has and, with `trained` ((n_items + 1,) bool), whether it had training interactions (false
    = a new item), for the report. Nothing is written for fusions without per-modality weights."""
    if model.prompt.tokens_per_item == 0:  # titles only (zero-shot): the item encoder is not used
        return
    with torch.inference_mode():
        _, _, weights = model.item_table()  # (n_items + 1, M) | None
    if weights is None:
        return
    enc = model.item_encoder
    present = torch.stack([getattr(enc, f"mask{i}") for i in range(len(enc.modalities))], -1)  # (n+1, M)
    write_json(
        path,
        {
            "modalities": list(enc.modalities),
            "fusion": enc.mode.value,
            "weights": [[round(w, 5) for w in row] for row in weights[1:].float().cpu().tolist()],
            "present": present[1:].cpu().tolist(),
            **({} if trained is None else {"trained": trained[1:].cpu().tolist()}),
        },
    )


def load_run(run: Path, corrupt: str | None = None) -> tuple[AMFRecModel, PreparedData, dict]:
    """Rebuild a trained AMFRec model from its run directory: (model, data, run config).

    corrupt: `MODALITY=noise|zero|shuffle` replaces that modality's features (see amfrec.features.corrupt).
    """
    run_cfg = load_run_config(run)
    if run_info(run)["model"] != "amfrec":
        raise AmfrecError(f"{run / 'config.yaml'}: not an AMFRec run (baselines are evaluated when trained)")
    weights, cfg, identity = load_checkpoint(run / CHECKPOINT_DIR)
    data = PreparedData.load(run_cfg["run"]["data"])
    model = build_model(cfg, data, Path(run_cfg["run"]["features"]), corrupt=corrupt)
    for key in ("name", "file_sha256", "revision", "fingerprint"):
        if identity.get(key) != model.backbone.identity.get(key):
            raise AmfrecError(
                f"{run / CHECKPOINT_DIR / 'backbone.json'}: trained on backbone {key} "
                f"{identity.get(key)!r}, but {model.backbone.identity.get(key)!r} was loaded"
            )
    model.adapter.load_state_dict(weights)
    return model, data, run_cfg


def evaluate_run(
    run: Path,
    split: str = "test",
    protocol: str = "score",
    limit: int | None = None,
    corrupt: str | None = None,
) -> dict:
    """Evaluate a trained run on its fixed candidates; writes RUN/<split>_<protocol>_metrics.json, or
    RUN/<split>_<protocol>_corrupt-<modality>-<how>_metrics.json with `corrupt` (then the record also holds
    the mean modality weights over the catalogue under "gate_mean"); the score protocol also writes the
    per-example ranks beside it (<stem>_ranks.json)."""
    t0 = time.perf_counter()
    model, data, run_cfg = load_run(run, corrupt=corrupt)
    part = (data.valid if split == "valid" else data.test).head(limit)
    seed = int(run_cfg["run"]["seed"])
    ranks = None
    if protocol == "score":
        slices = data.slices(part)
        metrics = _score(model, part, split, slices)
        rec = metrics_record(metrics, split, seed, "amfrec", time.perf_counter() - t0)
        name = run_cfg["run"].get("name", "amfrec")
        ranks = ranks_record(
            metrics["ranks"], part, slices, data, split, seed, name, terms=inference_terms(model)
        )
    elif protocol == "generate":
        if model.answer != "title":
            raise AmfrecError(
                f"{run}: --protocol generate needs a run trained with model.answer: title "
                f"(this one has {model.answer.value!r}; use --protocol score)"
            )
        outputs = generate_split(model, part)
        titles = model.titles  # what the prompt shows of each item (model.item_text, cut to item_tokens)
        metrics = generation_metrics(
            outputs,
            [[titles[i] for i in row] for row in part.candidates.tolist()],
            [titles[i] for i in part.target.tolist()],
        )
        rec = {**metrics, "n": len(part), "split": split, "seed": seed, "model": "amfrec"}
        rec["wall_time_s"] = round(time.perf_counter() - t0, 3)
    elif protocol == "parts":
        if model.answer != "item_token":
            raise AmfrecError(f"{run}: --protocol parts needs the item_token head (this run has 'title')")
        rec = {**parts_metrics(model, part), "split": split, "seed": seed, "model": "amfrec"}
        rec["wall_time_s"] = round(time.perf_counter() - t0, 3)
    else:
        raise AmfrecError(f"--protocol must be 'score', 'generate' or 'parts', got {protocol!r}")
    stem = f"{split}_{protocol}"
    if corrupt is not None:
        name, how = parse_corruption(corrupt)
        stem += f"_corrupt-{name}-{how.value}"
        rec["corrupt"] = f"{name}={how.value}"
        with torch.inference_mode():
            _, _, weights = model.item_table()  # (n_items + 1, M) | None
        if weights is not None:
            mods = model.item_encoder.modalities
            rec["gate_mean"] = dict(zip(mods, weights[1:].float().mean(0).tolist(), strict=True))
    if ranks is not None:
        write_ranks(run / f"{stem}_ranks.json", ranks)
    write_json(run / f"{stem}_metrics.json", rec)
    return rec


def generate_split(model: AMFRecModel, split: Split, batch_size: int = EVAL_BATCH) -> list[str]:
    """Greedy answers for every example of `split` (the LLaRA generation protocol)."""
    from tqdm import tqdm

    outputs: list[str] = []
    with torch.inference_mode():
        for start in tqdm(range(0, len(split), batch_size), desc="generate", unit="batch"):
            part = split.subset(list(range(start, min(start + batch_size, len(split)))))
            outputs.extend(model.generate(part.history.to(model.device), part.candidates.to(model.device)))
    return outputs
