"""`amfrec bench` on a tiny random backbone (FLOP accounting, table) and `amfrec experiment` on tiny data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from llm_fixtures import make_tiny_backbone_dir

from amfrec.bench.train import flops_per_token, linear_params, run_bench, train_step_tokens_per_s
from amfrec.errors import AmfrecError
from amfrec.experiments.experiment import format_table, run_experiment
from amfrec.llm.backbone import load_backbone


def test_linear_params_counts_only_linear_weights() -> None:
    net = torch.nn.Sequential(
        torch.nn.Embedding(10, 4), torch.nn.Linear(4, 3), torch.nn.Linear(3, 2, bias=False)
    )
    assert linear_params(net) == 4 * 3 + 3 * 2


def test_flops_per_token_by_hand() -> None:
    # body 1,000 linear weights, head 200, logits at 8 of 256 positions: 4 * (1000 + 200 * 8 / 256) = 4025
    assert flops_per_token(1000, 200, 8, 256) == pytest.approx(4025.0)
    assert flops_per_token(1000, 200, 256, 256) == pytest.approx(4 * 1200)  # logits everywhere
    # + attention over 2 layers of width 16 at T = 256: (4 + 8) * 256 * 16 * 2 = 98,304
    assert flops_per_token(1000, 200, 8, 256, n_layers=2, d_attn=16) == pytest.approx(4025.0 + 98304)


def test_bench_table_on_tiny_backbone(tmp_path: Path) -> None:
    path = make_tiny_backbone_dir(tmp_path / "tiny")
    backbone = load_backbone(str(path))
    assert train_step_tokens_per_s(backbone, batch_size=2, seq_len=8, answer_len=2, steps=1) > 0
    assert all(p.grad is None for p in backbone.model.parameters())  # input gradients only: frozen backbone
    table = run_bench(
        str(path), dtypes=["float32"], seq_len=8, batch_size=2, answer_len=2, steps=1, compile=True
    )
    lines = table.splitlines()
    assert lines[0].startswith("dtype probe (CPU, 256x256 matmul): float32 ")
    assert "dtype auto -> " in lines[0] and lines[1].startswith("CPU flags: ")
    assert lines[3].startswith("logits on the last 2 positions")
    assert lines[4].startswith("| dtype | decoder | train tokens/s")
    rows = [line.split("|") for line in lines[6:]]
    assert [r[2].strip() for r in rows] == ["transformers", "fast", "fast, compiled"]
    for r in rows:
        assert float(r[3]) > 0 and float(r[5]) > 0 and r[6].strip().endswith("%")
        # the columns agree: MFU = achieved / peak (rounded as printed)
        assert float(r[6].strip().rstrip("%")) == pytest.approx(100 * float(r[4]) / float(r[5]), abs=1.5)
    with pytest.raises(ValueError, match="unknown dtype"):
        run_bench(str(path), dtypes=["float8"])


def test_experiment_reuses_a_run_only_when_its_recipe_is_the_same(
    tiny_atomic_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "exp"
    first = run_experiment(["popularity"], tiny_atomic_dir, None, None, [1], out)
    run = out / "seed1" / "popularity"
    recipe = json.loads((run / "recipe.json").read_text())
    assert recipe["model"] == "popularity" and recipe["limit"] is None
    metrics = (run / "metrics.json").stat().st_mtime_ns
    assert (
        run_experiment(["popularity"], tiny_atomic_dir, None, None, [1], out) == first
    )  # reused, not retrained
    assert (run / "metrics.json").stat().st_mtime_ns == metrics
    with pytest.raises(AmfrecError, match=r"another recipe \(limit differ\)"):
        run_experiment(["popularity"], tiny_atomic_dir, None, None, [1], out, limit=5)
    (run / "recipe.json").unlink()  # an older experiment's folder: reused as it is
    assert run_experiment(["popularity"], tiny_atomic_dir, None, None, [1], out, limit=5) == first


def test_experiment_table_over_seeds(tiny_atomic_dir: Path, tmp_path: Path) -> None:
    table = run_experiment(["popularity"], tiny_atomic_dir, None, None, [1, 2], tmp_path / "exp")
    runs = json.loads((tmp_path / "exp" / "results.json").read_text())["runs"]["popularity"]
    assert [r["seed"] for r in runs] == [1, 2]
    assert (tmp_path / "exp" / "seed2" / "popularity" / "metrics.json").is_file()
    assert "| popularity |" in table and (tmp_path / "exp" / "results.md").read_text().strip() == table
    with pytest.raises(AmfrecError, match="unknown model"):
        run_experiment(["caser"], tiny_atomic_dir, None, None, [1], tmp_path / "x")


def test_format_table_mean_and_std() -> None:
    runs = {"m": [{"hr@1": 0.2, "hr@5": 0.5, "hr@10": 0.7, "ndcg@10": 0.4, "mrr": 0.3, "n": 10},
                  {"hr@1": 0.4, "hr@5": 0.5, "hr@10": 0.9, "ndcg@10": 0.6, "mrr": 0.5, "n": 10}]}  # fmt: skip
    row = format_table(runs, [1, 2]).splitlines()[-1]
    assert row.startswith("| m | 0.3000 ± 0.1414 | 0.5000 ± 0.0000 | 0.8000 ± 0.1414")


def test_ddp_bench_table_on_tiny_backbone(tmp_path: Path) -> None:
    from amfrec.bench.ddp import run_ddp_bench

    path = make_tiny_backbone_dir(tmp_path / "tiny")
    table = run_ddp_bench(2, str(path), "float32", seq_len=8, batch_size=4, answer_len=2, steps=2, grad_mb=1)
    rows = [
        line.split("|") for line in table.splitlines() if line.startswith("| 1 |") or line.startswith("| 2 |")
    ]
    assert [r[1].strip() for r in rows] == ["1", "2"]
    one, two = (float(r[2]) for r in rows)
    assert one > 0 and two > 0
    # the ratio of the rates, up to their rounding to whole tokens/s (on a loaded machine they are small)
    rounding = 0.5 / one + 0.5 / two
    assert float(rows[1][3]) == pytest.approx(two / one, rel=0.05 + rounding)
    with pytest.raises(ValueError, match="must divide"):
        run_ddp_bench(2, str(path), "float32", batch_size=3)
