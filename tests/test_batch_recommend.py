"""`amfrec recommend --users all|FILE --top K --out FILE`: every user's top K, as one history at a time."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from amfrec.cli.main import main
from amfrec.errors import AmfrecError
from amfrec.runs.baseline_run import train_baseline
from amfrec.runs.batch_recommend import user_histories, write_recommendations
from amfrec.runs.ranker import Ranker


@pytest.fixture(scope="module")
def run(tiny_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("batch") / "sasrec"
    train_baseline("sasrec", tiny_prepared, 1, out, {"max_epochs": 2, "hidden": 16})
    return out


def test_every_user_gets_what_one_history_at_a_time_gives(run: Path, tmp_path: Path) -> None:
    n = write_recommendations(run, "all", 5, tmp_path / "top.jsonl", batch_size=7)
    rows = [json.loads(line) for line in (tmp_path / "top.jsonl").read_text().splitlines()]
    ranker = Ranker.load(run)
    histories = user_histories(ranker)
    assert n == len(rows) == len(histories) == len({r["user"] for r in rows})
    for row in rows[:6]:  # the slow reference: one user's whole sequence, ranked alone
        want = ranker.rank(histories[row["user"]], k=5)
        assert row["items"] == [w["item_id"] for w in want]
        assert row["scores"] == pytest.approx([w["score"] for w in want], abs=1e-5)
        assert not set(row["items"]) & set(histories[row["user"]])  # the history is never recommended


def test_every_list_is_what_the_api_answers(run: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from amfrec.serve.app import create_app

    write_recommendations(run, "all", 5, tmp_path / "top.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "top.jsonl").read_text().splitlines()]
    ranker = Ranker.load(run)
    histories = user_histories(ranker)
    client = TestClient(create_app(ranker))
    for row in rows[::5]:
        body = client.post("/recommend", json={"history": histories[row["user"]], "k": 5}).json()
        assert row["items"] == [it["item_id"] for it in body["items"]]
        assert row["scores"] == pytest.approx([it["score"] for it in body["items"]], abs=1e-5)


def test_a_user_file_and_parquet(run: Path, tmp_path: Path) -> None:
    users = list(user_histories(Ranker.load(run)))[:3]
    (tmp_path / "users.txt").write_text("# nightly\n" + "\n".join(users) + "\n\n")
    assert main(["recommend", "--run", str(run), "--users", str(tmp_path / "users.txt"), "--top", "4",
                 "--out", str(tmp_path / "top.parquet")]) == 0  # fmt: skip
    table = pq.read_table(tmp_path / "top.parquet").to_pylist()
    assert [r["user"] for r in table] == users and all(
        len(r["items"]) == len(r["scores"]) == 4 for r in table
    )


def test_bad_requests_name_the_problem_and_write_nothing(run: Path, tmp_path: Path) -> None:
    (tmp_path / "users.txt").write_text("1\nnobody\n")
    with pytest.raises(AmfrecError, match=r"users\.txt:2: unknown user 'nobody'"):
        write_recommendations(run, str(tmp_path / "users.txt"), 3, tmp_path / "top.jsonl")
    with pytest.raises(AmfrecError, match=r"\.jsonl or \.parquet"):
        write_recommendations(run, "all", 3, tmp_path / "top.csv")
    with pytest.raises(AmfrecError, match="--top"):
        write_recommendations(run, "all", 0, tmp_path / "top.jsonl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["users.txt"]
    assert main(["recommend", "--run", str(run), "--users", "all"]) == 2  # no --out: a one-line error


def test_the_recommend_bench_times_four_paths_and_writes_nothing(tiny_amfrec_run: Path) -> None:
    from amfrec.bench.recommend import bench_recommend, format_recommend

    files = {p: p.stat().st_mtime_ns for p in tiny_amfrec_run.rglob("*")}
    rows = bench_recommend(tiny_amfrec_run)
    assert {p: p.stat().st_mtime_ns for p in tiny_amfrec_run.rglob("*")} == files
    assert [r.path.split(",")[0] for r in rows] == ["evaluate", "evaluate", "recommend", "recommend"]
    ranker = Ranker.load(tiny_amfrec_run)
    model, test = ranker.model, ranker.data.test
    assert all(r.users == len(test) and r.seconds > 0 for r in rows)
    # each prompt as built, one user at a time: its length minus the item tokens is the template alone
    build = model.prompt.build

    def mean_prompt(histories: list[list[int]]) -> float:
        lengths = [build([[model.titles[i] for i in h[-model.max_len :]]], [[]]).attention_mask.sum() for h in
                   histories]  # fmt: skip
        return float(sum(lengths)) / len(lengths)

    before = [[i for i in row if i] for row in test.history.tolist()]
    whole_ids = user_histories(ranker)
    whole = [[ranker.data.index[i] for i in whole_ids[u]] for u in test.users]
    template = mean_prompt(before) - rows[0].item_tokens
    assert mean_prompt(whole) - rows[3].item_tokens == pytest.approx(template)
    assert rows[1].item_tokens == rows[2].item_tokens == rows[0].item_tokens < rows[3].item_tokens
    table = format_recommend(rows, tiny_amfrec_run)
    assert table.count("\n| ") == 5 and "| evaluate, 1 + 19 |" in table and "1.00x" in table
    assert main(["bench", "recommend", "--run", str(tiny_amfrec_run), "--limit", "0"]) == 2


def test_the_recommend_bench_refuses_a_baseline_in_one_line(run: Path, capsys) -> None:
    assert main(["bench", "recommend", "--run", str(run)]) == 2
    assert "times AMFRec runs" in capsys.readouterr().err
