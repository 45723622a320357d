"""End to end on real data: ml-100k, SASRec id vectors + user token, MiniLM text, ResNet-50 posters, SmolLM2.

One short AMFRec training (the quickstart recipe: item_token head) through the command line; the run
directory is checked, training lowers the loss on training windows against the untrained model, the
checkpoint reloads to the very same scores, and `recommend` shows gate weights and ranks the catalogue. A
second tiny run with the title head serves the generation protocol.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from amfrec.cli.main import main
from amfrec.errors import AmfrecError
from amfrec.features.build import build_features
from amfrec.runs.amfrec_run import build_model, evaluate_run, load_run
from amfrec.runs.baseline_run import train_baseline
from amfrec.runs.ranker import Ranker
from amfrec.training.checkpoint import load_checkpoint

pytestmark = pytest.mark.e2e

LIMIT = 16  # valid/test examples scored
# Two passes over 96 training windows: after one pass (12 steps) the loss had fallen by only ~0.003 on an AMX
# machine in bfloat16 (within noise, in either dtype; the recipe's curves match, docs/RESULTS.md).
SMALL = (
    "train.max_steps=24",
    "train.warmup_steps=2",
    "train.batch_size=8",
    "train.train_examples=96",
    "train.eval_every=24",
    "train.eval_examples=16",
)


def _train(prepared: Path, features: Path, run: Path, overrides: tuple[str, ...]) -> Path:
    args = ["train", "--model", "amfrec", "--data", str(prepared), "--features", str(features)]
    args += ["--config", "quickstart", "--seed", "1", "--out", str(run), "--limit", str(LIMIT)]
    for override in overrides:
        args += ["--set", override]
    assert main(args) == 0
    return run


@pytest.fixture(scope="module")
def amfrec_run(prepared_ml100k: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("e2e")
    train_baseline("sasrec", prepared_ml100k, 1, root / "sasrec", {"max_epochs": 1}, limit=LIMIT)
    build_features(prepared_ml100k, root / "F", modalities=["id", "text", "image"], id_from=root / "sasrec")
    return _train(prepared_ml100k, root / "F", root / "amfrec", SMALL)


@pytest.fixture(scope="module")
def title_run(amfrec_run: Path, prepared_ml100k: Path) -> Path:
    title = ("model.answer=title", "model.prompt_candidates=true", "model.user_token=null")
    title += ("model.collab_score=false", "model.query_head=false")
    title += ("train.max_steps=3", "train.warmup_steps=1", "train.eval_every=3")
    title += ("train.batch_size=2", "train.eval_examples=2")
    return _train(prepared_ml100k, amfrec_run.parent / "F", amfrec_run.parent / "title", title)


def test_run_directory(amfrec_run: Path) -> None:
    metrics = json.loads((amfrec_run / "metrics.json").read_text())
    valid = json.loads((amfrec_run / "valid_metrics.json").read_text())
    for rec, split in ((metrics, "test"), (valid, "valid")):
        assert rec["split"] == split and rec["model"] == "amfrec" and rec["n"] == LIMIT and rec["seed"] == 1
        for key in ("hr@1", "hr@3", "hr@5", "hr@10", "ndcg@3", "ndcg@5", "ndcg@10", "mrr", "wall_time_s"):
            assert key in rec
        assert 0 <= rec["hr@1"] <= rec["hr@5"] <= rec["hr@10"] <= 1
    assert (amfrec_run / "config.yaml").is_file()
    for name in ("trainable.safetensors", "config.yaml", "backbone.json"):
        assert (amfrec_run / "checkpoint" / name).is_file()
    losses = json.loads((amfrec_run / "train_history.json").read_text())["losses"]
    assert len(losses) == 24 and all(np.isfinite(losses))


def test_training_lowers_the_loss_on_real_data(amfrec_run: Path) -> None:
    """The trained adapter's catalogue loss on the windows it trained on is below the untrained one's."""
    trained, data, run_cfg = load_run(amfrec_run)
    _, cfg, _ = load_checkpoint(amfrec_run / "checkpoint")
    torch.manual_seed(1)
    fresh = build_model(cfg, data, Path(run_cfg["run"]["features"]))
    part = data.train.sample(cfg.train.train_examples, cfg.train.seed)  # as the trainer drew it
    cands = torch.cat([part.target[:, None], part.target[:, None] % data.n_items + 1], 1)  # not in the loss
    with torch.no_grad():
        after = trained(part.history, cands, part.target).lm_loss.item()
        before = fresh(part.history, cands, part.target).lm_loss.item()
    assert after < before, (before, after)


def test_checkpoint_reloads_to_identical_scores(amfrec_run: Path) -> None:
    saved = json.loads((amfrec_run / "metrics.json").read_text())
    again = evaluate_run(amfrec_run, split="test", protocol="score", limit=LIMIT)
    for key in ("hr@1", "hr@5", "ndcg@10", "mrr"):
        assert again[key] == saved[key]


def test_recommend_shows_gate_weights_and_absent_posters(amfrec_run: Path, prepared_ml100k: Path) -> None:
    features = amfrec_run.parent / "F"
    present = np.load(features / "image.mask.npy")
    items = [json.loads(line)["item_id"] for line in (prepared_ml100k / "items.jsonl").open()]
    no_poster = [items[i - 1] for i in range(1, len(items) + 1) if not present[i]][:3]
    with_poster = [items[i - 1] for i in range(1, len(items) + 1) if present[i]][:17]
    rows = Ranker.load(amfrec_run).rank(["50", "172", "181"], candidates=no_poster + with_poster)
    assert len(rows) == 20
    scores = [r["score"] for r in rows]
    assert scores == sorted(scores, reverse=True)
    for row in rows:
        assert set(row["gate"]) == {"id", "text", "image"}
        assert sum(row["gate"].values()) == pytest.approx(1.0, abs=1e-3)
        if row["item_id"] in no_poster:
            assert row["gate"]["image"] == 0.0
        else:
            assert row["gate"]["image"] > 0.0


def test_recommend_ranks_the_catalogue_without_candidates(amfrec_run: Path) -> None:
    rows = Ranker.load(amfrec_run).rank(["50", "172", "181"])
    ids = [r["item_id"] for r in rows]
    assert len(ids) == len(set(ids)) == 1682 - 3 and not {"50", "172", "181"} & set(ids)
    scores = [r["score"] for r in rows]
    assert scores == sorted(scores, reverse=True)


def test_generation_protocol(title_run: Path, amfrec_run: Path) -> None:
    rec = evaluate_run(title_run, split="valid", protocol="generate", limit=2)
    assert rec["n"] == 2 and rec["split"] == "valid"
    assert 0.0 <= rec["gen_hr@1"] <= rec["valid_ratio"] <= 1.0
    assert (title_run / "valid_generate_metrics.json").is_file()
    with pytest.raises(AmfrecError, match="model.answer: title"):
        evaluate_run(amfrec_run, split="valid", protocol="generate", limit=2)


def test_sasrec_run_reloads_to_identical_metrics(amfrec_run: Path) -> None:
    from amfrec.runs.baseline_run import evaluate_baseline_run

    run = amfrec_run.parent / "sasrec"
    saved = json.loads((run / "metrics.json").read_text())
    again = evaluate_baseline_run(run, split="test", limit=LIMIT)
    assert {k: again[k] for k in ("hr@1", "ndcg@10", "mrr", "n")} == {
        k: saved[k] for k in ("hr@1", "ndcg@10", "mrr", "n")
    }
