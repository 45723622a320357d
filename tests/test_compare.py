"""Per-example ranks files and `amfrec compare`, end to end on two tiny baseline runs (popularity, SASRec)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from amfrec import stats
from amfrec.cli.main import main
from amfrec.data.dataset import PreparedData


@pytest.fixture(scope="module")
def runs(tiny_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ROOT/{pop1,pop2,sas1,sas2}: popularity and a 2-epoch SASRec, seeds 1 and 2, on the tiny data."""
    root = tmp_path_factory.mktemp("compare-runs")
    for seed in (1, 2):
        for model, name in (("popularity", "pop"), ("sasrec", "sas")):
            extra = ["--set", "max_epochs=2"] if model == "sasrec" else []
            argv = ["-q", "train", "--model", model, "--data", str(tiny_prepared), "--seed", str(seed)]
            assert main([*argv, "--out", str(root / f"{name}{seed}"), *extra]) == 0
    return root


def _ranks(run: Path, name: str = "test_ranks.json") -> dict:
    return json.loads((run / name).read_text())


def test_ranks_files_by_hand(runs: Path, tiny_prepared: Path) -> None:
    """Popularity's ranks by hand from its training counts (ties against it); users, targets, slices."""
    data = PreparedData.load(tiny_prepared)
    counts = data.item_train_counts  # (n_items + 1,) what popularity counts
    for split, part in (("test", data.test), ("valid", data.valid)):
        rec = _ranks(runs / "pop1", f"{split}_ranks.json")
        assert (rec["format"], rec["split"], rec["seed"], rec["model"]) == (
            "amfrec-ranks/1",
            split,
            1,
            "popularity",
        )
        assert rec["n_candidates"] == 20 and rec["users"] == part.users
        assert rec["targets"] == [data.items[i].item_id for i in part.target.tolist()]
        by_hand = [
            int((counts[c] >= counts[t]).sum()) for c, t in zip(part.candidates, part.target, strict=True)
        ]
        assert rec["ranks"] == by_hand
        masks = data.slices(part)
        assert set(rec["slices"]) == set(masks)
        for name, mask in masks.items():
            assert rec["slices"][name] == [i for i in range(len(part)) if mask[i]]
    # the file's ranks give the metrics file's numbers, overall and on each slice
    rec, metrics = _ranks(runs / "sas1"), json.loads((runs / "sas1" / "metrics.json").read_text())
    assert np.mean([r == 1 for r in rec["ranks"]]) == pytest.approx(metrics["hr@1"])
    cold = [rec["ranks"][i] for i in rec["slices"]["cold"]]
    assert stats.per_example(cold, "ndcg@10").mean() == pytest.approx(metrics["slices"]["cold"]["ndcg@10"])


def _table_row(out: str) -> list[str]:
    row = [line for line in out.splitlines() if line.startswith("| hr@1") or line.startswith("| ndcg")]
    assert len(row) == 1, out
    return [c.strip() for c in row[0].strip("|").split("|")]


