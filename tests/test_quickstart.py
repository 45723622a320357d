"""`amfrec quickstart`: the recipe it trains (the defaults, budget shrunk) and the cost table it prints."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from amfrec.config.model import AMFRecConfig, UserToken
from amfrec.experiments.quickstart import CONFIG, MODELS, cost_table, train_seconds
from amfrec.runs.rundir import resolve_config


def test_quickstart_trains_the_recipe_and_its_collaborative_net() -> None:
    cfg = AMFRecConfig.from_yaml(resolve_config(CONFIG))
    assert cfg.model == AMFRecConfig().model  # every model key is the recipe's
    assert cfg.model.user_token is UserToken.SASREC_CONTENT and cfg.model.new_item_control
    assert MODELS.index("sasrec_content") < MODELS.index("amfrec")  # its user token's run comes first


def _run(root: Path, name: str, wall: float, test_eval: float | None, train_info: dict) -> Path:
    run = root / name
    run.mkdir(parents=True)
    test = {"n": 100, "wall_time_s": wall} | ({} if test_eval is None else {"eval_time_s": test_eval})
    (run / "metrics.json").write_text(json.dumps(test))
    (run / "valid_metrics.json").write_text(json.dumps({"n": 100, "wall_time_s": wall, "eval_time_s": 1.0}))
    (run / "config.yaml").write_text(yaml.safe_dump({"run": {"model": name}, "train_info": train_info}))
    return run


def test_cost_table_reads_training_seconds_and_scoring_speed(tmp_path: Path) -> None:
    pop = _run(tmp_path, "popularity", 5.0, 0.5, {"interactions": 10})
    sasrec = _run(tmp_path, "sasrec", 90.0, 0.2, {"train_time_s": 80.0})
    amfrec = _run(tmp_path, "amfrec", 400.0, 4.0, {"wall_time_s": 150.0, "steps": 32})
    old = _run(tmp_path, "old", 9.0, None, {})  # written before metrics.json recorded eval_time_s
    assert train_seconds(pop) == 5.0 - 0.5 - 1.0  # wall minus its valid and test scoring
    assert (train_seconds(sasrec), train_seconds(amfrec)) == (80.0, 150.0)  # the trainers' own clocks
    assert train_seconds(old) == 8.0
    table = cost_table(tmp_path, ["popularity", "sasrec", "amfrec", "old"]).splitlines()
    assert table[1] == "| model | training s | test users | test scoring s | users/s |"
    assert "| sasrec | 80.0 | 100 | 0.2 | 500 |" in table
    assert "| amfrec | 150.0 | 100 | 4.0 | 25 |" in table
    assert "| old | 8.0 | 100 | n/a | n/a |" in table
