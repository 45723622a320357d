"""The content baselines sasrec_content and content_knn (tiny data, random imported features)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from amfrec.baselines.content import (
    ContentKNN,
    ContentKNNConfig,
    SASRecContent,
    SASRecContentConfig,
    load_content,
)
from amfrec.cli.main import main
from amfrec.data.dataset import PreparedData
from amfrec.features.build import build_features
from amfrec.features.store import Modality
from amfrec.runs.rundir import run_info

REPO = Path(__file__).resolve().parents[1]
SMALL = {"hidden": 16, "heads": 1, "layers": 1, "max_epochs": 2, "dropout": 0.0}


@pytest.fixture(scope="module")
def features(tiny_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A feature folder imported from random matrices: text (6-d) for every item, image (5-d) for the even
    item indices only, and an id (4-d) modality that the content models must not read."""
    root = tmp_path_factory.mktemp("content-features")
    ids = [json.loads(line)["item_id"] for line in (tiny_prepared / "items.jsonl").open()]
    rng = np.random.default_rng(0)
    specs = {}
    for name, dim, rows in (("id", 4, ids), ("text", 6, ids), ("image", 5, ids[1::2])):
        (root / f"{name}.json").write_text(json.dumps(rows))
        np.save(root / f"{name}.npy", rng.standard_normal((len(rows), dim)).astype(np.float32))
        specs[name] = {"matrix": root / f"{name}.npy", "ids": root / f"{name}.json"}
    build_features(tiny_prepared, root / "F", modalities=list(specs), import_specs=specs)
    return root / "F"


def with_new_item(data: PreparedData, item: int) -> PreparedData:
    """`data` with every training window that holds `item` (as target or in its history) dropped: the item
    has no training interactions; validation and test are unchanged."""
    train = data.train
    keep = ((train.history == item).sum(dim=1) == 0) & (train.target != item)
    return dataclasses.replace(data, train=train.subset(torch.nonzero(keep).squeeze(1)))


@pytest.fixture(scope="module")
def new_item_case(tiny_prepared: Path, features: Path):
    """(data with item X new, X, a fitted SASRecContent) where X = the first test target with an image."""
    base = PreparedData.load(tiny_prepared)
    content = load_content(features, base.n_items, ["text", "image"])
    x = int(next(t for t in base.test.target.tolist() if content["image"].present[t]))
    data = with_new_item(base, x)
    assert int(data.item_train_counts[x]) == 0 and int(base.item_train_counts[x]) > 0
    model = SASRecContent(SASRecContentConfig(**{**SMALL, "max_epochs": 4, "patience": 4, "lr": 5e-3}))
    model.use_features(content)
    info = model.fit(data, seed=0)
    return data, x, model, info


