"""The live catalogue: an item added to a served run is ranked as if it had been in the data from the start.

Two worlds share one trained AMFRec (the recipe: sasrec_content user token and logit, new-item control; a
tiny random Llama, a tiny real BERT text encoder): in world A item X (no training interaction) is in the
data; in world B the same run reads data, features and collaborative weights made without X (X is the last
item index, so no other index moves), and X arrives by POST /items.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import make_tiny_atomic
from fastapi.testclient import TestClient
from llm_fixtures import SMALL, make_tiny_backbone_dir
from safetensors.torch import load_file, save_file

from amfrec.cli.main import main
from amfrec.data.prepare import prepare
from amfrec.features.build import build_features
from amfrec.features.live import ItemVectors
from amfrec.features.store import load_features
from amfrec.io import file_sha256
from amfrec.runs.amfrec_run import train_amfrec
from amfrec.runs.baseline_run import train_baseline
from amfrec.runs.batch_recommend import write_recommendations
from amfrec.runs.catalogue import CATALOGUE_FILE
from amfrec.runs.ranker import Ranker
from amfrec.serve.app import create_app

X = "41"  # the tiny data's items are 1..40; X sorts last


def _raw(root: Path, with_x: bool) -> Path:
    """The tiny atomic data, plus item X as the last interaction of users 1-3 (a test target only)."""
    make_tiny_atomic(root)
    if with_x:
        with (root / "tiny.item").open("a") as f:
            f.write(f"{X}\tMovie {X}\t1990\tComedy Drama\n")
        with (root / "tiny.inter").open("a") as f:
            f.writelines(f"{u}\t{X}\t5\t9000000\n" for u in (1, 2, 3))
    return root


def _features(prepared: Path, out: Path, bert: Path, image: np.ndarray, ids: list[str]) -> Path:
    root = out.parent
    np.save(root / f"{out.name}-image.npy", image)
    (root / f"{out.name}-ids.json").write_text(json.dumps(ids))
    np.save(root / f"{out.name}-id.npy", np.random.default_rng(1).standard_normal((len(ids), 4), np.float32))
    spec = {"ids": root / f"{out.name}-ids.json"}
    specs = {"id": {**spec, "matrix": root / f"{out.name}-id.npy"},
             "image": {**spec, "matrix": root / f"{out.name}-image.npy"}}  # fmt: skip
    build_features(
        prepared, out, modalities=["id", "text", "image"], text_encoder=str(bert), import_specs=specs
    )
    return out


def _set_yaml(path: Path, changes: dict[str, dict]) -> None:
    cfg = yaml.safe_load(path.read_text())
    for section, values in changes.items():
        cfg[section].update(values)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


@pytest.fixture(scope="module")
def worlds(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("live")
    pa, pb = root / "data-a", root / "data-b"
    prepare(_raw(root / "raw-a", True), pa, seed=1)
    prepare(_raw(root / "raw-b", False), pb, seed=1)
    ids = [json.loads(line)["item_id"] for line in (pa / "items.jsonl").open()]
    assert ids[-1] == X
    image = np.random.default_rng(0).standard_normal((len(ids), 5)).astype(np.float32)
    fa = _features(pa, root / "feat-a", tiny_bert, image, ids)
    fb = _features(pb, root / "feat-b", tiny_bert, image[:-1], ids[:-1])
    collab_a = root / "collab-a"
    train_baseline("sasrec_content", pa, 1, collab_a, {"max_epochs": 2, "hidden": 8}, features=fa)
    config = root / "tiny.yaml"
    backbone = make_tiny_backbone_dir(root / "lm")
    config.write_text(yaml.safe_dump({"model": {"backbone": str(backbone), "dtype": "float32"}}))
    recipe = {**SMALL, "model.user_token": "sasrec_content", "model.collab_score": True,
              "model.collab_run": str(collab_a), "model.new_item_control": True}  # fmt: skip
    run_a = root / "run-a"
    train_amfrec(pa, fa, config, 1, run_a, recipe, limit=4)
    # world B: the same weights over data made without X; the collaborative table loses X's (unseen) row
    collab_b = root / "collab-b"
    shutil.copytree(collab_a, collab_b)
    weights = collab_b / "sasrec_content.safetensors"
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        meta = dict(f.metadata())
    state = load_file(weights)
    for key in ("item_emb.ids.weight", "item_emb.seen"):
        state[key] = state[key][:-1].clone()
    save_file(state, weights, metadata={**meta, "n_items": str(int(meta["n_items"]) - 1)})
    _set_yaml(collab_b / "config.yaml", {"run": {"data": str(pb), "features": str(fb)}})
    run_b = root / "run-b"
    shutil.copytree(run_a, run_b)
    _set_yaml(run_b / "config.yaml", {"run": {"data": str(pb), "features": str(fb)},
                                      "model": {"collab_run": str(collab_b)}})  # fmt: skip
    ckpt = run_b / "checkpoint"  # its config names the collaborative run too; its manifest checks the bytes
    _set_yaml(ckpt / "config.yaml", {"model": {"collab_run": str(collab_b)}})
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest["sha256"]["config.yaml"] = file_sha256(ckpt / "config.yaml")
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    item_x = json.loads((pa / "items.jsonl").read_text().splitlines()[-1])
    return {"a": run_a, "b": run_b, "x": item_x, "image_x": image[-1].tolist(), "features": fa, "root": root}


def _post_x(worlds: dict, client: TestClient) -> dict:
    x = worlds["x"]
    body = {"items": [{"item_id": X, "title": x["title"], "year": x["year"], "genres": x["genres"],
                       "vectors": {"image": worlds["image_x"]}}]}  # fmt: skip
    r = client.post("/items", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def _scores(rows: list[dict]) -> dict[str, float]:
    return {r["item_id"]: r["score"] for r in rows}


def _histories(ranker: Ranker) -> list[list[str]]:
    seqs = [json.loads(line)["items"] for line in (ranker.data.path / "sequences.jsonl").open()]
    return [[str(i) for i in s if str(i) != X] for s in seqs[3:9]]  # users without X


def _fresh_b(worlds: dict, tmp_path: Path) -> Path:
    run = tmp_path / "run-b"
    shutil.copytree(worlds["b"], run)
    return run


@pytest.mark.parametrize("similarity", [0.0, 0.5])  # model.content_similarity: the live item's content counts
def test_a_live_item_scores_as_if_it_were_in_the_data(worlds: dict, tmp_path: Path, similarity: float):
    a = Ranker.load(worlds["a"])
    run_b = _fresh_b(worlds, tmp_path)
    b = Ranker.load(run_b)
    a.model.content_similarity = b.model.content_similarity = similarity
    assert X not in b.data.index and b.data.n_items == a.data.n_items - 1
    client = TestClient(create_app(b))
    assert _post_x(worlds, client) == {"added": [X], "updated": [], "withdrawn": []}
    assert b.data.index[X] == a.data.index[X]
    for history in _histories(a):
        cands = [X, "1", "7", "20"]
        want = {r["item_id"]: r["score"] for r in a.rank(history, candidates=cands)}
        got = {r["item_id"]: r["score"] for r in b.rank(history, candidates=cands)}
        assert got == pytest.approx(want, abs=1e-4)
        whole_a, whole_b = a.rank(history, k=15), b.rank(history, k=15)
        assert [r["item_id"] for r in whole_b] == [r["item_id"] for r in whole_a]
        r = client.post("/recommend", json={"history": history, "candidates": cands, "k": 4})
        assert {i["item_id"]: i["score"] for i in r.json()["items"]} == pytest.approx(want, abs=1e-4)
    # the page finds it, with its modalities (no id: it was never trained)
    page = client.get("/items", params={"query": f"movie {X}"}).json()
    assert [i["item_id"] for i in page["items"]] == [X]
    assert page["items"][0]["modalities"] == {"id": False, "text": True, "image": True}
    # after a restart it is still there, scored the same
    again = Ranker.load(run_b)
    again.model.content_similarity = similarity
    history = _histories(a)[0]
    assert _scores(again.rank(history, candidates=[X, "1"])) == _scores(b.rank(history, candidates=[X, "1"]))


def test_the_text_vector_is_the_feature_builders(worlds: dict) -> None:
    a = Ranker.load(worlds["a"])
    info = a.data.items[a.data.index[X]]
    rows = ItemVectors(worlds["features"], ["id", "text", "image"]).rows([info], [None], [{}])
    built = load_features(worlds["features"], a.data.n_items, ["text"])["text"].values[a.data.index[X]]
    assert set(rows) == {"text", "image"} and not rows["image"][1][0]  # no image given: absent
    np.testing.assert_allclose(rows["text"][0][0], built.numpy(), atol=1e-5)


def test_a_withdrawn_item_is_never_recommended_and_stays_withdrawn(worlds: dict, tmp_path: Path) -> None:
    run_b = _fresh_b(worlds, tmp_path)
    b = Ranker.load(run_b)
    client = TestClient(create_app(b))
    _post_x(worlds, client)
    histories = _histories(b)
    top = {tuple(h): [r["item_id"] for r in b.rank(h)] for h in histories}
    assert all(X in ids for ids in top.values())  # ranked (somewhere) before
    assert client.delete(f"/items/{X}").json() == {"added": [], "updated": [], "withdrawn": [X]}
    assert client.get(f"/items/{X}").json()["available"] is False
    for ranker in (b, Ranker.load(run_b)):  # now, and after a restart
        for h in histories:
            assert X not in [r["item_id"] for r in ranker.rank(h)]
            without = [r["item_id"] for r in ranker.rank(h, candidates=["1", "2"])]
            assert [r["item_id"] for r in ranker.rank(h, candidates=[X, "1", "2"])] == without
    n = write_recommendations(run_b, "all", 40, tmp_path / "top.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "top.jsonl").read_text().splitlines()]
    assert n == len(rows) and all(X not in r["items"] for r in rows)
    _post_x(worlds, client)  # adding it again makes it available again
    assert client.get(f"/items/{X}").json()["available"] is True


def test_items_add_and_remove_from_the_command_line(worlds: dict, tmp_path: Path) -> None:
    run_b = _fresh_b(worlds, tmp_path)
    x = worlds["x"]
    row = {"item_id": X, "title": x["title"], "year": x["year"], "genres": x["genres"],
           "vectors": {"image": worlds["image_x"]}}  # fmt: skip
    (tmp_path / "new.jsonl").write_text(json.dumps(row) + "\n")
    assert main(["items", "add", "--run", str(run_b), "--items", str(tmp_path / "new.jsonl")]) == 0
    a, b = Ranker.load(worlds["a"]), Ranker.load(run_b)
    h = _histories(a)[1]
    want = _scores(a.rank(h, candidates=[X, "3"]))
    assert _scores(b.rank(h, candidates=[X, "3"])) == pytest.approx(want, abs=1e-4)
    (tmp_path / "gone.txt").write_text(f"{X}\n")
    assert main(["items", "remove", "--run", str(run_b), "--items", str(tmp_path / "gone.txt")]) == 0
    assert X in Ranker.load(run_b).withdrawn


def test_a_baseline_run_refuses_new_items_but_withdraws(tiny_prepared: Path, tmp_path: Path) -> None:
    run = tmp_path / "sasrec"
    train_baseline("sasrec", tiny_prepared, 1, run, {"max_epochs": 1, "hidden": 8})
    client = TestClient(create_app(Ranker.load(run)))
    r = client.post("/items", json={"items": [{"item_id": "new", "title": "New"}]})
    assert r.status_code == 409 and "AMFRec" in r.json()["error"]
    assert not (run / CATALOGUE_FILE).exists()
    assert client.delete("/items/1").status_code == 200
    assert "1" not in [
        i["item_id"] for i in client.post("/recommend", json={"history": ["2"], "k": 100}).json()["items"]
    ]


PNG = (  # a 1x1 PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
BAD_BODIES = {
    "no items": {"items": []},
    "not a list": {"items": {"item_id": "n1"}},
    "no body field": {},
    "unknown top field": {"items": [{"item_id": "n1", "title": "T"}], "extra": 1},
    "missing title": {"items": [{"item_id": "n1"}]},
    "empty title": {"items": [{"item_id": "n1", "title": ""}]},
    "blank title": {"items": [{"item_id": "n1", "title": "   "}]},
    "title too long": {"items": [{"item_id": "n1", "title": "x" * 1001}]},
    "unknown item field": {"items": [{"item_id": "n1", "title": "T", "price": 3}]},
    "id with a tab": {"items": [{"item_id": "n\t1", "title": "T"}]},
    "id with a comma": {"items": [{"item_id": "n,1", "title": "T"}]},
    "empty id": {"items": [{"item_id": "", "title": "T"}]},
    "id twice": {"items": [{"item_id": "n1", "title": "T"}, {"item_id": "n1", "title": "U"}]},
    "a field the data lacks": {"items": [{"item_id": "n1", "title": "T", "fields": {"brand": "B"}}]},
    "vector of the id": {"items": [{"item_id": "n1", "title": "T", "vectors": {"id": [0.0] * 4}}]},
    "vector of no modality": {"items": [{"item_id": "n1", "title": "T", "vectors": {"audio": [0.0]}}]},
    "vector too short": {"items": [{"item_id": "n1", "title": "T", "vectors": {"image": [0.0] * 4}}]},
    "vector of text": {"items": [{"item_id": "n1", "title": "T", "vectors": {"image": ["a"] * 5}}]},
    "vector with inf": '{"items": [{"item_id": "n1", "title": "T", "vectors": {"image": [1e999,0,0,0,0]}}]}',
    "vector with NaN": '{"items": [{"item_id": "n1", "title": "T", "vectors": {"image": [NaN,0,0,0,0]}}]}',
    "image path missing": {"items": [{"item_id": "n1", "title": "T", "image_path": "/no/such.png"}]},
    "image not base64": {"items": [{"item_id": "n1", "title": "T", "image_base64": "%%%"}]},
    "image not an image": {"items": [{"item_id": "n1", "title": "T", "image_base64": "aGVsbG8="}]},
    "image twice": {
        "items": [{"item_id": "n1", "title": "T", "image_base64": PNG, "image_path": "/etc/hosts"}]
    },
    "image to imported vectors": {"items": [{"item_id": "n1", "title": "T", "image_base64": PNG}]},
    "genres not a list": {"items": [{"item_id": "n1", "title": "T", "genres": "Comedy"}]},
    "too many items": {"items": [{"item_id": f"n{k}", "title": "T"} for k in range(101)]},
}


@pytest.mark.parametrize("body", list(BAD_BODIES.values()), ids=list(BAD_BODIES))
def test_bad_item_requests_answer_4xx_and_change_nothing(
    worlds: dict, tmp_path: Path, body: dict | str
) -> None:
    run_b = _fresh_b(worlds, tmp_path)
    ranker = Ranker.load(run_b)
    client = TestClient(create_app(ranker), raise_server_exceptions=False)
    if isinstance(body, str):  # JSON that a client library would not write (out-of-range floats)
        r = client.post("/items", content=body.encode(), headers={"content-type": "application/json"})
    else:
        r = client.post("/items", json=body)
    assert 400 <= r.status_code < 500, r.text
    assert set(r.json()) == {"error", "field"} and "Traceback" not in r.text and "\n" not in r.json()["error"]
    assert not (run_b / CATALOGUE_FILE).exists() and ranker.data.n_items == 40


def test_other_bad_item_requests(worlds: dict, tmp_path: Path) -> None:
    run_b = _fresh_b(worlds, tmp_path)
    client = TestClient(create_app(Ranker.load(run_b)), raise_server_exceptions=False)
    assert client.delete("/items/nobody").status_code == 404
    r = client.post("/items", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    big = client.post(
        "/items", content=b"x" * (17 * 1024 * 1024), headers={"content-type": "application/json"}
    )
    assert big.status_code == 413
    assert not (run_b / CATALOGUE_FILE).exists()
