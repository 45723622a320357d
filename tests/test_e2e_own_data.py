"""README "Bring your own data", end to end: a MovieLens-style CSV export with posters -> `data import` ->
`experiment` (the real MiniLM, ResNet-50 and SmolLM2, a short budget) -> `serve` (the API over the run), an
item added live with its poster, `recommend --users all`. No hand edits between the steps."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from test_data_import import movielens_csv

from amfrec.cli.main import main
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
    # a new movie arrives: its text and poster through the run's own MiniLM and ResNet-50, no id
    poster = base64.b64encode((posters / "7.jpg").read_bytes()).decode()
    new = {
        "item_id": "9001",
        "title": "Movie 9001",
        "genres": ["Comedy"],
        "image_base64": poster,
    }
    r = client.post("/items", json={"items": [new]})
    assert r.json().get("added") == ["9001"], r.text
    item = client.get("/items/9001").json()
    assert item["modalities"] == {"id": False, "text": True, "image": True} and item["poster_url"]
    assert client.get(item["poster_url"]).content == (posters / "7.jpg").read_bytes()
    ranked = client.post("/recommend", json={"history": ["1", "2", "3"], "k": 100}).json()["items"]
    assert "9001" in [it["item_id"] for it in ranked]
    assert client.delete("/items/9001").status_code == 200
    assert main(["recommend", "--run", str(run), "--users", "all", "--top", "3",
                 "--out", str(tmp_path / "top.jsonl")]) == 0  # fmt: skip
    rows = [json.loads(line) for line in (tmp_path / "top.jsonl").read_text().splitlines()]
    assert len(rows) == 40 and all(len(r["items"]) == 3 and "9001" not in r["items"] for r in rows)
    assert "9001" in Ranker.load(run).data.index  # withdrawn, kept
