"""prepare(): ordering, leave-one-out split, windows, candidates, k-core, determinism, bad input."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_atomic

from amfrec.data.dataset import PreparedData
from amfrec.data.prepare import _filter, id_order, prepare
from amfrec.errors import AmfrecError

INTER_H = ["user_id:token", "item_id:token", "timestamp:float"]
ITEM_H = ["item_id:token", "movie_title:token_seq", "release_year:token", "class:token_seq"]
FILES = ("items.jsonl", "train.jsonl", "valid.jsonl", "test.jsonl", "sequences.jsonl", "manifest.json")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def full_sequences(out: Path) -> dict[str, list[str]]:
    """Rebuild each user's whole (kept) sequence from the prepared files."""
    seqs: dict[str, list[str]] = {}
    for row in read_jsonl(out / "train.jsonl"):
        seqs.setdefault(row["user"], list(row["history"])).append(row["target"])
    for split in ("valid", "test"):
        for row in read_jsonl(out / f"{split}.jsonl"):
            seqs.setdefault(row["user"], list(row["history"])).append(row["target"])  # no train row: 3 items
    return seqs


def check_candidates(out: Path, n_candidates: int) -> None:
    seqs = full_sequences(out)
    for split in ("valid", "test"):
        for row in read_jsonl(out / f"{split}.jsonl"):
            cands = row["candidates"]
            assert len(cands) == n_candidates and len(set(cands)) == n_candidates
            assert row["target"] in cands
            negatives = set(cands) - {row["target"]}
            assert not negatives & set(seqs[row["user"]])


@pytest.fixture
def hand_dir(tmp_path: Path) -> Path:
    """User A: 4 interactions with a timestamp tie; B: 6 interactions; C: 2 (dropped); fillers 90..99."""
    d = tmp_path / "hand"
    d.mkdir()
    inter = [
        ["A", "5", 30], ["A", "7", 10], ["A", "10", 20], ["A", "2", 20],  # tie at 20: "2" before "10"
        ["B", "1", 1.5], ["B", "2", 2], ["B", "3", 3], ["B", "4", 4], ["B", "5", 5], ["B", "6", 6],
        ["C", "8", 1], ["C", "9", 2],  # only C has items 8 and 9
        ["D", "90", 1], ["D", "91", 2], ["D", "92", 3],
    ]  # fmt: skip
    write_atomic(d / "x.inter", INTER_H, inter)
    items = [
        [i, f"Title {i}", 1990 + i % 10, "Drama Comedy" if i % 2 else ""] for i in [*range(1, 11), 90, 91, 92]
    ]
    items.append([11, "Unrated", "unkonwn", "unknown"])  # not interacted with: not in items.jsonl
    write_atomic(d / "x.item", ITEM_H, items)
    return d


