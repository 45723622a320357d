"""The command line: every command listed; user mistakes give one line on stderr, exit 2, nothing written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from amfrec.cli.main import build_parser, main
from amfrec.errors import AmfrecError
from amfrec.runs.rundir import load_run_config

COMMANDS = (
    "data",
    "features",
    "train",
    "evaluate",
    "recommend",
    "experiment",
    "report",
    "compare",
    "serve",
    "bench",
    "quickstart",
)


@pytest.mark.parametrize("module", ["amfrec", "amfrec.cli"])
def test_help_lists_every_command(module: str) -> None:
    """`python -m amfrec` (what `torchrun -m amfrec` runs) is the same command as `amfrec`."""
    out = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("usage: amfrec ")
    for command in COMMANDS:
        assert command in out


def test_every_command_parses_its_arguments() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(COMMANDS) <= set(sub.choices)
    a = parser.parse_args(["train", "--model", "sasrec", "--data", "D", "--out", "R", "--set", "hidden=32",
                           "--set", "lr=1e-3", "--limit", "5", "--config", "sasrec"])  # fmt: skip
    assert (a.model, a.data, a.set, a.limit, a.config) == (
        "sasrec",
        Path("D"),
        ["hidden=32", "lr=1e-3"],
        5,
        "sasrec",
    )
    a = parser.parse_args(["experiment", "--data", "D", "--out", "E", "--models", "sasrec,amfrec:no_llm",
                           "--seeds", "1,2"])  # fmt: skip
    assert a.seeds == [1, 2] and a.models == "sasrec,amfrec:no_llm"
    a = parser.parse_args(["evaluate", "--run", "R", "--corrupt", "image=noise", "--split", "valid"])
    assert (a.run, a.corrupt, a.split, a.protocol) == (Path("R"), "image=noise", "valid", "score")
    a = parser.parse_args(["data", "prepare", "--out", "O", "--cold-threshold", "3", "--kcore", "2"])
    assert (a.cold_threshold, a.kcore, a.seed, a.data) == (3, 2, 1, None)
    a = parser.parse_args(["report", "--exp", "E"])
    assert a.exp == Path("E") and a.out is None
    a = parser.parse_args(["compare", "R1,R2", "S1,S2", "--slice", "cold", "--metric", "ndcg@10"])
    assert (a.run_a, a.run_b, a.slice, a.metric, a.protocol, a.resamples, a.seed) == (
        "R1,R2", "S1,S2", "cold", "ndcg@10", None, 10000, 0)  # fmt: skip
    with pytest.raises(SystemExit):
        parser.parse_args(["experiment", "--data", "D", "--out", "E", "--seeds", "1,x"])


@pytest.mark.parametrize("flag", ["--limit", "--top", "--examples"])
def test_zero_counts_are_one_line_errors(tmp_path: Path, capsys, flag: str) -> None:
    argv = {"--limit": ["evaluate", "--run", str(tmp_path)], "--top": ["recommend", "--run", str(tmp_path),
            "--history", "1"], "--examples": ["calibrate", "--run", str(tmp_path)]}[flag]  # fmt: skip
    err = one_line_error(capsys, [*argv, flag, "0"])
    assert f"{flag} must be >= 1, got 0" in err


def one_line_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("amfrec: error: ") and "\n" not in err, err
    return err


def test_missing_data_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    err = one_line_error(
        capsys, ["data", "prepare", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "D")]
    )
    assert "nope" in err
    assert not (tmp_path / "D").exists()


def test_malformed_row_names_file_and_line(tiny_atomic_dir: Path, tmp_path: Path, capsys) -> None:
    data = tmp_path / "raw"
    shutil.copytree(tiny_atomic_dir, data)
    lines = (data / "tiny.inter").read_text().splitlines()
    lines[5] = lines[5].replace("\t", " ", 1)  # one column too few
    (data / "tiny.inter").write_text("\n".join(lines) + "\n")
    err = one_line_error(capsys, ["data", "prepare", "--data", str(data), "--out", str(tmp_path / "D")])
    assert "tiny.inter:6" in err
    assert not (tmp_path / "D").exists()


def test_amfrec_without_features(tiny_prepared: Path, tmp_path: Path, capsys) -> None:
    err = one_line_error(
        capsys, ["train", "--model", "amfrec", "--data", str(tiny_prepared), "--out", str(tmp_path / "R")]
    )
    assert "--features" in err


def test_unknown_config_name(tiny_prepared: Path, tmp_path: Path, capsys) -> None:
    argv = ["train", "--model", "amfrec", "--data", str(tiny_prepared), "--features", str(tmp_path)]
    err = one_line_error(capsys, [*argv, "--config", "nosuch", "--out", str(tmp_path / "R")])
    assert "nosuch" in err and "quickstart" in err


def test_nan_in_imported_features(tiny_prepared: Path, tmp_path: Path, capsys) -> None:
    ids = [json.loads(line)["item_id"] for line in (tiny_prepared / "items.jsonl").open()]
    matrix = np.ones((len(ids), 8), dtype=np.float32)
    matrix[3, 2] = np.nan
    np.save(tmp_path / "m.npy", matrix)
    (tmp_path / "ids.json").write_text(json.dumps(ids))
    spec = f"vis={tmp_path / 'm.npy'}:{tmp_path / 'ids.json'}"
    err = one_line_error(
        capsys,
        [
            "features",
            "--data",
            str(tiny_prepared),
            "--modalities",
            "vis",
            "--import",
            spec,
            "--out",
            str(tmp_path / "F"),
        ],
    )
    assert "m.npy" in err


def test_baseline_train_writes_run(tiny_prepared: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "pop"
    assert main(["train", "--model", "popularity", "--data", str(tiny_prepared), "--out", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["model"] == "popularity" and metrics["split"] == "test"
    assert "popularity [test" in capsys.readouterr().out


def test_set_values_are_parsed_as_yaml() -> None:
    from amfrec.cli.args import _overrides

    assert _overrides(["train.max_steps=8", "model.modalities=[id, text]", "model.noun=book"]) == {
        "train.max_steps": 8,
        "model.modalities": ["id", "text"],
        "model.noun": "book",
    }
    with pytest.raises(AmfrecError, match="KEY=VALUE"):
        _overrides(["novalue"])


def test_evaluate_reloads_a_baseline_run(tiny_prepared: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "pop"
    assert main(["train", "--model", "popularity", "--data", str(tiny_prepared), "--out", str(run)]) == 0
    assert main(["evaluate", "--run", str(run), "--split", "test"]) == 0
    again = json.loads((run / "test_score_metrics.json").read_text())
    saved = json.loads((run / "metrics.json").read_text())
    assert {k: again[k] for k in ("hr@1", "ndcg@10", "mrr", "n")} == {
        k: saved[k] for k in ("hr@1", "ndcg@10", "mrr", "n")
    }
    err = one_line_error(capsys, ["evaluate", "--run", str(run), "--protocol", "generate"])
    assert "scoring only" in err
    err = one_line_error(capsys, ["evaluate", "--run", str(tmp_path / "nothing")])
    assert "config.yaml" in err


def test_evaluate_parts_of_an_amfrec_run(tiny_amfrec_run: Path, tmp_path: Path, capsys) -> None:
    """The tiny run has no collaborative score: without the content similarity (whatever weight the run's
    calibration chose on its random data; set to 0 here) its content term alone ranks as the score does."""
    from amfrec.runs.amfrec_run import load_run
    from amfrec.runs.calibrate import write_calibration

    run = tmp_path / "run"
    shutil.copytree(tiny_amfrec_run, run)
    model, _, run_cfg = load_run(run)
    model.content_similarity = 0.0
    write_calibration(run, model, run_cfg, {"content_similarity": 0.0})
    assert main(["evaluate", "--run", str(run), "--split", "valid", "--protocol", "parts"]) == 0
    assert "amfrec content [valid, n=" in capsys.readouterr().out
    assert main(["evaluate", "--run", str(run), "--split", "valid"]) == 0
    parts = json.loads((run / "valid_parts_metrics.json").read_text())
    score = json.loads((run / "valid_score_metrics.json").read_text())
    assert set(parts) >= {"content", "split", "seed"} and "collab" not in parts
    assert {k: parts["content"][k] for k in ("hr@1", "ndcg@10", "mrr", "n")} == {
        k: score[k] for k in ("hr@1", "ndcg@10", "mrr", "n")
    }
    assert parts["content"]["spread"] > 0


def test_baseline_config_and_set_are_honoured(tiny_prepared: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "s.yaml").write_text("hidden: 16\nmax_epochs: 1\nheads: 1\n")
    argv = ["train", "--model", "sasrec", "--data", str(tiny_prepared), "--config", str(tmp_path / "s.yaml")]
    assert main([*argv, "--out", str(tmp_path / "R"), "--set", "hidden=32"]) == 0
    cfg = load_run_config(tmp_path / "R")["model"]
    assert cfg["hidden"] == 32 and cfg["max_epochs"] == 1 and cfg["heads"] == 1  # --set wins over the file
    (tmp_path / "bad.yaml").write_text("hiden: 16\n")
    bad = ["train", "--model", "sasrec", "--data", str(tiny_prepared), "--config", str(tmp_path / "bad.yaml")]
    err = one_line_error(capsys, [*bad, "--out", str(tmp_path / "B")])
    assert "hiden" in err and not (tmp_path / "B").exists()
    err = one_line_error(capsys, [*argv, "--out", str(tmp_path / "C"), "--set", "layerz=1"])
    assert "layerz" in err


def test_experiment_and_bench_through_main(tiny_atomic_dir: Path, tmp_path: Path, capsys) -> None:
    from llm_fixtures import make_tiny_backbone_dir

    argv = ["experiment", "--models", "popularity", "--data", str(tiny_atomic_dir), "--seeds", "1,2"]
    assert main([*argv, "--out", str(tmp_path / "exp")]) == 0
    out = capsys.readouterr().out
    assert "| popularity |" in out and (tmp_path / "exp" / "seed2" / "popularity" / "metrics.json").is_file()
    assert main(["report", "--exp", str(tmp_path / "exp")]) == 0
    assert (tmp_path / "exp" / "report" / "metrics.png").is_file()
    tiny = make_tiny_backbone_dir(tmp_path / "lm")
    argv = ["bench", "--backbone", str(tiny), "--dtypes", "float32", "--seq-len", "8", "--batch-size", "2"]
    assert main([*argv, "--steps", "1"]) == 0
    table = capsys.readouterr().out
    assert "| float32 | fast |" in table and "CPU flags:" in table


def test_bench_train_is_the_default_action_and_serve_has_its_own_options() -> None:
    parser = build_parser()
    plain = parser.parse_args(["bench", "--dtypes", "float32", "--steps", "2"])
    explicit = parser.parse_args(["bench", "train", "--dtypes", "float32", "--steps", "2"])
    before = parser.parse_args(["bench", "--dtypes", "float32", "train", "--steps", "2"])
    for a in (plain, explicit, before):
        assert (a.func.__name__, a.dtypes, a.steps, a.seq_len) == ("cmd_bench_train", "float32", 2, 256)
    a = parser.parse_args(["bench", "serve", "--run", "R", "--clients", "1,4", "--max-wait-ms", "2.5"])
    assert (a.func.__name__, a.run, a.clients, a.requests, a.max_batch, a.max_wait_ms) == (
        "cmd_bench_serve",
        Path("R"),
        [1, 4],
        20,
        16,
        2.5,
    )
