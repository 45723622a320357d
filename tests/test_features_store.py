"""Feature store: write/load round trip, validation errors naming the file, .npy import, cache keys."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from amfrec.data.dataset import PreparedData
from amfrec.errors import AmfrecError
from amfrec.features.store import (
    cache_key,
    import_npy,
    load_features,
    read_ids,
    write_manifest,
    write_modality,
)

ITEMS = [
    {"item_id": "10", "title": "Alpha", "year": "1990", "genres": ["Drama"]},
    {"item_id": "20", "title": "Beta", "year": None, "genres": []},
    {"item_id": "30", "title": "Gamma", "year": "2001", "genres": ["Comedy", "Romance"]},
    {"item_id": "40", "title": "Delta", "year": "1977", "genres": ["Sci-Fi"]},
]


def make_prepared(root: Path, items: list[dict] | None = None, item_input: Path | None = None) -> Path:
    """A minimal prepared directory (docs/ARCHITECTURE.md) with `items` and one train/valid/test row."""
    items = ITEMS if items is None else items
    d = root / "D"
    d.mkdir(parents=True, exist_ok=True)
    ids = [it["item_id"] for it in items]
    manifest = {
        "format": "amfrec-prepared/1",
        "amfrec_version": "0.1.0",
        "seed": 1,
        "max_len": 3,
        "n_candidates": 2,
        "kcore": 0,
        "inputs": {"item": {"path": str(item_input or root / "in" / "x.item"), "sha256": "0"}},
        "counts": {"users": 1, "items": len(items)},
    }
    (d / "manifest.json").write_text(json.dumps(manifest))
    (d / "items.jsonl").write_text("".join(json.dumps(it) + "\n" for it in items))
    (d / "train.jsonl").write_text(json.dumps({"user": "u", "history": ids[:1], "target": ids[1]}) + "\n")
    for split in ("valid", "test"):
        row = {"user": "u", "history": ids[:2], "target": ids[2], "candidates": [ids[2], ids[0]]}
        (d / f"{split}.jsonl").write_text(json.dumps(row) + "\n")
    return d


@pytest.fixture
def data(tmp_path: Path) -> PreparedData:
    return PreparedData.load(make_prepared(tmp_path))


INFO = {"name": "enc", "version": "1", "file_sha256": "abc"}


def _write(F: Path, values: np.ndarray, present: np.ndarray, name: str = "m") -> dict:
    entry = write_modality(F, name, values, present, INFO, "in-sha")
    write_manifest(F, "D", "items-sha", {name: entry})
    return entry


def test_roundtrip_zeroes_absent_rows_and_padding(tmp_path: Path) -> None:
    values = np.arange(5 * 3, dtype=np.float32).reshape(5, 3) + 1.0  # (n_items + 1 = 5, 3), all non-zero
    present = np.array([True, True, False, True, False])  # row 0 True on purpose: must be forced False
    entry = _write(tmp_path, values, present)
    assert entry["dim"] == 3 and entry["present"] == 2
    assert entry["cache_key"] == cache_key(INFO, "in-sha")
    mod = load_features(tmp_path, n_items=4)["m"]
    assert mod.values.shape == (5, 3) and mod.present.tolist() == [False, True, False, True, False]
    assert (mod.values[[0, 2, 4]] == 0).all()
    np.testing.assert_array_equal(mod.values[1].numpy(), [4.0, 5.0, 6.0])
    np.testing.assert_array_equal(mod.values[3].numpy(), [10.0, 11.0, 12.0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.mask.npy", "m.npy", "manifest.json"]  # no tmp


def test_streamed_batches_and_present_filled_by_generator(tmp_path: Path) -> None:
    present = np.zeros(6, dtype=bool)

    def batches():
        for rows in (np.array([1, 2]), np.array([5])):
            present[rows] = True
            yield rows, np.full((len(rows), 2), float(rows[0]), dtype=np.float32)

    entry = write_modality(tmp_path, "s", batches(), present, INFO, "x", dim=2)
    write_manifest(tmp_path, "D", "i", {"s": entry})
    mod = load_features(tmp_path, n_items=5)["s"]
    assert entry["present"] == 3
    assert mod.present.tolist() == [False, True, True, False, False, True]
    np.testing.assert_array_equal(mod.values.numpy()[:, 0], [0, 1, 1, 0, 0, 5])


def test_wrong_row_count_names_file(tmp_path: Path) -> None:
    _write(tmp_path, np.ones((5, 3), np.float32), np.ones(5, bool))
    with pytest.raises(AmfrecError, match=r"m\.npy: 5 rows, expected 7"):
        load_features(tmp_path, n_items=6)


def test_wrong_dimension_names_file(tmp_path: Path) -> None:
    _write(tmp_path, np.ones((5, 3), np.float32), np.ones(5, bool))
    np.save(tmp_path / "m.npy", np.ones((5, 4), np.float32))  # file no longer matches manifest dim 3
    with pytest.raises(AmfrecError, match=r"m\.npy: dimension 4, expected 3"):
        load_features(tmp_path, n_items=4)


def test_nan_names_file(tmp_path: Path) -> None:
    _write(tmp_path, np.ones((5, 3), np.float32), np.ones(5, bool))
    bad = np.ones((5, 3), np.float32)
    bad[3, 1] = np.nan
    np.save(tmp_path / "m.npy", bad)
    with pytest.raises(AmfrecError, match=r"m\.npy: 1 row\(s\) contain NaN or inf \(first: row 3\)") as e:
        load_features(tmp_path, n_items=4)
    assert "\n" not in str(e.value)


def test_bad_mask_and_unknown_name(tmp_path: Path) -> None:
    _write(tmp_path, np.ones((5, 3), np.float32), np.ones(5, bool))
    with pytest.raises(AmfrecError, match="no modality 'image'"):
        load_features(tmp_path, n_items=4, names=["image"])
    np.save(tmp_path / "m.mask.npy", np.ones(4, bool))
    with pytest.raises(AmfrecError, match=r"m\.mask\.npy: mask shape \(4,\), expected \(5,\)"):
        load_features(tmp_path, n_items=4)


def test_encoder_nan_rejected_on_write(tmp_path: Path) -> None:
    values = np.ones((3, 2), np.float32)
    values[1, 0] = np.inf
    with pytest.raises(AmfrecError, match="NaN or inf"):
        write_modality(tmp_path, "m", values, np.ones(3, bool), INFO, "x")
    assert not list(tmp_path.glob("*.npy"))  # the temporary file is removed


def test_cache_key_depends_on_encoder_and_input() -> None:
    k = cache_key(INFO, "a")
    assert k == cache_key(dict(INFO), "a")
    assert k != cache_key(INFO, "b")
    assert k != cache_key({**INFO, "file_sha256": "abd"}, "a")


# ---------------------------------------------------------------------------------------------- import
def test_import_npy_reorders_and_marks_missing_absent(tmp_path: Path, data: PreparedData) -> None:
    mat = np.array([[3.0, 3.0], [1.0, 1.0]], np.float32)  # rows for items "30" then "10"
    np.save(tmp_path / "feat.npy", mat)
    (tmp_path / "ids.txt").write_text("30\n10\n")
    values, present = import_npy(tmp_path / "feat.npy", tmp_path / "ids.txt", data)
    assert values.shape == (5, 2)
    assert present.tolist() == [False, True, False, True, False]  # "10" -> 1, "30" -> 3
    np.testing.assert_array_equal(values[:, 0], [0, 1, 0, 3, 0])


@pytest.mark.parametrize("fmt", ["npy", "json", "list"])
def test_read_ids_formats(tmp_path: Path, fmt: str) -> None:
    if fmt == "npy":
        np.save(tmp_path / "ids.npy", np.array([10, 20]))
        src = tmp_path / "ids.npy"
    elif fmt == "json":
        (tmp_path / "ids.json").write_text('["10", 20]')
        src = tmp_path / "ids.json"
    else:
        src = [10, "20"]
    assert read_ids(src) == ["10", "20"]


def test_import_npy_errors(tmp_path: Path, data: PreparedData) -> None:
    np.save(tmp_path / "feat.npy", np.ones((2, 4), np.float32))
    with pytest.raises(AmfrecError, match=r"feat\.npy: 2 rows but 3 item ids"):
        import_npy(tmp_path / "feat.npy", ["10", "20", "30"], data)
    (tmp_path / "ids.txt").write_text("10\n99\n")
    with pytest.raises(AmfrecError, match=r"ids\.txt: unknown item id '99' \(entry 1\)"):
        import_npy(tmp_path / "feat.npy", tmp_path / "ids.txt", data)
    with pytest.raises(AmfrecError, match="duplicate item ids"):
        import_npy(tmp_path / "feat.npy", ["10", "10"], data)
    with pytest.raises(AmfrecError, match=r"feat\.npy: dimension 4, expected 8"):
        import_npy(tmp_path / "feat.npy", ["10", "20"], data, dim=8)
    nan = np.ones((2, 4), np.float32)
    nan[0, 0] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    with pytest.raises(AmfrecError, match=r"nan\.npy: 1 row\(s\) contain NaN"):
        import_npy(tmp_path / "nan.npy", ["10", "20"], data)