def test_hand_split(hand_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    m = prepare(hand_dir, out, seed=3, max_len=2, n_candidates=3)
    items = read_jsonl(out / "items.jsonl")
    assert [it["item_id"] for it in items] == ["1", "2", "3", "4", "5", "6", "7", "10", "90", "91", "92"]
    assert items[0] == {"item_id": "1", "title": "Title 1", "year": "1991", "genres": ["Drama", "Comedy"]}
    assert items[1]["genres"] == []
    train = read_jsonl(out / "train.jsonl")
    assert train == [
        {"user": "A", "history": ["7"], "target": "2"},
        {"user": "B", "history": ["1"], "target": "2"},
        {"user": "B", "history": ["1", "2"], "target": "3"},
        {"user": "B", "history": ["2", "3"], "target": "4"},  # window of max_len = 2
    ]  # D (3 interactions) has no training window: its first item has no predecessor
    valid, test = read_jsonl(out / "valid.jsonl"), read_jsonl(out / "test.jsonl")
    assert [(r["user"], r["history"], r["target"]) for r in valid] == [
        ("A", ["7", "2"], "10"),
        ("B", ["3", "4"], "5"),
        ("D", ["90"], "91"),
    ]
    assert [(r["user"], r["history"], r["target"]) for r in test] == [
        ("A", ["2", "10"], "5"),
        ("B", ["4", "5"], "6"),
        ("D", ["90", "91"], "92"),
    ]
    assert m["counts"] == {
        "users": 3,
        "items": 11,
        "interactions": 13,
        "dropped_interactions": 2,
        "train": 4,
        "valid": 3,
        "test": 3,
    }
    check_candidates(out, 3)
    data = PreparedData.load(out)
    assert data.n_items == 11 and data.max_len == 2
    # index: position in numeric id order; A's test history ["2", "10"] -> [2, 8], target "5" -> 5
    assert data.test.history[0].tolist() == [2, 8] and data.test.target[0].item() == 5
    assert data.train.history[0].tolist() == [0, 7]  # left-padded


def test_hand_split_full_history(hand_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepare(hand_dir, out, seed=3, max_len=10, n_candidates=3)
    test = {r["user"]: r for r in read_jsonl(out / "test.jsonl")}
    assert (test["A"]["history"], test["A"]["target"]) == (["7", "2", "10"], "5")
    assert (test["B"]["history"], test["B"]["target"]) == (["1", "2", "3", "4", "5"], "6")
    assert (test["D"]["history"], test["D"]["target"]) == (["90", "91"], "92")


def test_id_order() -> None:
    assert id_order(["10", "2", "1"]) == ["1", "2", "10"]
    assert id_order(["b", "10", "2"]) == ["10", "2", "b"]


def test_filter_is_iterative() -> None:
    # users 0,1: items 0,1,2; user 2: items 0,3,4 (3 and 4 once each)
    user = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    item = np.array([0, 1, 2, 0, 1, 2, 0, 3, 4])
    # kcore 2: items 3, 4 go -> user 2 has 1 interaction (< 3) -> goes too
    assert _filter(user, item, kcore=2).tolist() == [True] * 6 + [False] * 3
    assert _filter(user, item, kcore=0).all()
    assert not _filter(user, item, kcore=4).any()


def test_kcore_on_tiny(tiny_atomic_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "k"
    m = prepare(tiny_atomic_dir, out, kcore=6, n_candidates=5)
    seqs = full_sequences(out)
    item_counts = Counter(i for s in seqs.values() for i in s)
    assert min(len(s) for s in seqs.values()) >= 6
    assert min(item_counts.values()) >= 6
    assert m["counts"]["interactions"] == sum(len(s) for s in seqs.values())
    assert m["counts"]["items"] == len(item_counts) and m["counts"]["users"] == len(seqs)
    assert m["counts"]["dropped_interactions"] > 0


def test_tiny_candidates_and_determinism(tiny_atomic_dir: Path, tiny_prepared: Path, tmp_path: Path) -> None:
    check_candidates(tiny_prepared, 20)
    again = tmp_path / "again"
    prepare(tiny_atomic_dir, again, seed=1)
    for f in FILES:
        assert (again / f).read_bytes() == (tiny_prepared / f).read_bytes(), f
    other = tmp_path / "seed2"
    prepare(tiny_atomic_dir, other, seed=2)
    assert (other / "train.jsonl").read_bytes() == (tiny_prepared / "train.jsonl").read_bytes()
    assert read_jsonl(other / "test.jsonl") != read_jsonl(tiny_prepared / "test.jsonl")


def test_manifest(tiny_atomic_dir: Path, tiny_prepared: Path) -> None:
    m = json.loads((tiny_prepared / "manifest.json").read_text())
    assert m["format"] == "amfrec-prepared/1"
    assert (m["seed"], m["max_len"], m["n_candidates"], m["kcore"]) == (1, 10, 20, 0)
    inter = tiny_atomic_dir / "tiny.inter"
    assert m["inputs"]["inter"] == {
        "path": str(inter.resolve()),
        "sha256": hashlib.sha256(inter.read_bytes()).hexdigest(),
    }
    assert m["counts"]["valid"] == m["counts"]["test"] == m["counts"]["users"] == 30
    data = PreparedData.load(tiny_prepared)
    assert len(data.train) == m["counts"]["train"] and data.n_items == m["counts"]["items"]


def test_replaces_existing_output(tiny_atomic_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    prepare(tiny_atomic_dir, out)
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary leftovers


# ---- bad input -------------------------------------------------------------------------------


def bad_dir(
    tmp_path: Path, inter: str | None, item: str | None = "item_id:token\ttitle:token_seq\n1\tA\n2\tB\n"
) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    if inter is not None:
        (d / "x.inter").write_text(inter)
    if item is not None:
        (d / "x.item").write_text(item)
    return d


H = "user_id:token\titem_id:token\ttimestamp:float\n"
GOOD_ROWS = "u\t1\t1\nu\t2\t2\nu\t1\t3\n"


@pytest.mark.parametrize(
    ("inter", "item", "match"),
    [
        (None, "item_id:token\ttitle:token_seq\n1\tA\n", r"expected exactly one \*\.inter file .* found 0"),
        (H + GOOD_ROWS, None, r"expected exactly one \*\.item file \(item titles, needed for the prompts\)"),
        (H + "u\t1\t1\nu\t2\n", ..., r"x\.inter:3: expected 3 tab-separated columns"),
        (H + "u\t1\t1\nu\t2\tyesterday\n", ..., r"x\.inter:3: field 'timestamp' is not a number"),
        (H, ..., r"x\.inter: no data rows"),
        ("", ..., r"x\.inter:1: empty file"),
        (
            "user_id:token\titem_id:token\n1\t1\n",
            ...,
            r"x\.inter:1: header lacks required field 'timestamp:float'",
        ),
        (H + "u\t1\t1\nu\t7\t2\n", ..., r"x\.inter:3: item id '7' is not in .*x\.item"),
        (H + "u\t1\t1\nu\t2\t2\nv\t1\t1\n", ..., r"no interactions left after filtering"),
        (H + GOOD_ROWS, "item_id:token\tyear:token\n1\t1990\n", r"x\.item:1: header has no title field"),
        (
            H + GOOD_ROWS,
            "item_id:token\ttitle:token_seq\n1\tA\n1\tB\n",
            r"x\.item:3: item id '1' already given",
        ),
        (
            H + GOOD_ROWS,
            "item_id:token\ttitle:token_seq\n1\t\n2\tB\n",
            r"x\.item:2: field 'title' .* is empty",
        ),
    ],
)
def test_bad_input(tmp_path: Path, inter: str | None, item: object, match: str) -> None:
    d = bad_dir(tmp_path, inter) if item is ... else bad_dir(tmp_path, inter, item)  # type: ignore[arg-type]
    out = tmp_path / "out" / "prepared"
    with pytest.raises(AmfrecError, match=match):
        prepare(d, out, n_candidates=2)
    assert not out.exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_too_few_negatives(tmp_path: Path) -> None:
    d = bad_dir(
        tmp_path, H + "u\t1\t1\nu\t2\t2\nu\t3\t3\n", "item_id:token\ttitle:token_seq\n1\tA\n2\tB\n3\tC\n"
    )
    with pytest.raises(AmfrecError, match=r"user 'u' interacted with 3 of 3 items; cannot draw 1 negatives"):
        prepare(d, tmp_path / "out", n_candidates=2)
    assert not (tmp_path / "out").exists()


def test_failure_keeps_existing_output(tmp_path: Path) -> None:
    d = bad_dir(tmp_path, H + "u\t1\t1\nu\t2\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("previous run")
    with pytest.raises(AmfrecError):
        prepare(d, out)
    assert (out / "keep.txt").read_text() == "previous run"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"seed": -1}, "seed must be >= 0"), ({"max_len": 0}, "max_len must be >= 1"),
     ({"n_candidates": 1}, "n_candidates must be >= 2"),
     ({"kcore": -1}, "kcore must be >= 0")],
)  # fmt: skip
def test_bad_arguments(tiny_atomic_dir: Path, tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(AmfrecError, match=match):
        prepare(tiny_atomic_dir, tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_missing_data_dir(tmp_path: Path) -> None:
    with pytest.raises(AmfrecError, match=r"nope: data directory not found"):
        prepare(tmp_path / "nope", tmp_path / "out")


# ---- real data -------------------------------------------------------------------------------


@pytest.mark.e2e
def test_ml100k(ml100k_dir: Path, prepared_ml100k: Path, tmp_path: Path) -> None:
    m = json.loads((prepared_ml100k / "manifest.json").read_text())
    assert m["counts"] == {
        "users": 943,
        "items": 1682,
        "interactions": 100_000,
        "dropped_interactions": 0,
        "train": 100_000 - 3 * 943,
        "valid": 943,
        "test": 943,
    }
    check_candidates(prepared_ml100k, 20)
    test = read_jsonl(prepared_ml100k / "test.jsonl")
    positions = Counter(r["candidates"].index(r["target"]) for r in test)
    assert len(positions) == 20 and max(positions.values()) < 100  # target not at a fixed position

    data = PreparedData.load(prepared_ml100k)
    assert data.test.history.shape == (943, 10) and data.test.candidates.shape == (943, 20)
    assert bool((data.test.candidates == data.test.target[:, None]).sum(1).eq(1).all())
    assert data.items[242].title == "Kolya" and data.items[242].year == "1996"
    assert data.items[267].year is None  # "unkonwn" in the input
    assert torch.equal(data.valid.history[:, 1:], data.test.history[:, :-1])  # test history = valid + 1 step

    again = tmp_path / "again"
    prepare(ml100k_dir, again, seed=1)
    for f in FILES:
        assert (again / f).read_bytes() == (prepared_ml100k / f).read_bytes(), f
    other = tmp_path / "seed2"
    prepare(ml100k_dir, other, seed=2)
    other_test = read_jsonl(other / "test.jsonl")
    assert [r["target"] for r in other_test] == [r["target"] for r in test]
    same = sum(a["candidates"] == b["candidates"] for a, b in zip(other_test, test, strict=True))
    assert same == 0


def test_load_rejects_malformed_rows(tiny_prepared: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(tiny_prepared, bad)
    rows = read_jsonl(bad / "test.jsonl")
    rows[1]["candidates"] = rows[1]["candidates"][:-1]
    (bad / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(AmfrecError, match=r"test\.jsonl:2: 19 candidates, but line 1 has 20"):
        PreparedData.load(bad)
    del rows[1]["target"]
    (bad / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(AmfrecError, match=r"test\.jsonl:2: missing field 'target'"):
        PreparedData.load(bad)
