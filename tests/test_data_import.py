"""`amfrec data import`: a shop's CSV / Parquet / JSON Lines tables -> the folder `data prepare` reads."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from amfrec.cli.main import main
from amfrec.data.card import read_card
from amfrec.data.dataset import PreparedData
from amfrec.data.importer import Columns, import_data
from amfrec.data.prepare import prepare
from amfrec.errors import AmfrecError

ML = Columns(user="userId", item="movieId", time="timestamp", rating="rating")


def movielens_csv(root: Path, n_users: int = 12, n_items: int = 40, seed: int = 0) -> tuple[Path, Path, Path]:
    """ratings.csv (userId, movieId, rating, timestamp), movies.csv (movieId, title, genres), posters/ for
    every other movie: the export of a public MovieLens-style data set."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = ["userId,movieId,rating,timestamp"]
    for u in range(1, n_users + 1):
        for t, m in enumerate(rng.choice(np.arange(1, n_items + 1), size=8, replace=False)):
            rows.append(f"{u},{m},{rng.integers(1, 6)}.0,{1_000_000 + 100 * u + t}")
    (root / "ratings.csv").write_text("\n".join(rows) + "\n")
    movies = ["movieId,title,genres"] + [
        f'{m},"Movie {m}, The (199{m % 10})",Comedy|Drama' for m in range(1, n_items + 1)
    ]
    (root / "movies.csv").write_text("\n".join(movies) + "\n")
    (root / "posters").mkdir(exist_ok=True)
    for m in range(1, n_items + 1, 2):
        Image.new("RGB", (8, 8), (m * 10, 0, 0)).save(root / "posters" / f"{m}.jpg")
    return root / "ratings.csv", root / "movies.csv", root / "posters"


def test_a_movielens_export_goes_through_import_and_prepare(tmp_path: Path) -> None:
    ratings, movies, posters = movielens_csv(tmp_path / "raw")
    counts = import_data(ratings, tmp_path / "shop", movies, posters, ML, name="shop")
    assert counts == {"interactions": 96, "users": 12, "items": 40, "images": 20}
    assert read_card(tmp_path / "shop").noun == "item"
    assert sorted(p.name for p in (tmp_path / "shop" / "posters").iterdir())[:2] == [
        "1.jpg",
        "11.jpg",
    ]  # odd ids
    manifest = prepare(tmp_path / "shop", tmp_path / "prepared", seed=1)
    assert manifest["counts"]["interactions"] == 96 and manifest["counts"]["users"] == 12
    items = {it.item_id: it for it in PreparedData.load(tmp_path / "prepared").items[1:]}
    assert items["3"].title == "Movie 3, The (1993)"  # a quoted comma survives
    header = (tmp_path / "shop" / "shop.inter").read_text().splitlines()[0]
    assert header == "user_id:token\titem_id:token\ttimestamp:float\trating:float"


def test_parquet_json_lines_and_iso_dates_give_the_same_files(tmp_path: Path) -> None:
    ratings, movies, _ = movielens_csv(tmp_path / "raw")
    import_data(ratings, tmp_path / "csv", movies, None, ML, name="x")
    lines = ratings.read_text().splitlines()[1:]
    rows = [dict(zip(("userId", "movieId", "rating", "timestamp"), r.split(","), strict=True)) for r in lines]
    table = pa.table({"userId": [int(r["userId"]) for r in rows], "movieId": [r["movieId"] for r in rows],
                      "rating": [float(r["rating"]) for r in rows],
                      "timestamp": [int(r["timestamp"]) for r in rows]})  # fmt: skip
    pq.write_table(table, tmp_path / "ratings.parquet")
    import_data(tmp_path / "ratings.parquet", tmp_path / "pq", movies, None, ML, name="x")
    iso = [
        {**r, "timestamp": np.datetime_as_string(np.datetime64(int(r["timestamp"]), "s")) + "Z"} for r in rows
    ]
    (tmp_path / "ratings.jsonl").write_text("".join(json.dumps(r) + "\n" for r in iso))
    import_data(tmp_path / "ratings.jsonl", tmp_path / "jl", movies, None, ML, name="x")
    want = (tmp_path / "csv" / "x.inter").read_text()
    assert (tmp_path / "pq" / "x.inter").read_text() == want
    assert (tmp_path / "jl" / "x.inter").read_text() == want


