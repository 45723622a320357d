"""`amfrec report`: tables with hand-computed means, PNGs that open, sections only where there is data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from amfrec.cli.main import main
from amfrec.reports.report import write_report

KEYS = ("hr@1", "hr@3", "hr@5", "hr@10", "ndcg@1", "ndcg@3", "ndcg@5", "ndcg@10", "mrr")


def _metrics(hr1: float, cold_hr1: float) -> dict:
    m = {k: hr1 for k in KEYS} | {"n": 10, "split": "test", "seed": 1, "model": "m", "wall_time_s": 1.0}
    one = {k: cold_hr1 for k in KEYS}
    m["slices"] = {
        "train<=5": one | {"n": 2},
        "cold": one | {"n": 3},
        "warm": {k: 1.0 for k in KEYS} | {"n": 4},
    }
    return m


def _write(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


@pytest.fixture
def exp(tmp_path: Path) -> Path:
    """Two seeds of sasrec and of amfrec; AMFRec with curves, gate weights and one corrupted evaluation."""
    root = tmp_path / "exp"
    for seed, (s_hr, a_hr) in {1: (0.4, 0.5), 2: (0.6, 0.7)}.items():
        _write(root / f"seed{seed}" / "sasrec" / "metrics.json", _metrics(s_hr, 0.0))
        run = root / f"seed{seed}" / "amfrec"
        _write(run / "metrics.json", _metrics(a_hr, 0.5))
        evals = [{"step": 5, "loss": 1.0, "ndcg@10": 0.5}, {"step": 10, "loss": 0.9, "ndcg@10": 0.6}]
        _write(run / "train_history.json", {"losses": [1.0], "evals": evals})
        _write(run / "gate_weights.json", {
            "modalities": ["id", "text", "image"], "fusion": "gated",
            "weights": [[0.5, 0.3, 0.2], [0.6, 0.4, 0.0], [0.0, 0.7, 0.3]],
            "present": [[1, 1, 1], [1, 1, 0], [0, 1, 1]], "trained": [True, True, False]})  # fmt: skip
        corrupted = _metrics(a_hr - 0.1, 0.5) | {"gate_mean": {"id": 0.6, "text": 0.3, "image": 0.1}}
        _write(run / "test_score_corrupt-image-noise_metrics.json", corrupted)
        parts = {
            t: {"hr@1": a_hr * f, "spread": f} for t, f in (("content", 0.1), ("collab", 1.0), ("full", 1.0))
        }
        _write(run / "test_parts_metrics.json", parts)
    return root


def test_report_tables_and_pngs(exp: Path) -> None:
    path = write_report(exp)
    text = path.read_text()
    # mean ± sample std by hand: sasrec hr@1 (0.4, 0.6) -> 0.5 ± 0.1414; amfrec (0.5, 0.7) -> 0.6 ± 0.1414
    assert "| sasrec | 1,2 | 0.5000 ± 0.1414 |" in text
    assert "| amfrec | 1,2 | 0.6000 ± 0.1414 |" in text
    assert text.index("| sasrec |") < text.index("| amfrec |")
    # slices: amfrec's cold hr@1 0.5 in both seeds, warm 1.0; sizes beside them
    assert "| amfrec | train<=5 | 0.5000 ± 0.0000 | 0.5000 ± 0.0000 | 2 of 10 |" in text
    assert "| amfrec | cold | 0.5000 ± 0.0000 | 0.5000 ± 0.0000 | 3 of 10 |" in text
    assert "| sasrec | warm | 1.0000 ± 0.0000 | 1.0000 ± 0.0000 | 4 of 10 |" in text
    # robustness: clean 0.6, corrupted 0.5, drop +0.1; image weight clean = mean(0.2, 0.0, 0.3) = 0.167
    assert "| amfrec | image=noise | 1,2 | 0.6000 | 0.5000 | +0.1000 | 0.167 | 0.100 |" in text
    assert "| amfrec | without image (1) | id 0.600, text 0.400, image 0.000 |" in text
    assert "| amfrec | new, with image (1) | id 0.000, text 0.700, image 0.300 |" in text
    # score parts: content hr@1 0.05, 0.07 -> 0.06 ± 0.0141; collab and sum 0.5, 0.7; spreads constant
    parts = "| 0.0600 ± 0.0141 | 0.6000 ± 0.1414 | 0.6000 ± 0.1414 | 0.1000 ± 0.0000 | 1.0000 ± 0.0000 |"
    assert f"| amfrec | 1,2 {parts}" in text
    for name in ("metrics.png", "valid_curves.png", "gate_weights.png", "robustness.png"):
        png = path.parent / name
        assert f"]({name})" in text
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(png) as im:
            assert im.width > 300 and im.height > 200
    assert not list(path.parent.glob(".*tmp*"))  # nothing half-written left behind


def test_report_without_amfrec_has_only_the_metrics(tmp_path: Path) -> None:
    _write(tmp_path / "e" / "seed1" / "popularity" / "metrics.json", _metrics(0.2, 0.1))
    text = write_report(tmp_path / "e", tmp_path / "out").read_text()
    assert "| popularity | 1 | 0.2000 ± 0.0000 |" in text
    assert "Robustness" not in text and "Gate weights" not in text and "term by term" not in text
    assert (tmp_path / "out" / "metrics.png").is_file() and not (
        tmp_path / "out" / "gate_weights.png"
    ).exists()


def test_report_cli_errors_name_the_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    for folder in ("missing", "empty"):
        assert main(["report", "--exp", str(tmp_path / folder)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("amfrec: error: ") and folder in err and "\n" not in err


def _ranks_file(path: Path, model: str, seed: int, ranks: list[int], slices: dict) -> None:
    rec = {"format": "amfrec-ranks/1", "split": "test", "seed": seed, "model": model, "n_candidates": 20}
    users, targets = ["u1", "u2", "u3", "u4"], ["i1", "i2", "i3", "i4"]
    _write(path, rec | {"users": users, "targets": targets, "ranks": ranks, "slices": slices})


def test_report_paired_comparisons_by_hand(tmp_path: Path) -> None:
    """Each model against sasrec, amfrec against amfrec-no_llm, seeds pooled; a run without ranks is named."""
    from amfrec.stats import cluster_bootstrap_ci, cluster_sign_flip_p

    ranks = {  # seed -> model -> the ranks of users u1..u4
        1: {"sasrec": [1, 2, 1, 5], "amfrec": [1, 1, 3, 1], "amfrec-no_llm": [2, 1, 1, 1]},
        2: {"sasrec": [1, 1, 1, 1], "amfrec": [2, 1, 1, 3], "amfrec-no_llm": [1, 1, 1, 1]},
    }
    exp = tmp_path / "exp"
    for seed, models in ranks.items():
        _write(exp / f"seed{seed}" / "popularity" / "metrics.json", _metrics(0.1, 0.0))  # no ranks file
        for model, r in models.items():
            _write(exp / f"seed{seed}" / model / "metrics.json", _metrics(0.5, 0.5))
            slices = {"tail": [0, 1], "nobody": []} | ({"new": [2]} if model == "amfrec" else {})
            _ranks_file(exp / f"seed{seed}" / model / "test_ranks.json", model, seed, r, slices)
    text = write_report(exp).read_text()
    assert "## Paired comparisons" in text

    def row(a: str, b: str, metric: str, slice: str, n: int, va: list[float], vb: list[float]) -> str:
        """The row by hand: rows are seed 1's users then seed 2's (the same users), a user one cluster."""
        d = [x - y for x, y in zip(va, vb, strict=True)]
        users = (["u1", "u2", "u3", "u4"] if slice == "all" else ["u1", "u2"]) * 2
        lo, hi = cluster_bootstrap_ci(d, users, 10000, seed=0)
        mean_a, mean_b = sum(va) / len(va), sum(vb) / len(vb)
        means = [f"{mean_a:.4f}", f"{mean_b:.4f}", f"{mean_a - mean_b:+.4f}"]
        cells = [a, b, metric, slice, "1,2", str(n // 2), str(n), *means, f"[{lo:+.4f}, {hi:+.4f}]"]
        cells.append(f"{cluster_sign_flip_p(d, users, 10000, seed=0):.3g}")
        half = n // 2
        cells.append(f"{sum(d[:half]) / half:+.4f} {sum(d[half:]) / half:+.4f}")
        return "| " + " | ".join(cells) + " |"

    # hr@1 per (seed, user): amfrec 1,1,0,1 | 0,1,1,0 (mean 5/8); sasrec 1,0,1,0 | 1,1,1,1 (6/8)
    amf, sas = [1, 1, 0, 1, 0, 1, 1, 0], [1, 0, 1, 0, 1, 1, 1, 1]
    assert row("amfrec", "sasrec", "hr@1", "all", 8, amf, sas) in text
    # per seed -0.25 and 0.0 hr@1; 4 users, 8 (seed, user) rows; the interval holds 0: no difference shown
    line = "| amfrec | sasrec | hr@1 | all | 1,2 | 4 | 8 | 0.6250 | 0.7500 | -0.1250 |"
    assert line in text and text.split(line)[1].split("\n")[0].endswith("| no difference shown |")
    # the slice "tail" = users u1, u2 of each seed: amfrec 1,1 | 0,1; sasrec 1,0 | 1,1 -> a tie
    assert "| amfrec | sasrec | hr@1 | tail | 1,2 | 2 | 4 | 0.7500 | 0.7500 | +0.0000 |" in text
    g = 1 / math.log2(3)  # ndcg@10 of rank 2; rank 3 -> 0.5, rank 5 -> 1 / log2(6)
    amf_ndcg = [1, 1, 0.5, 1, g, 1, 1, 0.5]
    sas_ndcg = [1, g, 1, 1 / math.log2(6), 1, 1, 1, 1]
    assert row("amfrec", "sasrec", "ndcg@10", "all", 8, amf_ndcg, sas_ndcg) in text
    # amfrec against its no-LLM control, hr@1: no_llm 0,1,1,1 | 1,1,1,1
    assert row("amfrec", "amfrec-no_llm", "hr@1", "all", 8, amf, [0, 1, 1, 1, 1, 1, 1, 1]) in text
    assert "| amfrec-no_llm | sasrec | hr@1 | all |" in text
    assert "| nobody |" not in text and "| new |" not in text  # empty, or not in both files of a pair
    left_out = f"Left out: popularity vs sasrec: no test_ranks.json in {exp / 'seed1' / 'popularity'}"
    assert left_out in text and str(exp / "seed2" / "popularity") in text