def _rows_with(data: PreparedData, item: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Test histories without `item`, and candidates (B, C) that hold it; -> (history, candidates, column)."""
    rows = torch.nonzero(
        (data.test.candidates == item).any(dim=1) & ~(data.test.history == item).any(dim=1)
    ).squeeze(1)
    cand = data.test.candidates[rows]  # (B, C)
    return data.test.history[rows], cand, (cand == item).float().argmax(dim=1)


def test_sasrec_content_scores_a_never_trained_item_by_its_content(new_item_case, features):
    data, x, model, info = new_item_case
    assert info["items_unseen"] >= 1 and info["modalities"] == ["text", "image"]
    history, cand, col = _rows_with(data, x)
    assert len(history) >= 1
    before = model.score(history, cand)  # (B, C)
    assert torch.isfinite(before).all()
    b = torch.arange(len(history))
    net = model.net
    # Its ID row plays no part: overwriting it changes no score (a seen item's ID row is part of its row).
    with torch.no_grad():
        net.item_emb.ids.weight[x] += 100.0
        assert torch.equal(model.score(history, cand), before)
        net.item_emb.ids.weight[x] -= 100.0
        seen = int(torch.nonzero(model.seen).squeeze(1)[0])
        seen_row = net.item_table()[seen].clone()
        net.item_emb.ids.weight[seen] += 100.0
        torch.testing.assert_close(net.item_table()[seen], seen_row + 100.0)
        net.item_emb.ids.weight[seen] -= 100.0
    # Its embedding is the content projection alone: proj_text(unit text row) + proj_image(unit image row).
    content = load_content(features, data.n_items, ["text", "image"])
    want = sum(
        net.item_emb.proj[m](torch.nn.functional.normalize(content[m].values[x], dim=0)) for m in content
    )
    torch.testing.assert_close(net.item_table()[x], want)
    # Its content does: new text for X changes X's score, and no other candidate's (X is in no history).
    text = content["text"].values.clone()
    text[x] = -text[x] + 1.0
    model.use_features({**content, "text": Modality("text", text, content["text"].present)})
    after = model.score(history, cand)
    assert not torch.allclose(after[b, col], before[b, col])
    other = cand != x
    torch.testing.assert_close(after[other], model.score(history, cand)[other])
    model.use_features(content)


def test_sasrec_content_unseen_items_are_no_training_class(new_item_case):
    data, x, model, info = new_item_case
    logits = model._train_logits(torch.randn(3, 16))  # (3, n_items)
    assert (
        torch.isinf(logits[:, x - 1]).all()
        and torch.isfinite(logits[:, data.item_train_counts[1:] > 0]).all()
    )


def test_sasrec_content_fit_lowers_the_training_loss(new_item_case):
    losses = [e["loss"] for e in new_item_case[3]["epochs"]]
    assert len(losses) == 4 and losses[-1] < losses[0]


def test_sasrec_content_save_load_round_trip(new_item_case, features, tmp_path):
    data, x, model, _ = new_item_case
    model.save(tmp_path)
    loaded = SASRecContent.load(tmp_path, data, features)
    h, c = data.test.history, data.test.candidates
    assert torch.equal(loaded.score(h, c), model.score(h, c))
    assert torch.equal(loaded.seen, model.seen) and not bool(loaded.seen[x])


def test_content_knn_by_hand():
    """Items 1-4 with hand-written text and image vectors (some absent), item 5 without any content."""
    text = torch.tensor([[0, 0], [1, 0], [0, 2], [3, 4], [0, 0], [0, 0]], dtype=torch.float32)
    # item 1's image row holds values but is absent: the mask, not the values, decides
    image = torch.tensor([[0, 0], [7, 7], [1, 0], [0, 0], [0, 5], [0, 0]], dtype=torch.float32)
    present_t = torch.tensor([False, True, True, True, False, False])
    present_i = torch.tensor([False, False, True, False, True, False])
    model = ContentKNN(ContentKNNConfig(decay=0.5))
    model.use_features(
        {"text": Modality("text", text, present_t), "image": Modality("image", image, present_i)}
    )
    # content vectors [text unit | image unit] / norm: v1 = (1,0,0,0), v2 = (0,1,1,0)/sqrt2, v3 = (.6,.8,0,0),
    # v4 = (0,0,0,1), v5 = 0. History 1 then 2 (most recent): mean ∝ 0.5 v1 + 1 v2 = (.5, 1/r2, 1/r2, 0).
    history = torch.tensor([[0, 1, 2], [0, 0, 0], [0, 0, 5]])
    cand = torch.tensor([[1, 2, 3, 4, 5]] * 3)
    r2, norm = math.sqrt(2), math.sqrt(0.25 + 0.5 + 0.5)
    want = torch.tensor([[0.5 / norm, 1.0 / norm, (0.3 + 0.8 / r2) / norm, 0.0, 0.0], [0.0] * 5, [0.0] * 5])
    got = model.score(history, cand)
    torch.testing.assert_close(got, want)
    # decay 1 = the plain mean: (v1 + v2) ∝ (1, 1/r2, 1/r2, 0), norm sqrt2; v1 -> 1/sqrt2.
    model.config = ContentKNNConfig(decay=1.0)
    torch.testing.assert_close(model.score(history[:1], cand[:1])[0, 0], torch.tensor(1 / r2))


def test_content_knn_save_load_round_trip(tiny_prepared, features, tmp_path):
    data = PreparedData.load(tiny_prepared)
    model = ContentKNN()
    model.use_features(load_content(features, data.n_items, ["text", "image"]))
    assert model.fit(data, seed=1)["items_with_content"] == data.n_items
    model.save(tmp_path)
    loaded = ContentKNN.load(tmp_path, data, features)
    h, c = data.test.history, data.test.candidates
    assert torch.equal(loaded.score(h, c), model.score(h, c))


@pytest.mark.parametrize(
    ("name", "cls"), [("sasrec_content", SASRecContentConfig), ("content_knn", ContentKNNConfig)]
)
def test_config_files_match_defaults(name, cls):
    on_disk = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())
    assert on_disk == dataclasses.asdict(cls())


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (ContentKNNConfig, {"decay": 0.0}, "decay"),
        (ContentKNNConfig, {"modalities": ["id", "text"]}, "'id' is not content"),
        (SASRecContentConfig, {"modalities": []}, "modalities"),
        (SASRecContentConfig, {"unseen_negatives": "yes"}, "unseen_negatives"),
    ],
)
def test_config_validation(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


@pytest.mark.parametrize("name", ["sasrec_content", "content_knn"])
def test_train_evaluate_recommend_through_the_cli(name, tiny_prepared, features, tmp_path, capsys):
    run = tmp_path / name
    argv = ["train", "--model", name, "--data", str(tiny_prepared), "--out", str(run), "--limit", "8"]
    sets = [f"--set={k}={v}" for k, v in SMALL.items()] if name == "sasrec_content" else []
    assert main([*argv, *sets, "--features", str(features)]) == 0
    assert {"config.yaml", "metrics.json", "valid_metrics.json", "train.log"} <= {
        p.name for p in run.iterdir()
    }
    assert run_info(run)["features"] == str(features.resolve())
    trained = json.loads((run / "metrics.json").read_text())
    assert main(["evaluate", "--run", str(run), "--limit", "8"]) == 0
    again = json.loads((run / "test_score_metrics.json").read_text())
    assert again["hr@1"] == trained["hr@1"] and again["ndcg@10"] == trained["ndcg@10"]
    items = [json.loads(line)["item_id"] for line in (tiny_prepared / "items.jsonl").open()]
    assert main(["recommend", "--run", str(run), "--history", ",".join(items[:3]), "--top", "3"]) == 0
    capsys.readouterr()
    # without --features: one line, exit 2, nothing written
    assert main([*argv[:-4], "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--features is required for --model " + name in err
    assert not (tmp_path / "x").exists()


def test_experiment_trains_content_models_on_a_feature_folder(tiny_prepared, features, tmp_path):
    from amfrec.experiments.experiment import train_one

    rec = train_one("content_knn", tiny_prepared, features, None, 1, tmp_path / "content_knn", {}, 8)
    assert rec["test"]["model"] == "content_knn" and run_info(tmp_path / "content_knn")["features"] == str(
        features.resolve()
    )


def test_as_amfrecs_collaborative_net_an_unknown_item_is_scored_by_its_content(new_item_case):
    """A sasrec_content run frozen inside AMFRec: an item outside `known` (an id dropped in training) gets
    the logit of its content-only row, which is how the net scores the new item X at test time."""
    from amfrec.model.collab import CollaborativeNet

    data, x, model, _ = new_item_case
    net = model._require_net()
    collab = CollaborativeNet(net, known=None, cold_table=net.item_emb.content_weight)
    history = data.test.history[:3]  # (3, L)
    rep = collab(history)  # (3, H)
    with torch.no_grad():
        table = net.item_emb.weight  # (n_items + 1, H)
        content_only = net.item_emb.content_weight()
        torch.testing.assert_close(table[x], content_only[x])  # X never trained: its row is content only
        assert not torch.allclose(table[1:], content_only[1:])  # trained items carry an ID part
        known = torch.ones(data.n_items + 1, dtype=torch.bool)
        known[[1, 2]] = False  # as if items 1 and 2 had their ids dropped
        got = collab.item_logits(rep, None, known)  # (3, n_items)
        expected = rep @ table[1:].T
        expected[:, :2] = rep @ content_only[1:3].T
    torch.testing.assert_close(got, expected)