def test_the_command_line_sets_the_noun(tmp_path: Path) -> None:
    ratings, movies, posters = movielens_csv(tmp_path / "raw")
    code = main(["data", "import", "--interactions", str(ratings), "--items", str(movies), "--images",
                 str(posters), "--user-col", "userId", "--item-col", "movieId", "--rating-col", "rating",
                 "--noun", "movie", "--out", str(tmp_path / "out")])  # fmt: skip
    assert code == 0 and read_card(tmp_path / "out").noun == "movie"
    assert (tmp_path / "out" / "out.inter").is_file()


@pytest.mark.parametrize(
    ("ratings", "message"),
    [
        ("userId,movieId,rating\n1,2,3\n", r"ratings\.csv: no column 'timestamp'"),
        ("userId,movieId,rating,timestamp\n1,2,3,100\n1,3,3,yesterday\n",
         r"row 2 \(line 3\): column 'timestamp': cannot read 'yesterday'"),
        ("userId,movieId,rating,timestamp\n", r"ratings\.csv: no rows"),
        ('userId,movieId,rating,timestamp\n1,"a,b",3,100\n', r"row 1 \(line 2\): column 'movieId': id 'a,b'"),
        ("userId,movieId,rating,timestamp\n1,2,good,100\n",
         r"row 1 \(line 2\): column 'rating': 'good' is not a number"),
        ("userId,movieId,rating,timestamp\n,2,3,100\n", r"row 1 \(line 2\): column 'userId' is empty"),
        ("userId,movieId,rating,timestamp\n1,2,3,2020-01-01\n1,3,3,100\n",
         r"row 2 \(line 3\): column 'timestamp': '100' is a number where other rows hold dates"),
    ],
)  # fmt: skip
def test_bad_interactions_name_file_row_and_column(tmp_path: Path, ratings: str, message: str) -> None:
    (tmp_path / "ratings.csv").write_text(ratings)
    with pytest.raises(AmfrecError, match=message):
        import_data(tmp_path / "ratings.csv", tmp_path / "out", None, None, ML)
    assert not (tmp_path / "out").exists()


def test_bad_items_and_files_are_refused(tmp_path: Path) -> None:
    ratings, movies, _ = movielens_csv(tmp_path / "raw")
    (tmp_path / "dup.csv").write_text("movieId,title\n1,A\n2,B\n1,C\n")
    with pytest.raises(
        AmfrecError, match=r"dup\.csv:row 3 \(line 4\): item '1' given twice \(first at row 1\)"
    ):
        import_data(ratings, tmp_path / "out", tmp_path / "dup.csv", None, ML)
    (tmp_path / "fake.parquet").write_text("userId,movieId\n1,2\n")
    with pytest.raises(AmfrecError, match=r"fake\.parquet: not a valid Parquet file"):
        import_data(tmp_path / "fake.parquet", tmp_path / "out", None, None, ML)
    with pytest.raises(AmfrecError, match=r"unknown extension '\.xlsx'"):
        import_data(tmp_path / "r.xlsx", tmp_path / "out", None, None, ML)
    with pytest.raises(AmfrecError, match=r"movies\.csv: no column 'name'"):
        import_data(ratings, tmp_path / "out", movies, None, Columns(**{**ML.__dict__, "title": "name"}))
    with pytest.raises(AmfrecError, match=r"--image-col and --text-cols name columns of the items table"):
        import_data(ratings, tmp_path / "out", None, None, Columns(**{**ML.__dict__, "image": "poster"}))
    assert not (tmp_path / "out").exists()


