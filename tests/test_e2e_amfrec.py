"""End to end on real data: ml-100k, SASRec id vectors, MiniLM text, ResNet-50 posters, SmolLM2-135M.

One short AMFRec training through the command line; then the run directory is checked, the checkpoint is
reloaded to the very same scores, and `recommend` / the generation protocol work on it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from amfrec.cli import main
from amfrec.features.build import build_features
from amfrec.llm.pipeline import evaluate_run, recommend
from amfrec.models.train_baselines import train_baseline

pytestmark = pytest.mark.e2e

LIMIT = 8  # valid/test examples scored (each is one ~400-token prompt + 20 continuations)


@pytest.fixture(scope="module")
def amfrec_run(prepared_ml100k: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("e2e")
    train_baseline("sasrec", prepared_ml100k, 1, root / "sasrec", {"max_epochs": 1}, limit=LIMIT)
    build_features(prepared_ml100k, root / "F", modalities=["id", "text", "image"], id_from=root / "sasrec")
    run = root / "amfrec"
    args = ["train", "--model", "amfrec", "--data", str(prepared_ml100k), "--features", str(root / "F")]
    args += ["--config", "quickstart", "--seed", "1", "--out", str(run), "--limit", str(LIMIT)]
    for override in (
        "train.max_steps=8",
        "train.warmup_steps=2",
        "train.batch_size=4",
        "train.train_examples=32",
        "train.eval_every=8",
        "train.eval_examples=8",
    ):
        args += ["--set", override]
    assert main(args) == 0
    return run


def test_run_directory_and_falling_loss(amfrec_run: Path) -> None:
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
    assert len(losses) == 8 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < np.mean(losses[:2])  # the answer-token loss falls on real data


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
    rows = recommend(amfrec_run, history=["50", "172", "181"], candidates=no_poster + with_poster)
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


def test_generation_protocol(amfrec_run: Path) -> None:
    rec = evaluate_run(amfrec_run, split="valid", protocol="generate", limit=2)
    assert rec["n"] == 2 and rec["split"] == "valid"
    assert 0.0 <= rec["gen_hr@1"] <= rec["valid_ratio"] <= 1.0
    assert (amfrec_run / "valid_generate_metrics.json").is_file()


def test_sasrec_run_reloads_to_identical_metrics(amfrec_run: Path) -> None:
    from amfrec.models.train_baselines import evaluate_baseline_run

    run = amfrec_run.parent / "sasrec"
    saved = json.loads((run / "metrics.json").read_text())
    again = evaluate_baseline_run(run, split="test", limit=LIMIT)
    assert {k: again[k] for k in ("hr@1", "ndcg@10", "mrr", "n")} == {
        k: saved[k] for k in ("hr@1", "ndcg@10", "mrr", "n")
    }