def test_compare_end_to_end(runs: Path, capsys: pytest.CaptureFixture) -> None:
    pop, sas = [_ranks(runs / f"pop{s}") for s in (1, 2)], [_ranks(runs / f"sas{s}") for s in (1, 2)]
    a = np.array([r == 1 for rec in pop for r in rec["ranks"]], dtype=float)  # hr@1 per (seed, user)
    b = np.array([r == 1 for rec in sas for r in rec["ranks"]], dtype=float)
    users = np.array([u for rec in pop for u in rec["users"]])
    assert len(set(users)) == 30  # both seeds score the same 30 users: 30 clusters of 2 rows
    lo, hi = stats.cluster_bootstrap_ci(a - b, users, 500, seed=3)
    p = stats.cluster_sign_flip_p(a - b, users, 500, seed=3)
    per_seed = " ".join(f"{(a[k * 30 : k * 30 + 30] - b[k * 30 : k * 30 + 30]).mean():+.4f}" for k in (0, 1))
    argv = ["compare", f"{runs / 'pop1'},{runs / 'pop2'}", f"{runs / 'sas1'},{runs / 'sas2'}"]
    assert main([*argv, "--resamples", "500", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    means = [f"{a.mean():.4f}", f"{b.mean():.4f}", f"{a.mean() - b.mean():+.4f}"]
    expected = ["hr@1", "all", "1,2", "30", "60", *means, f"[{lo:+.4f}, {hi:+.4f}]", f"{p:.3g}", per_seed]
    row = _table_row(out)
    assert row[:-1] == expected
    assert row[-1] in {v.value for v in stats.Verdict}
    # the per-seed table: each seed's own paired test
    for k, seed in enumerate((1, 2)):
        own = stats.paired_test(a[k * 30 : k * 30 + 30], b[k * 30 : k * 30 + 30], n_resamples=500, seed=3)
        line = f"| {seed} | 30 | {own.mean_a:.4f} | {own.mean_b:.4f} | {own.diff:+.4f} |"
        assert line in out, out
    assert "A = pop1:" in out and "B = sas1:" in out
    # the same through an experiment folder: --exp EXP MODEL_A MODEL_B pools every EXP/seed*/MODEL
    exp = runs.parent / "exp"
    for s in (1, 2):
        for name, model in (("pop", "popularity"), ("sas", "sasrec")):
            if not (exp / f"seed{s}" / model).exists():
                shutil.copytree(runs / f"{name}{s}", exp / f"seed{s}" / model)
    assert (
        main(["compare", "--exp", str(exp), "popularity", "sasrec", "--resamples", "500", "--seed", "3"]) == 0
    )
    assert _table_row(capsys.readouterr().out)[:-1] == expected
    # a run folder without metrics.json (still training) is left out: the same comparison, seeds 1 and 2
    (exp / "seed3" / "sasrec").mkdir(parents=True)
    (exp / "seed3" / "popularity").mkdir(parents=True)
    argv = ["compare", "--exp", str(exp), "popularity", "sasrec", "--resamples", "500", "--seed", "3"]
    assert main(argv) == 0
    assert _table_row(capsys.readouterr().out)[:-1] == expected


def test_compare_a_slice_and_a_metric(runs: Path, capsys: pytest.CaptureFixture) -> None:
    pop, sas = _ranks(runs / "pop1"), _ranks(runs / "sas1")
    rows = pop["slices"]["cold"]
    a = stats.per_example([pop["ranks"][i] for i in rows], "ndcg@10")
    b = stats.per_example([sas["ranks"][i] for i in rows], "ndcg@10")
    assert (
        main(["compare", str(runs / "pop1"), str(runs / "sas1"), "--slice", "cold", "--metric", "ndcg@10"])
        == 0
    )
    cells = _table_row(capsys.readouterr().out)
    assert cells[:8] == ["ndcg@10", "cold", "1", str(len(rows)), str(len(rows)), f"{a.mean():.4f}",
                         f"{b.mean():.4f}", f"{a.mean() - b.mean():+.4f}"]  # fmt: skip


def one_line_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("amfrec: error: ") and "\n" not in err
    return err


def test_compare_refuses_what_does_not_pair(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bad = tmp_path / "sas1-other-users"
    shutil.copytree(runs / "sas1", bad)
    rec = _ranks(bad)
    rec["users"][3] = "someone else"
    (bad / "test_ranks.json").write_text(json.dumps(rec))
    err = one_line_error(capsys, ["compare", str(runs / "pop1"), str(bad)])
    assert "users differ" in err and "row 3" in err
    assert str(runs / "pop1" / "test_ranks.json") in err and str(bad / "test_ranks.json") in err
    # seeds in a different order on the two sides
    err = one_line_error(
        capsys, ["compare", f"{runs / 'pop1'},{runs / 'pop2'}", f"{runs / 'sas2'},{runs / 'sas1'}"]
    )
    assert "seed differs (1 vs 2)" in err
    err = one_line_error(capsys, ["compare", f"{runs / 'pop1'},{runs / 'pop2'}", str(runs / "sas1")])
    assert "same number" in err
    # a run from before ranks were kept: say how to write them
    old = tmp_path / "old"
    shutil.copytree(runs / "sas1", old)
    (old / "test_ranks.json").unlink()
    err = one_line_error(capsys, ["compare", str(runs / "pop1"), str(old)])
    assert "amfrec evaluate --run" in err and str(old / "test_ranks.json") in err
    err = one_line_error(capsys, ["compare", str(runs / "pop1"), str(runs / "sas1"), "--slice", "nope"])
    assert "no slice 'nope'" in err and "cold" in err
    err = one_line_error(capsys, ["compare", str(runs / "pop1"), str(runs / "sas1"), "--metric", "hr"])
    assert "unknown metric" in err


def test_evaluate_writes_ranks_beside_its_metrics(runs: Path, tmp_path: Path, capsys) -> None:
    """`amfrec evaluate` writes test_score_ranks.json, the training's ranks again; compare --protocol score
    reads it, and a run's own test_ranks.json (the same protocol) where evaluate never ran."""
    copies = []
    for name in ("pop1", "sas1"):
        shutil.copytree(runs / name, tmp_path / name)
        copies.append(str(tmp_path / name))
    assert main(["-q", "evaluate", "--run", copies[0]]) == 0
    again, saved = _ranks(Path(copies[0]), "test_score_ranks.json"), _ranks(Path(copies[0]))
    assert again == saved  # the same ranks, users and slices
    capsys.readouterr()
    assert main(["compare", *copies, "--protocol", "score", "--resamples", "200"]) == 0
    out = capsys.readouterr().out
    assert _table_row(out)[3] == "30"
    sides = [line for line in out.splitlines() if line.startswith(("A = ", "B = "))]
    assert sides[0].endswith("test_score_ranks.json") and sides[1].endswith(f"sas1{os.sep}test_ranks.json")
    (Path(copies[1]) / "test_ranks.json").unlink()
    err = one_line_error(capsys, ["compare", *copies, "--protocol", "score"])
    assert "test_score_ranks.json" in err and "amfrec evaluate" in err


def test_amfrec_runs_keep_their_ranks(tiny_amfrec_run: Path, tmp_path: Path) -> None:
    """An AMFRec run writes test/valid ranks when trained; `amfrec evaluate` writes the same ranks again."""
    run = tmp_path / "run"
    shutil.copytree(tiny_amfrec_run, run)
    for split, metrics_file in (("test", "metrics.json"), ("valid", "valid_metrics.json")):
        rec, metrics = _ranks(run, f"{split}_ranks.json"), json.loads((run / metrics_file).read_text())
        assert (rec["model"], rec["split"], rec["seed"]) == ("amfrec", split, 1)
        assert len(rec["ranks"]) == 4  # the fixture evaluates with --limit 4
        assert stats.per_example(rec["ranks"], "mrr").mean() == pytest.approx(metrics["mrr"])
    assert main(["-q", "evaluate", "--run", str(run), "--limit", "4"]) == 0
    assert _ranks(run, "test_score_ranks.json")["ranks"] == _ranks(run)["ranks"]


def test_ranks_from_before_a_calibration_are_refused(tiny_amfrec_run: Path, tmp_path: Path, capsys) -> None:
    """`amfrec calibrate` changes a run's score after its ranks were written: comparing those ranks is an
    error naming the term; the ranks `amfrec evaluate` writes afterwards are compared."""
    from amfrec.runs.amfrec_run import load_run
    from amfrec.runs.calibrate import write_calibration

    run = tmp_path / "run"
    shutil.copytree(tiny_amfrec_run, run)
    terms = _ranks(run)["terms"]  # the weight the run's own calibration chose on its random data
    assert set(terms) == {"content_similarity", "new_item_offset", "new_item_order"}
    model, _, run_cfg = load_run(run)
    new = terms["content_similarity"] + 0.5
    model.content_similarity = new
    write_calibration(run, model, run_cfg, {"content_similarity": new})
    capsys.readouterr()
    err = one_line_error(capsys, ["compare", str(run), str(run)])
    was = f"test_ranks.json: scored with model.content_similarity = {terms['content_similarity']:+.4f}"
    assert was in err and f"{new:+.4f}" in err
    assert main(["-q", "evaluate", "--run", str(run), "--limit", "4"]) == 0
    assert _ranks(run, "test_score_ranks.json")["terms"]["content_similarity"] == new
    capsys.readouterr()
    assert main(["compare", str(run), str(run), "--protocol", "score", "--resamples", "50"]) == 0


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"format": "other/1"}, "not a ranks file"),
        ({"ranks": [1, 21]}, "outside 1..20"),
        ({"targets": ["i1"]}, "2 ranks, 2 users, 1 targets"),
        ({"slices": {"cold": [2]}}, "slice 'cold' holds a row index outside 0..1"),
        ({"seed": "1"}, "'seed'"),
    ],
)
def test_malformed_ranks_files_name_the_file(tmp_path: Path, change: dict, match: str) -> None:
    from amfrec.errors import AmfrecError
    from amfrec.runs.ranks import read_ranks

    good = {"format": "amfrec-ranks/1", "split": "test", "seed": 1, "model": "m", "n_candidates": 20}
    good |= {"users": ["a", "b"], "targets": ["i1", "i2"], "ranks": [1, 20], "slices": {"cold": [1]}}
    path = tmp_path / "test_ranks.json"
    path.write_text(json.dumps(good))
    assert read_ranks(path) == good
    path.write_text(json.dumps(good | change))
    with pytest.raises(AmfrecError, match=match) as e:
        read_ranks(path)
    assert str(path) in str(e.value)


