"""build_features: content caching, re-encoding on change, posters -> presence, id and import modalities."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_features_store import make_prepared

import amfrec.features.text as text_mod
from amfrec.errors import AmfrecError
from amfrec.features.build import build_features, parse_import_spec, poster_paths
from amfrec.features.store import load_features


def encode(model_dir: Path, texts: list[str]) -> np.ndarray:
    """The reference: the same encoder class called directly on the item texts."""
    return text_mod.TextEncoder(str(model_dir)).encode(texts, progress=False)


def item_texts(D: Path) -> list[str]:
    from amfrec.data.dataset import PreparedData

    return [it.text() for it in PreparedData.load(D).items[1:]]


def test_text_is_cached_and_reencoded_on_change(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The tiny real BERT: re-encoded when its weights or the item texts change, read from cache otherwise."""
    from conftest import make_tiny_bert

    D, F, bert = make_prepared(tmp_path), tmp_path / "F", make_tiny_bert(tmp_path / "bert", seed=0)
    calls: list[int] = []  # one entry per build that encoded (read from the build's log)

    def build() -> dict:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="amfrec.features.build"):
            m = build_features(D, F, ["text"], text_encoder=str(bert))
        calls.extend(4 for r in caplog.records if r.getMessage().startswith("text: 4 of 4 present"))
        return m

    m = build()
    assert calls == [4] and m["modalities"]["text"]["present"] == 4 and m["modalities"]["text"]["dim"] == 16
    mod = load_features(F, 4)["text"]
    np.testing.assert_allclose(mod.values[1:].numpy(), encode(bert, item_texts(D)), atol=1e-6)
    assert mod.values[0].abs().sum() == 0 and mod.present.tolist() == [False, True, True, True, True]

    build()
    assert calls == [4], "second run must not encode"
    assert "text: cached" in caplog.text

    make_tiny_bert(bert, seed=1)  # same path, other weights
    build()
    assert calls == [4, 4]
    np.testing.assert_allclose(
        load_features(F, 4)["text"].values[1:].numpy(), encode(bert, item_texts(D)), atol=1e-6
    )
    assert not np.allclose(load_features(F, 4)["text"].values[1:].numpy(), mod.values[1:].numpy())

    items = [json.loads(line) for line in (D / "items.jsonl").read_text().splitlines()]
    items[1]["title"] = "Beta Two"
    (D / "items.jsonl").write_text("".join(json.dumps(it) + "\n" for it in items))
    build()  # input changed
    assert calls == [4, 4, 4]
    np.testing.assert_allclose(
        load_features(F, 4)["text"].values[1:].numpy(), encode(bert, item_texts(D)), atol=1e-6
    )


def test_corrupt_cache_is_rebuilt(tmp_path: Path, tiny_bert: Path) -> None:
    D, F = make_prepared(tmp_path), tmp_path / "F"
    build_features(D, F, ["text"], text_encoder=str(tiny_bert))
    np.save(F / "text.npy", np.full((5, 16), np.nan, np.float32))
    build_features(D, F, ["text"], text_encoder=str(tiny_bert))
    np.testing.assert_allclose(
        load_features(F, 4)["text"].values[1:].numpy(), encode(tiny_bert, item_texts(D)), atol=1e-6
    )


def test_image_presence_follows_poster_files(tmp_path: Path) -> None:
    item_input = tmp_path / "in" / "x.item"
    posters = item_input.parent / "posters"  # the default: beside D's input item file
    posters.mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (50, 40, 3), dtype=np.uint8)).save(posters / "10.jpg")
    Image.fromarray(rng.integers(0, 255, (50, 40, 3), dtype=np.uint8)).save(posters / "30.png")
    (posters / "40.jpg").write_bytes(b"\xff\xd8 truncated")  # unreadable -> absent, not a crash
    D = make_prepared(tmp_path, item_input=item_input)
    m = build_features(D, tmp_path / "F", ["image"])
    assert m["modalities"]["image"]["present"] == 2 and m["modalities"]["image"]["dim"] == 1024
    mod = load_features(tmp_path / "F", 4)["image"]
    assert mod.present.tolist() == [False, True, False, True, False]
    assert (mod.values[~mod.present] == 0).all() and (mod.values[mod.present].abs().sum(1) > 0).all()


def test_image_without_posters_is_a_clear_error(tmp_path: Path) -> None:
    D = make_prepared(tmp_path)
    with pytest.raises(AmfrecError, match="image modality: no picture folder"):
        build_features(D, tmp_path / "F", ["image"])
    with pytest.raises(AmfrecError, match="nowhere: picture folder not found"):
        build_features(D, tmp_path / "F", ["image"], posters=tmp_path / "nowhere")


