"""`amfrec data import`: a shop's CSV / Parquet / JSON Lines tables -> the folder `data prepare` reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from amfrec.cli import main
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
    assert not (tmp_path / "out").exists()