def test_compare_the_cost_of_a_corruption(runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`--corrupt image=noise`: each side's per-user value is its clean minus its corrupted value."""
    sides = {}
    for name, shift in (("pop1", 1), ("sas1", 0)):  # popularity's targets each fall one place; SASRec's stay
        run = tmp_path / name
        shutil.copytree(runs / name, run)
        rec = _ranks(run)
        corrupted = {**rec, "ranks": [min(r + shift, rec["n_candidates"]) for r in rec["ranks"]]}
        (run / "test_score_corrupt-image-noise_ranks.json").write_text(json.dumps(corrupted))
        clean = stats.per_example(rec["ranks"], "ndcg@10")
        sides[name] = clean - stats.per_example(corrupted["ranks"], "ndcg@10")  # (N,) the cost per user
    argv = ["compare", str(tmp_path / "pop1"), str(tmp_path / "sas1"), "--metric", "ndcg@10"]
    assert main([*argv, "--corrupt", "image=noise"]) == 0
    out = capsys.readouterr().out
    cells = _table_row(out)
    cost_a, cost_b = sides["pop1"], sides["sas1"]
    assert float(cost_b.sum()) == 0.0 and float(cost_a.mean()) > 0
    assert cells[5:8] == [
        f"{cost_a.mean():.4f}",
        f"{cost_b.mean():.4f}",
        f"{cost_a.mean() - cost_b.mean():+.4f}",
    ]
    assert "A = cost of image=noise to pop1" in out
    (tmp_path / "sas1" / "test_score_corrupt-image-noise_ranks.json").unlink()
    err = one_line_error(capsys, [*argv, "--corrupt", "image=noise"])
    assert "test_score_corrupt-image-noise_ranks.json" in err and "--corrupt image=noise`" in err
