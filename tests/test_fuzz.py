"""Malformed input everywhere a user can send it: over 200 cases across the data readers, feature imports,
config files and the HTTP API. Each must end in a one-line error (CLI exit 2) or a JSON 4xx: no traceback,
no 5xx, and no partial output left behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amfrec.cli.main import main

# ---------------------------------------------------------------------------------------------- files
INTER_EDITS = {  # name -> function(lines of tiny.inter) -> new bytes
    "truncated mid-row": lambda ls: ("\n".join(ls[:40]) + "\n" + ls[40][:5]).encode(),
    "non-UTF-8 byte": lambda ls: ("\n".join(ls[:20]) + "\n").encode() + b"\xff\xfe\x80" + b"\n",
    "empty file": lambda ls: b"",
    "header only": lambda ls: (ls[0] + "\n").encode(),
    "no header types": lambda ls: (
        "user_id\titem_id\trating\ttimestamp\n" + "\n".join(ls[1:]) + "\n"
    ).encode(),
    "missing item column": lambda ls: (
        "\n".join(ln.replace("item_id:token", "thing:token") for ln in ls)
    ).encode(),
    "timestamp not a number": lambda ls: (
        "\n".join(ls[:9] + ["1\t2\t3\tyesterday"] + ls[9:]) + "\n"
    ).encode(),
    "NaN timestamp": lambda ls: ("\n".join(ls[:9] + ["1\t2\t3\tnan"] + ls[9:]) + "\n").encode(),
    "inf timestamp": lambda ls: ("\n".join(ls[:9] + ["1\t2\t3\tinf"] + ls[9:]) + "\n").encode(),
    "unknown item id": lambda ls: ("\n".join(ls[:9] + ["1\t99999\t3\t5"] + ls[9:]) + "\n").encode(),
    "binary garbage": lambda ls: bytes(range(256)) * 4,
}
for _row in (1, 7, 33, 120):  # wrong column counts at several rows
    INTER_EDITS[f"row {_row} short"] = lambda ls, r=_row: ("\n".join(
        ln.rsplit("\t", 1)[0] if i == r else ln for i, ln in enumerate(ls)) + "\n").encode()  # fmt: skip
    INTER_EDITS[f"row {_row} long"] = lambda ls, r=_row: ("\n".join(
        ln + "\t9" if i == r else ln for i, ln in enumerate(ls)) + "\n").encode()  # fmt: skip
ITEM_EDITS = {
    "non-UTF-8 title": lambda ls: ("\n".join(ls[:3]) + "\n").encode() + b"5\t\xe9t\xe9\t1990\tDrama\n",
    "no title column": lambda ls: (
        "\n".join(ln.replace("movie_title", "blurb") for ln in ls) + "\n"
    ).encode(),
    "empty file": lambda ls: b"",
    "row 4 short": lambda ls: (
        "\n".join(ln.split("\t")[0] if i == 4 else ln for i, ln in enumerate(ls))
    ).encode(),
}


@pytest.mark.parametrize("edit", sorted(INTER_EDITS))
def test_malformed_interactions(edit: str, tiny_atomic_dir: Path, tmp_path: Path, capsys) -> None:
    _prepare_with(tiny_atomic_dir, tmp_path, "tiny.inter", INTER_EDITS[edit], capsys)


@pytest.mark.parametrize("edit", sorted(ITEM_EDITS))
def test_malformed_items(edit: str, tiny_atomic_dir: Path, tmp_path: Path, capsys) -> None:
    _prepare_with(tiny_atomic_dir, tmp_path, "tiny.item", ITEM_EDITS[edit], capsys)


def _prepare_with(src: Path, tmp_path: Path, name: str, edit, capsys) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(src, raw)
    lines = (raw / name).read_text(encoding="utf-8").splitlines()
    (raw / name).write_bytes(edit(lines))
    err = one_line_error(capsys, ["data", "prepare", "--data", str(raw), "--out", str(tmp_path / "D")])
    assert name in err or "tiny" in err, err
    assert not (tmp_path / "D").exists() and not list(tmp_path.glob(".D*"))


FEATURE_MATRICES = {
    "NaN": lambda n: np.where(np.arange(n * 4).reshape(n, 4) == 5, np.nan, 1.0).astype(np.float32),
    "inf": lambda n: np.full((n, 4), np.inf, np.float32),
    "1-D": lambda n: np.ones(n, np.float32),
    "3-D": lambda n: np.ones((n, 2, 2), np.float32),
    "too few rows": lambda n: np.ones((n - 3, 4), np.float32),
    "too many rows": lambda n: np.ones((n + 3, 4), np.float32),
    "strings": lambda n: np.array([["a"] * 4] * n),
    "empty": lambda n: np.ones((0, 4), np.float32),
}


@pytest.mark.parametrize(
    "case", [*sorted(FEATURE_MATRICES), "not an npy file", "unknown id", "ids not UTF-8"]
)
def test_malformed_feature_imports(case: str, tiny_prepared: Path, tmp_path: Path, capsys) -> None:
    ids = [json.loads(line)["item_id"] for line in (tiny_prepared / "items.jsonl").open()]
    matrix, id_file = tmp_path / "m.npy", tmp_path / "ids.txt"
    id_file.write_text("\n".join(ids) + "\n")
    if case in FEATURE_MATRICES:
        np.save(matrix, FEATURE_MATRICES[case](len(ids)))
    else:
        np.save(matrix, np.ones((len(ids), 4), np.float32))
    if case == "not an npy file":
        matrix.write_bytes(b"PK\x03\x04 definitely not numpy")
    elif case == "unknown id":
        id_file.write_text("\n".join([*ids[:-1], "no-such-item"]) + "\n")
    elif case == "ids not UTF-8":
        id_file.write_bytes(b"\xff\xfe\n" * len(ids))
    argv = ["features", "--data", str(tiny_prepared), "--modalities", "", "--out", str(tmp_path / "F")]
    err = one_line_error(capsys, [*argv, "--import", f"vis={matrix}:{id_file}"])
    assert "m.npy" in err or "ids.txt" in err or "vis" in err, err
    assert not (tmp_path / "F" / "vis.npy").exists()


CONFIGS = {
    "unclosed bracket": "model: [unclosed\n",
    "tab indentation": "model:\n\tbackbone: x\n",
    "not a mapping": "- a\n- b\n",
    "unknown section": "optimizer: {lr: 1}\n",
    "unknown model key": "model:\n  colour: red\n",
    "unknown projector key": "model:\n  projector:\n    experts: 3\n",
    "unknown train key": "train:\n  epochs: 3\n",
    "string steps": "train:\n  max_steps: many\n",
    "negative lr": "train:\n  lr: -1\n",
    "zero batch": "train:\n  batch_size: 0\n",
    "bad fusion": "model:\n  fusion: blend\n",
    "bad answer": "model:\n  answer: essay\n",
    "bad dtype": "model:\n  dtype: float8\n",
    "empty modalities": "model:\n  modalities: []\n",
    "duplicate modality": "model:\n  modalities: [id, id]\n",
    "nan scale": "model:\n  score_scale: .nan\n",
    "template without history": "model:\n  template: 'nothing here'\n",
    "non-UTF-8": b"model:\n  noun: \xff\xfe\n",
    "binary": bytes(range(256)),
}


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_malformed_configs(case: str, tiny_prepared: Path, tmp_path: Path, capsys) -> None:
    path = tmp_path / "bad.yaml"
    text = CONFIGS[case]
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    argv = ["train", "--model", "amfrec", "--data", str(tiny_prepared), "--features", str(tmp_path)]
    err = one_line_error(capsys, [*argv, "--config", str(path), "--out", str(tmp_path / "R")])
    assert "bad.yaml" in err, err
    assert not (tmp_path / "R").exists()


@pytest.mark.parametrize("pair", ["noequals", "=3", "train.lr=[unclosed", "model.fusion=blend", "x.y=1"])
def test_malformed_set_overrides(pair: str, tiny_prepared: Path, tmp_path: Path, capsys) -> None:
    argv = ["train", "--model", "amfrec", "--data", str(tiny_prepared), "--features", str(tmp_path)]
    one_line_error(capsys, [*argv, "--set", pair, "--out", str(tmp_path / "R")])
    assert not (tmp_path / "R").exists()


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("amfrec: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------------------------------------- the API
@pytest.fixture(scope="module")
def client(tiny_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    from amfrec.runs.baseline_run import train_baseline
    from amfrec.runs.ranker import Ranker
    from amfrec.serve.app import create_app

    run = tmp_path_factory.mktemp("fuzz") / "pop"
    train_baseline("popularity", tiny_prepared, 1, run)
    return TestClient(create_app(Ranker.load(run)), raise_server_exceptions=False)


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20,
)
BODIES = JSON | st.fixed_dictionaries(
    {"history": JSON, "k": JSON}, optional={"candidates": JSON, "exclude_seen": JSON, "extra": JSON}
)
SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _check(res) -> None:
    assert res.status_code < 500, res.text
    body = res.json()
    if res.status_code >= 400:
        assert body["error"] and "Traceback" not in res.text


@SETTINGS
@given(body=BODIES)
def test_api_json_bodies(client: TestClient, body) -> None:
    _check(client.post("/recommend", json=body))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200))
def test_api_raw_bodies(client: TestClient, raw: bytes) -> None:
    _check(client.post("/recommend", content=raw, headers={"content-type": "application/json"}))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=st.text(max_size=30), page=st.integers(-5, 20_000), per_page=st.integers(-5, 500))
def test_api_item_search(client: TestClient, query: str, page: int, per_page: int) -> None:
    _check(client.get("/items", params={"query": query, "page": page, "per_page": per_page}))