R = "user_id,item_id,timestamp\n1,a,100\n2,b,200\n"  # the good tables the bad cases start from
CAT = "item_id,title\na,A\nb,B\n"
NOT_AN_IMAGE = b"<html>404 not found</html>"
MALFORMED = [
    # (id, files (name -> text, bytes, a table for Parquet, or a dict for a folder), options, file, message)
    ("no-user-column", {"r.csv": "item_id,timestamp\na,100\n"}, [], "r.csv", r": no column 'user_id'"),
    ("no-item-column", {"r.csv": "user_id,timestamp\n1,100\n"}, [], "r.csv", r": no column 'item_id'"),
    ("no-time-column", {"r.csv": "user_id,item_id\n1,a\n"}, [], "r.csv", r": no column 'timestamp'"),
    ("user-col-option-absent", {"r.csv": R}, ["--user-col", "customer"], "r.csv", r": no column 'customer'"),
    ("rating-col-option-absent", {"r.csv": R}, ["--rating-col", "stars"], "r.csv", r": no column 'stars'"),
    ("empty-csv", {"r.csv": ""}, [], "r.csv", r": empty file"),
    ("header-only-csv", {"r.csv": "user_id,item_id,timestamp\n"}, [], "r.csv", r": no rows"),
    ("empty-jsonl", {"r.jsonl": ""}, [], "r.jsonl", r": empty file"),
    ("time-unreadable", {"r.csv": R + "3,a,yesterday\n"}, [], "r.csv",
     r":row 3 \(line 4\): column 'timestamp': cannot read 'yesterday'"),
    ("time-impossible-date", {"r.csv": "user_id,item_id,timestamp\n1,a,2020-13-45\n"}, [], "r.csv",
     r":row 1 \(line 2\): column 'timestamp': cannot read '2020-13-45'"),
    ("time-number-among-dates", {"r.csv": "user_id,item_id,timestamp\n1,a,2020-01-01\n1,b,100\n"}, [],
     "r.csv", r":row 2 \(line 3\): column 'timestamp': '100' is a number where other rows hold dates"),
    ("time-zone-and-none", {"r.csv": "user_id,item_id,timestamp\n1,a,2020-01-01T10:00:00Z\n"
                                     "1,b,2020-01-02 10:00\n"}, [], "r.csv",
     r":row 2 \(line 3\): column 'timestamp': '2020-01-02 10:00' lacks a time zone where row 1"),
    ("time-nan", {"r.csv": R + "3,a,nan\n"}, [], "r.csv",
     r":row 3 \(line 4\): column 'timestamp' is not finite"),
    ("time-empty", {"r.csv": R + "3,a, \n"}, [], "r.csv", r":row 3 \(line 4\): column 'timestamp' is empty"),
    ("time-inf-parquet", {"r.parquet": pa.table({"user_id": ["1", "2"], "item_id": ["a", "b"],
                                                 "timestamp": [100.0, float("inf")]})}, [], "r.parquet",
     r":row 2: column 'timestamp' is not finite"),
    ("time-missing-jsonl", {"r.jsonl": '{"user_id": 1, "item_id": "a", "timestamp": 100}\n\n'
                                       '{"user_id": 2, "item_id": "b"}\n'}, [], "r.jsonl",
     r":row 2 \(line 3\): column 'timestamp' is empty"),
    ("rating-word", {"r.csv": "user_id,item_id,timestamp,stars\n1,a,100,4\n1,b,200,good\n"},
     ["--rating-col", "stars"], "r.csv", r":row 2 \(line 3\): column 'stars': 'good' is not a number"),
    ("rating-python-only-number", {"r.csv": "user_id,item_id,timestamp,stars\n1,a,100,1_000\n"},
     ["--rating-col", "stars"], "r.csv", r":row 1 \(line 2\): column 'stars': '1_000' is not a number"),
    ("rating-words-jsonl", {"r.jsonl": '{"user_id": 1, "item_id": "a", "timestamp": 1, "stars": "five"}\n'},
     ["--rating-col", "stars"], "r.jsonl", r":row 1 \(line 1\): column 'stars': 'five' is not a number"),
    ("rating-changes-kind-jsonl", {"r.jsonl": '{"user_id": 1, "item_id": "a", "timestamp": 1, "stars": 4}\n'
                                              '{"user_id": 1, "item_id": "b", "timestamp": 2, "stars": "4"}'},
     ["--rating-col", "stars"], "r.jsonl",
     r":row 2 \(line 2\): column 'stars': text where row 1 holds a number"),
    ("user-empty", {"r.csv": R + ",a,300\n"}, [], "r.csv", r":row 3 \(line 4\): column 'user_id' is empty"),
    ("item-blank", {"r.csv": R + "3,  ,300\n"}, [], "r.csv", r":row 3 \(line 4\): column 'item_id' is empty"),
    ("user-null-parquet", {"r.parquet": pa.table({"user_id": ["1", None], "item_id": ["a", "b"],
                                                  "timestamp": [1, 2]})}, [], "r.parquet",
     r":row 2: column 'user_id' is empty"),
    ("item-with-tab", {"r.csv": R + '3,"a\tb",300\n'}, [], "r.csv",
     r":row 3 \(line 4\): column 'item_id': id 'a\\tb' holds a tab, newline or comma"),
    ("item-with-newline", {"r.csv": R + '3,"a\nb",300\n'}, [], "r.csv",
     r":row 3 \(line 4\): column 'item_id': id 'a\\nb' holds a tab, newline or comma"),
    ("item-with-comma-parquet", {"r.parquet": pa.table({"user_id": ["1"], "item_id": ["a,b"],
                                                        "timestamp": [1]})}, [], "r.parquet",
     r":row 1: column 'item_id': id 'a,b' holds a tab, newline or comma"),
    ("user-lists-jsonl", {"r.jsonl": '{"user_id": [1], "item_id": "a", "timestamp": 1}\n'}, [], "r.jsonl",
     r": column 'user_id' holds list<item: int64> values"),
    ("row-with-extra-field", {"r.csv": R + "3,a,300,oops\n"}, [], "r.csv",
     r":row 3 \(line 4\): 4 fields where the header has 3"),
    ("column-twice", {"r.csv": "user_id,item_id,timestamp,user_id\n1,a,100,2\n"}, [], "r.csv",
     r": column 'user_id' appears twice in the header"),
    ("latin-1-title", {"r.csv": R, "i.csv": b"item_id,title\na,A\n" + "b,Caf\xe9\n".encode("latin-1")},
     ["--items", "i.csv"], "i.csv", r":row 2 \(line 3\): column 'title' is not UTF-8 text \(byte 0xe9\)"),
    ("utf-16-csv", {"r.csv": R.encode("utf-16")}, [], "r.csv", r":line 1: the header is not UTF-8 text"),
    ("binary-garbage-csv", {"r.csv": bytes(range(256)) * 4}, [], "r.csv",
     r":row 2 \(line 3\): column '#2' is not UTF-8 text"),
    ("csv-named-parquet", {"r.parquet": R}, [], "r.parquet", r": not a valid Parquet file"),
    ("jsonl-broken-line", {"r.jsonl": '{"user_id": 1, "item_id": "a", "timestamp": 1}\n{"user_id": 2,\n'},
     [], "r.jsonl", r":row 2 \(line 2\): not valid JSON"),
    ("jsonl-line-not-an-object", {"r.jsonl": '{"user_id": 1, "item_id": "a", "timestamp": 1}\n[2, "b", 2]\n'},
     [], "r.jsonl", r":row 2 \(line 2\): a JSON array, not an object"),
    ("json-array-file", {"r.json": '[{"user_id": 1, "item_id": "a", "timestamp": 1}]\n'}, [], "r.json",
     r":row 1 \(line 1\): a JSON array, not an object"),
    ("unknown-extension", {"r.xlsx": R}, [], "r.xlsx", r": unknown extension '\.xlsx'"),
    ("no-interactions-file", {}, [], "r.csv", r": no such file"),
    ("folder-as-interactions", {"r.csv": {}}, [], "r.csv", r": a folder, not a file"),
    ("no-items-file", {"r.csv": R}, ["--items", "i.csv"], "i.csv", r": no such file"),
    ("items-header-only", {"r.csv": R, "i.csv": "item_id,title\n"}, ["--items", "i.csv"], "i.csv",
     r": no rows"),
    ("items-no-id-column", {"r.csv": R, "i.csv": "sku,title\na,A\n"}, ["--items", "i.csv"], "i.csv",
     r": no column 'item_id'"),
    ("items-no-title-column", {"r.csv": R, "i.csv": "item_id,name\na,A\n"}, ["--items", "i.csv"], "i.csv",
     r": no column 'title'"),
    ("items-text-col-absent", {"r.csv": R, "i.csv": CAT}, ["--items", "i.csv", "--text-cols", "blurb"],
     "i.csv", r": no column 'blurb'"),
    ("items-title-lists-parquet", {"r.csv": R, "i.parquet": pa.table({"item_id": ["a", "b"],
                                                                      "title": [["A"], ["B"]]})},
     ["--items", "i.parquet"], "i.parquet", r": column 'title' holds list<element: string> values"),
    ("item-given-twice", {"r.csv": R, "i.csv": CAT + "a,C\n"}, ["--items", "i.csv"], "i.csv",
     r":row 3 \(line 4\): item 'a' given twice \(first at row 1\)"),
    ("item-twice-after-two-line-title", {"r.csv": R, "i.csv": 'item_id,title\na,"A\nsequel"\nb,B\na,C\n'},
     ["--items", "i.csv"], "i.csv", r":row 3 \(line 5\): item 'a' given twice"),
    ("item-not-in-items", {"r.csv": R + "3,c,300\n", "i.csv": CAT}, ["--items", "i.csv"], "r.csv",
     r":row 3 \(line 4\): column 'item_id': item 'c' is not in .*i\.csv"),
    ("image-col-absent", {"r.csv": R, "i.csv": CAT}, ["--items", "i.csv", "--image-col", "picture"], "i.csv",
     r": no column 'picture'"),
    ("image-file-missing", {"r.csv": R, "i.csv": "item_id,title,picture\na,A,pics/a.jpg\nb,B,\n"},
     ["--items", "i.csv", "--image-col", "picture"], "i.csv",
     r":row 1 \(line 2\): column 'picture': no image file .*pics/a\.jpg"),
    ("image-file-not-an-image", {"r.csv": R, "i.csv": "item_id,title,picture\na,A,\nb,B,pics/b.jpg\n",
                                 "pics": {"b.jpg": NOT_AN_IMAGE}},
     ["--items", "i.csv", "--image-col", "picture"], "i.csv",
     r":row 2 \(line 3\): column 'picture': .*pics/b\.jpg is not a JPEG or PNG image"),
    ("images-folder-missing", {"r.csv": R}, ["--images", "posters"], "posters", r": no such folder"),
    ("image-in-folder-not-an-image", {"r.csv": R, "posters": {"b.png": NOT_AN_IMAGE}},
     ["--images", "posters"], "posters/b.png", r": not a JPEG or PNG image \(the picture of item 'b'\)"),
    ("out-is-a-file", {"r.csv": R, "out": "my notes\n"}, [], "out", r": a file, not a folder"),
    ("out-holds-other-files", {"r.csv": R, "out": {"notes.txt": "keep me\n"}}, [], "out",
     r": a folder that holds other files, not an earlier import"),
]  # fmt: skip
PATH_OPTIONS = ("--interactions", "--items", "--images")


