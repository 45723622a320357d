"""The stages `amfrec bench-scale` times, each meant to run in a fresh process (`measure`), on synthetic data.

Synthetic data (`write_synthetic`): RecBole atomic files with power-law item popularity (p(rank r) ~ 1 / r)
and users of 5-50 interactions. Stage functions take keyword arguments (paths, counts), do their work and
return the seconds of their timed part: data loading and model building are not timed for the training
steps, but the peak memory (the child's `ru_maxrss`) covers the whole child.
"""

from __future__ import annotations

import resource
import sys
import time
import traceback
from pathlib import Path

import numpy as np

WARMUP_STEPS = 1  # untimed: first-call allocations and lazy initialisation
SASREC_FEATURE_STEPS = 8  # the `features` stage's SASRec: a fixed number of batches, not an epoch
TINY_TEXT = (
    "A user with the taste watched these movies movie oldest first The next is item This has in previous "
    "Please predict will watch Choose answer from following titles Answer"
)  # the words of the tiny LM's vocabulary (others read as <unk>)


# ------------------------------------------------------------------------------------------ synthetic data
def write_synthetic(folder: Path, n_interactions: int, n_items: int, seed: int = 0) -> dict:
    """Write `folder/scale.inter` and `folder/scale.item`: about `n_interactions` interactions over at most
    `n_items` items (ids 1..n_items; popularity ~ 1 / rank, ranks shuffled over the ids), users of 5-50
    interactions (uniform), timestamps increasing per user. Returns {"users", "interactions", "items"}."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 51, size=n_interactions // 5 + 1)  # (U_max,) more than enough users
    ends = np.cumsum(lengths)
    n_users = max(int(np.searchsorted(ends, n_interactions)), 1)  # users whose whole sequence fits
    lengths = lengths[:n_users]
    total = int(lengths.sum())
    p = 1.0 / np.arange(1, n_items + 1)  # (n_items,) power law over popularity ranks
    ids = rng.permutation(n_items)[rng.choice(n_items, size=total, p=p / p.sum())] + 1  # (total,)
    users = np.repeat(np.arange(n_users), lengths)  # (total,)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    stamps = 1_000_000 + np.arange(total) - starts  # (total,) 0.. per user, shifted
    folder.mkdir(parents=True, exist_ok=True)
    inter = np.stack([users, ids, stamps], axis=1)
    np.savetxt(folder / "scale.inter", inter, fmt="%d", delimiter="\t", comments="",
               header="user_id:token\titem_id:token\ttimestamp:float")  # fmt: skip
    with (folder / "scale.item").open("w", encoding="utf-8") as f:
        f.write("item_id:token\ttitle:token_seq\n")
        f.writelines(f"{i}\titem {i}\n" for i in range(1, n_items + 1))
    return {"users": n_users, "interactions": total, "items": int(len(np.unique(ids)))}


def make_tiny_lm(path: Path) -> Path:
    """Save a tiny random Llama (2 layers, hidden 32) and a word-level tokenizer to `path`: the AMFRec
    step's backbone (the point is how the step grows with the data, not the LM's cost)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>", *sorted(set(TINY_TEXT.split())), *".,:;!?()[]'\"-&/", *"0123456789"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1,
        eos_token_id=2, pad_token_id=None,
    )  # fmt: skip
    torch.manual_seed(0)
    path.mkdir(parents=True, exist_ok=True)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# ------------------------------------------------------------------------------------------ the stages
def timed_median(times: list[float]) -> float:
    """The median of the repetitions after the first WARMUP_STEPS (of all of them if there are no more):
    robust to a busy machine's stalls."""
    return float(np.median(times[WARMUP_STEPS:] or times))


def stage_prepare(raw: str, prepared: str) -> float:
    """`amfrec.data.prepare.prepare` of the synthetic files (the whole call is timed)."""
    from amfrec.data.prepare import prepare

    t0 = time.perf_counter()
    prepare(Path(raw), Path(prepared), seed=1)
    return time.perf_counter() - t0


