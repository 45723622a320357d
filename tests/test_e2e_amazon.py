"""End to end on the second, sparse data set: amazon-scientific under the new-item protocol.

Prepared with 20% new items, its CLIP image vectors imported from beside the raw data (36% of items), text
through the real MiniLM, then a tiny budget of every model (the baselines, the content baselines and AMFRec
on the real SmolLM2) trained and tested on the same candidates; every metrics file has the slices.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from amfrec.data.dataset import PreparedData
from amfrec.data.prepare import prepare
from amfrec.features.build import build_features
from amfrec.runs.amfrec_run import train_amfrec
from amfrec.runs.baseline_run import train_baseline
from amfrec.runs.ranker import Ranker

pytestmark = pytest.mark.e2e

AMAZON = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "amazon-scientific"
LIMIT = 64  # valid/test examples scored per model
TINY_AMFREC = {"train.max_steps": 2, "train.warmup_steps": 1, "train.batch_size": 4, "train.eval_every": 2,
               "train.eval_examples": 8}  # fmt: skip


@pytest.fixture(scope="module")
def amazon(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (AMAZON / "amazon-scientific.inter").is_file():
        pytest.skip(f"amazon-scientific not found at {AMAZON}")
    root = tmp_path_factory.mktemp("amazon")
    prepare(AMAZON, root / "data", seed=1, new_items=0.2)
    train_baseline("sasrec", root / "data", 1, root / "sasrec", {"max_epochs": 1}, limit=LIMIT)
    build_features(root / "data", root / "F", modalities=["id", "text", "image"], id_from=root / "sasrec")
    return root


def test_prepared_with_new_items_and_imported_images(amazon: Path) -> None:
    data = PreparedData.load(amazon / "data")
    assert data.n_items == 4385 and len(data.test) == 8442
    new = data.new_items  # (n_items + 1,) bool
    manifest = json.loads((amazon / "F" / "manifest.json").read_text())
    assert manifest["modalities"]["image"]["present"] == 1585  # the CLIP vectors, found beside the data
    assert manifest["modalities"]["image"]["dim"] == 512
    id_present = np.load(amazon / "F" / "id.mask.npy")
    counts = data.item_train_counts.numpy()
    assert not id_present[counts == 0].any() and id_present[counts > 0].all()
    assert int(new.sum()) == round(0.2 * 4385) and int(data.item_train_counts[new].sum()) == 0


@pytest.mark.parametrize("model", ["popularity", "gru4rec", "bert4rec", "sasrec_content", "content_knn"])
def test_every_baseline_trains_and_reports_the_slices(amazon: Path, model: str) -> None:
    features = amazon / "F" if model in ("sasrec_content", "content_knn") else None
    overrides = {"max_epochs": 1} if model in ("gru4rec", "bert4rec", "sasrec_content") else None
    result = train_baseline(
        model, amazon / "data", 1, amazon / model, overrides, limit=LIMIT, features=features
    )
    assert result["test"]["n"] == LIMIT
    assert {"train<=5", "cold", "warm", "new"} <= set(result["test"]["slices"])


def test_amfrec_trains_on_it_and_ranks_a_new_item(amazon: Path) -> None:
    """The shipped recipe (configs/amfrec.yaml: the real LM, a frozen sasrec_content user token, modality
    dropout, the full item text) at a tiny budget."""
    collab = amazon / "collab"
    train_baseline(
        "sasrec_content", amazon / "data", 1, collab, {"max_epochs": 1}, limit=LIMIT, features=amazon / "F"
    )
    sets = {**TINY_AMFREC, "model.collab_run": str(collab)}
    result = train_amfrec(amazon / "data", amazon / "F", None, 1, amazon / "amfrec", sets, limit=LIMIT)
    assert result["test"]["n"] == LIMIT and "new" in result["test"]["slices"]
    data = PreparedData.load(amazon / "data")
    new_id = data.items[int(np.flatnonzero(data.new_items.numpy())[0])].item_id
    rows = Ranker.load(amazon / "amfrec").rank(
        [data.items[1].item_id], candidates=[new_id, data.items[2].item_id]
    )
    assert {r["item_id"] for r in rows} == {new_id, data.items[2].item_id}
    assert all(np.isfinite(r["score"]) for r in rows)
