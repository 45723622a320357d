"""`amfrec tune`: a staged search on validation, end to end on the tiny prepared data (1-epoch SASRec)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from amfrec.cli.main import main
from amfrec.errors import AmfrecError
from amfrec.experiments.tune import parse_stage, trial_name


def _valid(run: Path) -> dict:
    return json.loads((run / "valid_metrics.json").read_text())


def test_tune_searches_stage_by_stage(tiny_prepared: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "tune"
    argv = ["tune", "--model", "sasrec", "--data", str(tiny_prepared), "--out", str(out)]
    argv += ["--stage", "hidden=8,16", "--stage", "dropout=0.0,0.5 max_epochs=1"]
    assert main([*argv, "--stage", "lr=0.01"]) == 0
    text = capsys.readouterr().out
    # stage 1: two sizes; its best (by validation ndcg@10, read here from the run folders) is carried on
    stage1 = {h: _valid(out / f"hidden{h}")["ndcg@10"] for h in (8, 16)}
    h = max(stage1, key=lambda k: (stage1[k], -k))  # the first of equals
    stage2 = {
        (d, e): _valid(out / trial_name({"hidden": h, "dropout": d, "max_epochs": e}))["ndcg@10"]
        for d in (0.0, 0.5)
        for e in (1,)
    }
    d, e = max(stage2, key=lambda k: (stage2[k], -k[0]))
    final = out / trial_name({"hidden": h, "dropout": d, "max_epochs": e, "lr": 0.01})
    assert final.is_dir() and len([p for p in out.iterdir() if p.is_dir()]) == 5
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(lines) == 1 + 5  # header + one row per trial
    assert sum("| best |" in line for line in lines) == 3  # one best per stage
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert (best["hidden"], best["dropout"], best["max_epochs"], best["lr"]) == (h, d, e, 0.01)
    assert best["layers"] == 2  # the packaged config's other fields
    assert (out / "search.md").read_text().strip() in text
    # a stage that repeats a setting already trained (hidden = stage 1's best) reads its run: no new folder
    again = tmp_path / "again-tune"
    base = ["tune", "--model", "sasrec", "--data", str(tiny_prepared), "--out", str(again)]
    assert main([*base, "--stage", "hidden=8,16", "--stage", f"hidden={h}"]) == 0
    assert sorted(p.name for p in again.iterdir() if p.is_dir()) == ["hidden16", "hidden8"]
    assert capsys.readouterr().out.count(f"| hidden={h} |") == 2  # a row in each stage
    # a second call reuses every finished trial
    stamp = (final / "valid_metrics.json").stat().st_mtime_ns
    assert main([*argv, "--stage", "lr=0.01"]) == 0
    assert (final / "valid_metrics.json").stat().st_mtime_ns == stamp
    # best.yaml is a config that `amfrec train --config` reads
    run = tmp_path / "again"
    assert main(["-q", "train", "--model", "sasrec", "--data", str(tiny_prepared), "--config",
                 str(out / "best.yaml"), "--out", str(run)]) == 0  # fmt: skip
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["hidden"] == h


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("hidden", "KEY=V1"),
        ("hidden=", "KEY=V1"),
        ("=8", "KEY=V1"),
        ("a=1 a=2", "given twice"),
        ("", "empty"),
    ],
)
def test_bad_stages(text: str, match: str) -> None:
    with pytest.raises(AmfrecError, match=match):
        parse_stage(text)


def test_tune_refuses_what_it_cannot_search(tiny_prepared: Path, tmp_path: Path, capsys) -> None:
    base = ["tune", "--data", str(tiny_prepared), "--out", str(tmp_path / "t"), "--stage", "hidden=8"]
    for model, match in (("amfrec", "not a baseline"), ("sasrec_content", "--features is required")):
        assert main([*base, "--model", model]) == 2
        err = capsys.readouterr().err.strip()
        assert match in err and "\n" not in err
    assert parse_stage("max_len=10,50 dropout=0.2") == {"max_len": [10, 50], "dropout": [0.2]}


def test_the_packaged_tuned_configs_build_their_models() -> None:
    """configs/tuned/<data set>/<model>.yaml: every file is a valid config of the model it is named after."""
    from amfrec.config.model import AMFRecConfig
    from amfrec.runs.baseline_run import BUILDERS, baseline_settings
    from amfrec.runs.rundir import PACKAGED_CONFIGS

    files = sorted((PACKAGED_CONFIGS / "tuned").glob("*/*.yaml"))
    assert {f.parent.name for f in files} == {"ml-100k", "amazon-scientific"}
    for f in files:
        assert "validation ndcg@10" in f.read_text()  # every file names the number it was chosen on
        if f.stem == "amfrec":  # the recipe with a data set's budget: only the keys it changes
            cfg = AMFRecConfig.from_yaml(f, {})
            assert cfg.model == AMFRecConfig().model and cfg.train != AMFRecConfig().train
            continue
        settings = baseline_settings(f.stem, str(f), None)
        model, config = BUILDERS[f.stem](settings)
        assert config["max_len"] == settings["max_len"]


def _tuned_folder(root: Path, inter: Path, hidden: int) -> Path:
    """A configs/tuned/<data set>/ folder tuned on `inter`: its sha256 (hashlib, here) and a sasrec.yaml."""
    import hashlib

    folder = root / "tiny-set"
    folder.mkdir(parents=True)
    (folder / "inter.sha256").write_text(hashlib.sha256(inter.read_bytes()).hexdigest() + "\n")
    (folder / "sasrec.yaml").write_text(f"hidden: {hidden}\nmax_epochs: 1\n")
    return folder


def test_a_baseline_trains_with_the_config_tuned_on_its_data_unless_one_is_named(
    tiny_atomic_dir: Path, tiny_prepared: Path, tmp_path: Path, monkeypatch
) -> None:
    """No --config: the data was prepared from the interactions file a tuned folder names -> its settings,
    and the run's config.yaml names the file; another file, or a named config, -> not the tuned one."""
    from amfrec.runs import rundir
    from amfrec.runs.baseline_run import train_baseline

    inter = next(tiny_atomic_dir.glob("*.inter"))
    folder = _tuned_folder(tmp_path / "tuned", inter, hidden=24)
    monkeypatch.setattr(rundir, "TUNED_CONFIGS", tmp_path / "tuned")
    train_baseline("sasrec", tiny_prepared, 1, tmp_path / "tuned_run")
    cfg = yaml.safe_load((tmp_path / "tuned_run" / "config.yaml").read_text())
    assert cfg["model"]["hidden"] == 24 and cfg["model"]["max_epochs"] == 1
    assert cfg["run"]["config_file"] == str(folder / "sasrec.yaml")

    named = tmp_path / "named.yaml"
    named.write_text("hidden: 8\nmax_epochs: 1\n")
    train_baseline("sasrec", tiny_prepared, 1, tmp_path / "named_run", config=named)
    cfg = yaml.safe_load((tmp_path / "named_run" / "config.yaml").read_text())
    assert cfg["model"]["hidden"] == 8 and cfg["run"]["config_file"] == str(named)

    (folder / "inter.sha256").write_text("0" * 64 + "\n")  # tuned on another file: the packaged defaults
    train_baseline("sasrec", tiny_prepared, 1, tmp_path / "default_run", {"max_epochs": 1})
    cfg = yaml.safe_load((tmp_path / "default_run" / "config.yaml").read_text())
    packaged = yaml.safe_load((rundir.PACKAGED_CONFIGS / "sasrec.yaml").read_text())
    assert cfg["model"]["hidden"] == packaged["hidden"] != 24
    assert cfg["run"]["config_file"] == str(rundir.PACKAGED_CONFIGS / "sasrec.yaml")


@pytest.mark.parametrize("name", ["ml-100k", "amazon-scientific"])
def test_the_packaged_tuned_folders_name_the_shared_data_sets_they_were_tuned_on(name: str) -> None:
    """configs/tuned/<name>/inter.sha256 is the sha256 of ../shared/data/<name>/<name>.inter (hashlib), so a
    folder prepared from that file trains its baselines with the tuned settings."""
    import hashlib

    from amfrec.runs.rundir import PACKAGED_CONFIGS, tuned_config

    inter = Path(__file__).resolve().parents[1].parent / "shared" / "data" / name / f"{name}.inter"
    if not inter.is_file():
        pytest.skip(f"real data not found at {inter}")
    sha = hashlib.sha256(inter.read_bytes()).hexdigest()
    inputs = {"inter": {"path": str(inter), "sha256": sha}}
    for model in ("sasrec", "sasrec_content"):
        assert tuned_config(model, inputs) == PACKAGED_CONFIGS / "tuned" / name / f"{model}.yaml"
    assert tuned_config("gru4rec", inputs) is None  # not tuned: the packaged defaults
    assert tuned_config("sasrec", {"inter": {"sha256": "0" * 64}}) is None