def stage_features(prepared: str, features: str, work: str, batch_size: int) -> float:
    """The id features: a SASRec trained for SASREC_FEATURE_STEPS batches, its item table saved, then
    `build_features` (id from that run, plus random 16-d text and image vectors imported, which the content
    models read). Everything after loading the data is timed."""
    from amfrec.baselines.sequential import SASRec, SASRecConfig
    from amfrec.data.dataset import PreparedData
    from amfrec.features.build import build_features

    data = PreparedData.load(prepared)
    t0 = time.perf_counter()
    model = SASRec(SASRecConfig(batch_size=batch_size))
    _sequential_steps(model, data, SASREC_FEATURE_STEPS)
    model.save(Path(work) / "sasrec")
    specs = _random_vectors(data, Path(work), ("text", "image"), dim=16)
    build_features(Path(prepared), Path(features), modalities=["id", "text", "image"],
                   id_from=Path(work) / "sasrec", import_specs=specs)  # fmt: skip
    return time.perf_counter() - t0


def _random_vectors(data, work: Path, names: tuple[str, ...], dim: int) -> dict:
    """Import specs of random (n_items, dim) float32 matrices, one per name, over every item id."""
    import json

    ids = work / "ids.json"
    ids.write_text(json.dumps([it.item_id for it in data.items[1:]]))
    rng = np.random.default_rng(0)
    specs = {}
    for name in names:
        np.save(work / f"{name}.npy", rng.standard_normal((data.n_items, dim)).astype(np.float32))
        specs[name] = {"matrix": work / f"{name}.npy", "ids": ids}
    return specs