def test_id_from_run_and_wrong_shape(tmp_path: Path) -> None:
    D, run = make_prepared(tmp_path), tmp_path / "run"
    run.mkdir()
    table = np.arange(5 * 8, dtype=np.float32).reshape(5, 8)
    np.save(run / "item_embeddings.npy", table)
    m = build_features(D, tmp_path / "F", ["id"], id_from=run)
    # the one training window (history item 1, target item 2) trains items 1 and 2 only: 3 and 4 are absent
    assert m["modalities"]["id"]["dim"] == 8 and m["modalities"]["id"]["present"] == 2
    mod = load_features(tmp_path / "F", 4)["id"]
    np.testing.assert_array_equal(mod.values[1:3].numpy(), table[1:3])
    np.testing.assert_array_equal(mod.values[3:].numpy(), np.zeros((2, 8), np.float32))
    assert mod.present.tolist() == [False, True, True, False, False]
    np.save(run / "item_embeddings.npy", np.ones((6, 8), np.float32))
    with pytest.raises(AmfrecError, match=r"item_embeddings\.npy: 6 rows, expected 5"):
        build_features(D, tmp_path / "F", ["id"], id_from=run)


def test_id_needs_a_sasrec_run_and_features_cli_trains_one(tiny_prepared: Path, tmp_path: Path) -> None:
    """Without --id-from, `amfrec features` trains the real SASRec (2 epochs via its config) into F/sasrec."""
    from amfrec.cli.main import main

    D = tmp_path / "D"
    shutil.copytree(tiny_prepared, D)
    with pytest.raises(AmfrecError, match="id_from"):
        build_features(D, tmp_path / "X", ["id"])
    (tmp_path / "quick.yaml").write_text("max_epochs: 2\n")
    run = tmp_path / "F" / "sasrec"
    assert main(["train", "--model", "sasrec", "--data", str(D), "--out", str(run),
                 "--config", str(tmp_path / "quick.yaml")]) == 0  # fmt: skip
    assert main(["features", "--data", str(D), "--out", str(tmp_path / "F"), "--modalities", "id"]) == 0
    entry = load_features(tmp_path / "F", 40)["id"]  # reused the run: no second training
    want = np.load(run / "item_embeddings.npy")
    assert entry.values.shape == (41, 64) and np.array_equal(entry.values.numpy(), want)


def test_import_spec_and_unknown_modality(tmp_path: Path) -> None:
    D = make_prepared(tmp_path)
    np.save(tmp_path / "v.npy", np.ones((2, 6), np.float32))
    (tmp_path / "v.txt").write_text("40\n20\n")
    name, spec = parse_import_spec(f"visual={tmp_path / 'v.npy'}:{tmp_path / 'v.txt'}")
    m = build_features(D, tmp_path / "F", [], import_specs={name: spec})
    assert m["modalities"]["visual"]["dim"] == 6
    assert load_features(tmp_path / "F", 4)["visual"].present.tolist() == [False, False, True, False, True]
    with pytest.raises(AmfrecError, match="unknown modality 'audio'"):
        build_features(D, tmp_path / "F", ["audio"])
    with pytest.raises(AmfrecError, match="expected NAME=MATRIX.npy:IDS_FILE"):
        parse_import_spec("visual=v.npy")


def test_an_imported_id_table_is_masked_like_a_built_one(tmp_path: Path) -> None:
    """`--import id=...`: rows of items without a training interaction are absent, as with --id-from (a
    collaborative row nothing in the training data taught would leak or be noise); other names keep them."""
    D = make_prepared(tmp_path)
    ids = [json.loads(line)["item_id"] for line in (D / "items.jsonl").read_text().splitlines()]
    table = np.arange(4 * 3, dtype=np.float32).reshape(4, 3) + 1
    np.save(tmp_path / "t.npy", table)
    (tmp_path / "t.txt").write_text("\n".join(ids) + "\n")
    spec = {"matrix": str(tmp_path / "t.npy"), "ids": str(tmp_path / "t.txt")}
    build_features(D, tmp_path / "F", [], import_specs={"id": spec, "other": spec})
    feats = load_features(tmp_path / "F", 4)
    # the one training window (history item 1, target item 2) trains items 1 and 2 only
    assert feats["id"].present.tolist() == [False, True, True, False, False]
    np.testing.assert_array_equal(
        feats["id"].values[1:].numpy(), np.r_[table[:2], np.zeros((2, 3), np.float32)]
    )
    assert feats["other"].present.tolist() == [False, True, True, True, True]
    np.testing.assert_array_equal(feats["other"].values[1:].numpy(), table)


@pytest.mark.e2e
def test_ml100k_posters_match_1423_items(prepared_ml100k: Path, ml100k_dir: Path) -> None:
    from amfrec.data.dataset import PreparedData

    data = PreparedData.load(prepared_ml100k)
    paths = poster_paths(ml100k_dir / "posters", [it.item_id for it in data.items[1:]])
    assert len(paths) == 1682 and sum(p is not None for p in paths) == 1423