def write_files(root: Path, files: dict) -> None:
    """Text, bytes, a pyarrow table (as Parquet) or a dict (a folder of the same) per name."""
    root.mkdir(exist_ok=True)
    for name, content in files.items():
        if isinstance(content, dict):
            write_files(root / name, content)
        elif isinstance(content, pa.Table):
            pq.write_table(content, root / name)
        elif isinstance(content, bytes):
            (root / name).write_bytes(content)
        else:
            (root / name).write_text(content)


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` -> its bytes (None for a folder)."""
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize(("files", "options", "where", "message"), [c[1:] for c in MALFORMED],
                         ids=[c[0] for c in MALFORMED])  # fmt: skip
def test_malformed_input_is_one_line_naming_file_row_and_column(
    tmp_path: Path, capsys, caplog, files: dict, options: list[str], where: str, message: str
) -> None:
    write_files(tmp_path, files)
    interactions = next((n for n in files if n.startswith("r.")), "r.csv")
    argv = ["data", "import", "--interactions", interactions, *options, "--out", "out"]
    argv = [
        str(tmp_path / a) if i and argv[i - 1] in (*PATH_OPTIONS, "--out") else a for i, a in enumerate(argv)
    ]
    before = snapshot(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("amfrec: error: "), err
    assert re.search(re.escape(str(tmp_path / where)) + message, lines[0]), lines[0]
    assert "Traceback" not in err + caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert snapshot(tmp_path) == before  # nothing written: no output folder, no temporary one, --out kept