def _sequential_steps(model, data, steps: int, seed: int = 0) -> float:
    """`steps` optimiser steps of the shared SASRec/GRU4Rec trainer's loss on random training batches;
    their `timed_median` seconds.

    The trainer has no step-level entry point (`fit` runs whole epochs plus validation), so this builds the
    network and calls its loss as `fit` does."""
    import torch

    if model.config.num_threads is not None:  # as `fit` does
        torch.set_num_threads(model.config.num_threads)
    torch.manual_seed(seed)
    net = model._build(data.n_items, data.max_len)
    opt = torch.optim.Adam(net.parameters(), lr=model.config.lr)
    net.train()
    gen = torch.Generator().manual_seed(seed)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        idx = torch.randint(len(data.train), (model.config.batch_size,), generator=gen)  # (B,)
        loss = model._loss(data.train.history[idx], data.train.target[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return timed_median(times)


def stage_step(model: str, prepared: str, features: str, steps: int, batch_size: int) -> float:
    """One training step of a baseline (the median of `steps` after a warm-up one); for the models that train
    nothing (popularity, content_knn) `fit`. Data loading and (for content models) features not timed."""
    from amfrec.baselines.content import ContentKNN, SASRecContent, SASRecContentConfig, load_content
    from amfrec.baselines.popularity import Popularity
    from amfrec.baselines.sequential import (
        BERT4Rec,
        BERT4RecConfig,
        GRU4Rec,
        GRU4RecConfig,
        SASRec,
        SASRecConfig,
    )
    from amfrec.data.dataset import PreparedData

    data = PreparedData.load(prepared)
    if model in ("popularity", "content_knn"):
        rec = Popularity() if model == "popularity" else ContentKNN()
        if model == "content_knn":
            rec.use_features(load_content(features, data.n_items, rec.config.modalities))
        t0 = time.perf_counter()
        rec.fit(data, seed=1)
        return time.perf_counter() - t0
    if model == "sasrec_content":
        rec = SASRecContent(SASRecContentConfig(batch_size=batch_size))
        rec.use_features(load_content(features, data.n_items, rec.config.modalities))
        rec.seen = data.item_train_counts > 0  # as `fit` sets it
        rec.seen[0] = False
    else:
        cls, cfg = {
            "sasrec": (SASRec, SASRecConfig),
            "gru4rec": (GRU4Rec, GRU4RecConfig),
            "bert4rec": (BERT4Rec, BERT4RecConfig),
        }[model]
        rec = cls(cfg(batch_size=batch_size))
    return _sequential_steps(rec, data, WARMUP_STEPS + steps)


def stage_amfrec_step(prepared: str, features: str, backbone: str, no_llm: bool, steps: int) -> float:
    """One AMFRec training step (the packaged recipe, catalogue softmax, with the id features' SASRec as the
    user token and score where the recipe reads a sasrec_content run, which the bench does not train) on the
    tiny LM at `backbone`, or the no_llm control: median seconds of `steps` after a warm-up one."""
    import torch

    from amfrec.config.model import AMFRecConfig
    from amfrec.data.dataset import PreparedData
    from amfrec.runs.amfrec_run import build_model
    from amfrec.runs.rundir import resolve_config
    from amfrec.training.sampling import TrainBatches
    from amfrec.training.train import make_optimizer

    overrides = {"model.backbone": backbone, "model.dtype": "float32", "model.lm_layers": None,
                 "model.no_llm": no_llm, "model.user_token": "sasrec", "train.seed": 0}  # fmt: skip
    cfg = AMFRecConfig.from_yaml(resolve_config(None), overrides)
    data = PreparedData.load(prepared)
    torch.manual_seed(0)
    model = build_model(cfg, data, Path(features))
    model.train()
    params = list(model.trainable_parameters())
    opt = make_optimizer(params, cfg.train)
    batches = TrainBatches(data.train, data.n_items, cfg.train)
    times = []
    for i in range(WARMUP_STEPS + steps):
        t0 = time.perf_counter()
        history, cands, target = batches[i]
        model(history, cands, target).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return timed_median(times)


def stage_rank(n_items: int, k: int = 10, repeats: int = 5) -> float:
    """One catalogue ranking through the Recommender contract: a SASRec (random weights) over `n_items`
    items scores every item for one 10-item history, the history is masked out, `torch.topk` takes the top
    k. Median seconds of `repeats` after a warm-up one (the network build is not timed)."""
    import torch

    from amfrec.baselines.sequential import SASRec

    max_len = 10
    model = SASRec()
    torch.manual_seed(0)
    model._build(n_items, max_len)
    history = torch.randint(1, n_items + 1, (1, max_len))  # (1, L)
    catalogue = torch.arange(1, n_items + 1).unsqueeze(0)  # (1, n_items)
    times = []
    for _ in range(WARMUP_STEPS + repeats):
        t0 = time.perf_counter()
        scores = model.score(history, catalogue)[0]  # (n_items,)
        scores[history[0] - 1] = float("-inf")  # seen items (catalogue column = index - 1)
        torch.topk(scores, min(k, n_items)).indices.add_(1)
        times.append(time.perf_counter() - t0)
    return timed_median(times)


def stage_floor() -> float:
    """Nothing but the imports every stage pays (torch, amfrec): the memory floor of a stage process."""
    import torch  # noqa: F401

    import amfrec.runs.amfrec_run  # noqa: F401

    return 0.0


STAGES = {
    "floor": stage_floor,
    "prepare": stage_prepare,
    "features": stage_features,
    "step": stage_step,
    "amfrec_step": stage_amfrec_step,
    "rank": stage_rank,
}


# ------------------------------------------------------------------------------------------ measurement
def peak_rss_mib() -> float:
    """This process's peak resident memory so far, MiB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def measure(stage: str, kwargs: dict, conn) -> None:
    """Child-process entry (multiprocessing spawn): run STAGES[stage](**kwargs) and send back
    {"seconds", "peak_mib", "grew_mib"} (grew = the peak's growth during the stage, after the imports) or
    {"error": traceback text}."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.set_num_threads(kwargs.pop("threads", torch.get_num_threads()))
    try:
        before = peak_rss_mib()
        seconds = STAGES[stage](**kwargs)
        peak = peak_rss_mib()
        conn.send({"seconds": float(seconds), "peak_mib": peak, "grew_mib": peak - before})
    except BaseException:  # noqa: BLE001 - the parent reports it
        conn.send({"error": traceback.format_exc()})
    finally:
        conn.close()
