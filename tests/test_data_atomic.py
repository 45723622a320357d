"""RecBole atomic file reader: parsing and every validation error (file:line and field in the message)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from amfrec.data.atomic import read_atomic
from amfrec.errors import AmfrecError

INTER = {"user_id": "token", "item_id": "token", "timestamp": "float"}
HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"


def write(tmp_path: Path, text: str, name: str = "d.inter") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_parses_types_and_line_numbers(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "item_id:token\tmovie_title:token_seq\tscore:float\temb:float_seq\n"
        "10\tToy  Story\t1.5\t0.5 -1\n"
        "\n"  # blank line: skipped, but counted for line numbers
        "2\tKolya\t\t\r\n",
        "d.item",
    )
    t = read_atomic(p, {"item_id": "token"})
    assert len(t) == 2
    assert t.types == {"item_id": "token", "movie_title": "token_seq", "score": "float", "emb": "float_seq"}
    assert t["item_id"] == ["10", "2"]
    assert t["movie_title"] == [["Toy", "Story"], ["Kolya"]]
    assert t["score"][0] == 1.5 and math.isnan(t["score"][1])  # empty optional float -> NaN
    assert t["emb"] == [[0.5, -1.0], []]
    assert t.lines == [2, 4]
    assert t.where(1) == f"{p}:4"


def test_required_token_seq_read_as_token(tmp_path: Path) -> None:
    p = write(tmp_path, "item_id:token\ttitle:token_seq\n1\tThe Big Sleep\n", "d.item")
    assert read_atomic(p, {"item_id": "token", "title": "token"})["title"] == ["The Big Sleep"]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AmfrecError, match=r"nope\.inter: file not found"):
        read_atomic(tmp_path / "nope.inter", INTER)


def test_header_without_required_field(tmp_path: Path) -> None:
    p = write(tmp_path, "user_id:token\titem_id:token\trating:float\n1\t2\t3\n")
    with pytest.raises(AmfrecError, match=r"d\.inter:1: header lacks required field 'timestamp:float'"):
        read_atomic(p, INTER)


def test_header_wrong_type_for_required_field(tmp_path: Path) -> None:
    p = write(tmp_path, "user_id:token\titem_id:token\ttimestamp:token\n1\t2\t3\n")
    match = r"d\.inter:1: field 'timestamp' is declared 'token', expected 'float'"
    with pytest.raises(AmfrecError, match=match):
        read_atomic(p, INTER)


@pytest.mark.parametrize(
    ("header", "match"),
    [
        ("user_id\titem_id:token\n", r"d\.inter:1: header field 'user_id' is not of the form name:type"),
        ("user_id:token\titem_id:int\n", r"d\.inter:1: header field 'item_id' has unknown type 'int'"),
        ("user_id:token\tuser_id:token\n", r"d\.inter:1: header field 'user_id' appears twice"),
    ],
)
def test_bad_header(tmp_path: Path, header: str, match: str) -> None:
    p = write(tmp_path, header + "1\t2\n")
    with pytest.raises(AmfrecError, match=match):
        read_atomic(p, {})


def test_wrong_column_count_names_file_and_line(tmp_path: Path) -> None:
    p = write(tmp_path, HEADER + "1\t2\t3\t100\n1\t3\t4\n")
    with pytest.raises(AmfrecError, match=r"d\.inter:3: expected 4 tab-separated columns .* found 3"):
        read_atomic(p, INTER)


def test_non_numeric_timestamp(tmp_path: Path) -> None:
    p = write(tmp_path, HEADER + "1\t2\t3\t100\n1\t3\t4\t12:30\n")
    with pytest.raises(AmfrecError, match=r"d\.inter:3: field 'timestamp' is not a number: '12:30'"):
        read_atomic(p, INTER)


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_float(tmp_path: Path, value: str) -> None:
    p = write(tmp_path, HEADER + f"1\t2\t3\t{value}\n")
    with pytest.raises(AmfrecError, match=r"d\.inter:2: field 'timestamp' is not a finite number"):
        read_atomic(p, INTER)


def test_non_numeric_optional_float(tmp_path: Path) -> None:
    p = write(tmp_path, HEADER + "1\t2\tgood\t100\n")
    with pytest.raises(AmfrecError, match=r"d\.inter:2: field 'rating' is not a number: 'good'"):
        read_atomic(p, INTER)


def test_empty_required_value(tmp_path: Path) -> None:
    p = write(tmp_path, HEADER + "1\t\t3\t100\n")
    with pytest.raises(AmfrecError, match=r"d\.inter:2: field 'item_id' is empty"):
        read_atomic(p, INTER)


def test_zero_byte_file(tmp_path: Path) -> None:
    p = write(tmp_path, "")
    with pytest.raises(AmfrecError, match=r"d\.inter:1: empty file"):
        read_atomic(p, INTER)


def test_header_only_has_no_data_rows(tmp_path: Path) -> None:
    p = write(tmp_path, HEADER + "\n\n")
    with pytest.raises(AmfrecError, match=r"d\.inter: no data rows"):
        read_atomic(p, INTER)


def test_latin1_line_is_read(tmp_path: Path) -> None:
    p = tmp_path / "d.item"
    p.write_bytes("item_id:token\ttitle:token_seq\n1\tMisérables, Les\n".encode("latin-1"))
    assert read_atomic(p, {"item_id": "token"})["title"] == [["Misérables,", "Les"]]
