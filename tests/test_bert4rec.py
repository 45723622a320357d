"""BERT4Rec: config, bidirectional net, cloze mask, learning, save/load, `amfrec train` (tiny data).
Its max_len and candidate-order tests run with the other sequential baselines in tests/test_baselines.py."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml
from test_baselines import cyclic_data

from amfrec.baselines import BASELINES
from amfrec.baselines.sequential import BERT4Rec, BERT4RecConfig, BERT4RecNet, cloze_mask
from amfrec.data.dataset import PreparedData
from amfrec.errors import AmfrecError
from amfrec.evaluate import evaluate
from amfrec.runs.rundir import load_run_config

REPO = Path(__file__).resolve().parents[1]
SMALL = {"hidden": 16, "inner": 32, "heads": 2}


@pytest.fixture(scope="module")
def cyclic() -> PreparedData:
    return cyclic_data()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mask_ratio": 0.0}, r"mask_ratio must be a number in \(0, 1\]"),
        ({"mask_ratio": 1.5}, "mask_ratio"),
        ({"mask_ratio": True}, "mask_ratio"),
        ({"heads": 3}, "heads must be an integer >= 1 dividing hidden=64"),
        ({"inner": 0}, "inner"),
        ({"positions": "first"}, "positions"),
        ({"max_len": -1}, "max_len"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BERT4RecConfig(**kwargs)


def test_config_file_matches_defaults_and_the_name_is_registered():
    on_disk = yaml.safe_load((REPO / "configs" / "bert4rec.yaml").read_text())
    assert on_disk == dataclasses.asdict(BERT4RecConfig())
    assert "bert4rec" in BASELINES


def test_net_is_bidirectional_and_ignores_padding():
    torch.manual_seed(0)
    net = BERT4RecNet(20, 6, BERT4RecConfig(dropout=0.0, **SMALL)).eval()
    h = torch.tensor([[0, 0, 3, 4, 5, 6, net.mask_id]])  # (1, 7): 4 items, then [mask]
    later = h.clone()
    later[0, 5] = 7  # a later history item
    out, out2 = net(h), net(later)  # (1, 7, 16)
    assert not torch.allclose(out[0, 2], out2[0, 2], atol=1e-4)  # an earlier position sees it
    assert not torch.allclose(out[0, -1], out2[0, -1], atol=1e-4)
    # More left padding (positions count from the right) changes no real position's output.
    shorter = net(h[:, 2:])  # (1, 5)
    torch.testing.assert_close(shorter, out[:, 2:], rtol=0, atol=1e-5)
    assert torch.isfinite(out).all() and net.item_table().shape == (21, 16)


def test_scores_depend_on_the_history_only():
    """A candidate's score is its own: the same alone, in any company, in any order."""
    torch.manual_seed(0)
    model = BERT4Rec(BERT4RecConfig(**SMALL))
    model._build(20, 5)
    h = torch.tensor([[0, 0, 3, 4, 5], [1, 2, 3, 4, 5]])
    c = torch.tensor([[6, 7, 8, 9], [9, 8, 1, 2]])
    full = model.score(h, c)  # (2, 4)
    torch.testing.assert_close(model.score(h, c.flip(1)), full.flip(1), rtol=0, atol=1e-6)
    torch.testing.assert_close(model.score(h, c[:, :1]), full[:, :1], rtol=0, atol=1e-6)
    catalogue = torch.arange(1, 21).expand(2, 20)
    torch.testing.assert_close(model.score(h, catalogue).gather(1, c - 1), full, rtol=0, atol=1e-5)
    changed = h.clone()
    changed[0, -1] = 11
    assert not torch.allclose(model.score(changed, c)[0], full[0])
    torch.testing.assert_close(model.score(changed, c)[1], full[1], rtol=0, atol=1e-6)  # rows independent


def test_cloze_mask():
    g = torch.Generator().manual_seed(0)
    seq = torch.tensor([[0, 0, 0, 4, 5, 6], [1, 2, 3, 4, 5, 6]]).repeat(500, 1)  # (1000, 6)
    masked = cloze_mask(seq, 0.2, g)
    assert not masked[seq == 0].any() and masked.any(dim=1).all()  # no padding; >= 1 per row
    rate = masked[:, :-1][seq[:, :-1] != 0].float().mean().item()
    assert 0.17 < rate < 0.23  # positions before the last: the plain draw
    alone = cloze_mask(seq, 1e-9, g)  # nothing drawn: the last item of every row
    assert alone[:, -1].all() and not alone[:, :-1].any()
    assert torch.equal(cloze_mask(seq, 1.0, g), seq != 0)


def test_learns_the_cycle_and_the_loss_decreases(cyclic):
    cfg = BERT4RecConfig(dropout=0.0, lr=1e-2, batch_size=64, max_epochs=15, patience=5, **SMALL)
    model = BERT4Rec(cfg)
    info = model.fit(cyclic, seed=1)
    losses = [e["loss"] for e in info["epochs"]]
    assert losses[-1] < 0.5 * losses[0], losses
    test = evaluate(model, cyclic.test)
    assert test["hr@1"] >= 0.8, test  # chance: 1 / 10 candidates
    assert info["max_len"] == cyclic.max_len


def test_positions_last_masks_the_target_only(cyclic):
    cfg = BERT4RecConfig(
        dropout=0.0, lr=1e-2, batch_size=64, max_epochs=6, patience=6, positions="last", **SMALL
    )
    info = BERT4Rec(cfg).fit(cyclic, seed=1)
    assert info["best_valid_ndcg@10"] >= 0.9


def test_save_load_round_trip(cyclic, tmp_path):
    model = BERT4Rec(BERT4RecConfig(max_epochs=1, lr=1e-2, batch_size=64, **SMALL))
    model.fit(cyclic, seed=1)
    model.save(tmp_path)
    again = BERT4Rec.load(tmp_path, cyclic)
    assert again.config == model.config and again.max_len == model.max_len == cyclic.max_len
    h, c = cyclic.test.history, cyclic.test.candidates
    assert torch.equal(again.score(h, c), model.score(h, c))
    with pytest.raises(AmfrecError, match="31"):
        BERT4Rec.load(tmp_path, cyclic_data(n_items=31))


def test_amfrec_train_and_evaluate_bert4rec(tiny_prepared, tmp_path):
    from amfrec.cli.main import main

    run = tmp_path / "run"
    argv = ["train", "--model", "bert4rec", "--data", str(tiny_prepared), "--seed", "1", "--out", str(run)]
    sets = ["--set", "max_epochs=2", "--set", "hidden=16", "--set", "inner=32", "--set", "mask_ratio=0.3"]
    assert main([*argv, *sets]) == 0
    assert (run / "bert4rec.safetensors").is_file() and (run / "test_ranks.json").is_file()
    cfg = load_run_config(run)
    assert cfg["model"]["name"] == cfg["run"]["model"] == "bert4rec"
    assert cfg["model"]["mask_ratio"] == 0.3 and cfg["train_info"]["max_len"] == 10
    test = json.loads((run / "metrics.json").read_text())
    assert test["model"] == "bert4rec" and 0.0 <= test["hr@1"] <= 1.0
    assert main(["evaluate", "--run", str(run), "--split", "test"]) == 0  # reloads through LOADERS
    again = json.loads((run / "test_score_metrics.json").read_text())
    assert (again["hr@1"], again["ndcg@10"]) == (test["hr@1"], test["ndcg@10"])
