"""README "Bring your own data", end to end: a MovieLens-style CSV export with posters -> `data import` ->
`experiment` (the real MiniLM, ResNet-50 and SmolLM2, a short budget) -> `serve` (the API over the run) and
`recommend --users all`. No hand edits between the steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from test_data_import import movielens_csv

from amfrec.cli import main
from amfrec.runs.ranker import Ranker
from amfrec.serve.app import create_app

pytestmark = pytest.mark.e2e


def test_a_csv_export_is_trained_and_served(tmp_path: Path) -> None:
    ratings, movies, posters = movielens_csv(tmp_path / "export", n_users=40, n_items=60)
    assert main(["data", "import", "--interactions", str(ratings), "--items", str(movies), "--images",
                 str(posters), "--user-col", "userId", "--item-col", "movieId", "--rating-col", "rating",
                 "--noun", "movie", "--out", str(tmp_path / "shop")]) == 0  # fmt: skip
    budget = ["train.max_steps=4", "train.warmup_steps=1", "train.eval_every=4", "train.eval_examples=8",
              "model.positions=all"]  # fmt: skip
    assert main(["experiment", "--models", "sasrec,amfrec", "--data", str(tmp_path / "shop"), "--seeds", "1",
                 "--out", str(tmp_path / "exp"), "--limit", "8", "--negatives", "9",
                 *(x for s in budget for x in ("--set", s))]) == 0  # fmt: skip
    run = tmp_path / "exp" / "seed1" / "amfrec"
    config = (run / "config.yaml").read_text()
    assert "noun: movie" in config and "positions: all" in config
    client = TestClient(create_app(Ranker.load(run)), raise_server_exceptions=False)
    body = client.post("/recommend", json={"history": ["1", "2", "3"], "k": 5}).json()
    assert len(body["items"]) == 5 and not {it["item_id"] for it in body["items"]} & {"1", "2", "3"}
    assert all(it["title"].startswith("Movie ") and set(it["gate"]) == {"id", "text", "image"}
               for it in body["items"])  # fmt: skip
    assert main(["recommend", "--run", str(run), "--users", "all", "--top", "3",
                 "--out", str(tmp_path / "top.jsonl")]) == 0  # fmt: skip
    rows = [json.loads(line) for line in (tmp_path / "top.jsonl").read_text().splitlines()]
    assert len(rows) == 40 and all(len(r["items"]) == 3 for r in rows)
