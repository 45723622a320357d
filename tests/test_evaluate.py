"""The shared evaluator with fake deterministic recommenders, and the run directory helpers."""

from __future__ import annotations

import json
import math

import pytest
import torch

from amfrec.data.dataset import Split
from amfrec.errors import AmfrecError
from amfrec.evaluate import evaluate, evaluate_ranks, score_metrics, target_positions
from amfrec.recommender import Recommender
from amfrec.runs.rundir import load_run_config, metrics_record, write_run


def make_split(n: int = 7, n_cand: int = 5, max_len: int = 4) -> Split:
    """Row r: history (b, b+1, b+2) left-padded with b = 10r + 1; target b+3 (= last item + 1);
    negatives b+4, b+5, ... (all above the target); the target sits at column r % n_cand."""
    users = [f"u{r}" for r in range(n)]
    history = torch.zeros(n, max_len, dtype=torch.long)
    target = torch.zeros(n, dtype=torch.long)
    candidates = torch.zeros(n, n_cand, dtype=torch.long)
    for r in range(n):
        base = 10 * r + 1
        history[r, -3:] = torch.tensor([base, base + 1, base + 2])
        target[r] = base + 3
        negs = [base + 4 + j for j in range(n_cand - 1)]
        pos = r % n_cand
        candidates[r] = torch.tensor(negs[:pos] + [base + 3] + negs[pos:])
    return Split(users=users, history=history, target=target, candidates=candidates)


class Oracle(Recommender):
    """Knows the rule: the next item is the last history item + 1."""

    name = "oracle"

    def fit(self, data, seed):
        return {}

    def score(self, history, candidates):
        return (candidates == history[:, -1:] + 1).float()  # (B, C)


class Constant(Recommender):
    name = "constant"

    def fit(self, data, seed):
        return {}

    def score(self, history, candidates):
        return torch.zeros(candidates.shape)


class ByIndex(Recommender):
    """Higher item index = higher score."""

    name = "by_index"

    def fit(self, data, seed):
        return {}

    def score(self, history, candidates):
        return candidates.float()


class WrongShape(Constant):
    def score(self, history, candidates):
        return torch.zeros(candidates.shape[0], candidates.shape[1] + 1)


def test_target_positions():
    split = make_split(n=7, n_cand=5)
    assert target_positions(split).tolist() == [0, 1, 2, 3, 4, 0, 1]


def test_oracle_scores_hr1_of_one():
    m = evaluate(Oracle(), make_split(), batch_size=3)
    assert m["n"] == 7
    assert m["hr@1"] == 1.0 and m["ndcg@10"] == 1.0 and m["mrr"] == 1.0


def test_all_equal_scores_rank_last():
    split = make_split(n_cand=5)
    assert evaluate_ranks(Constant(), split).tolist() == [5] * 7
    m = evaluate(Constant(), split)
    assert m["hr@1"] == 0.0 and m["hr@3"] == 0.0
    assert m["hr@5"] == 1.0 and m["hr@10"] == 1.0
    assert m["mrr"] == pytest.approx(1 / 5)
    assert m["ndcg@10"] == pytest.approx(1 / math.log2(6))


def test_ranks_by_hand_and_batch_size_independent():
    split = make_split(n=7, n_cand=5)
    # ByIndex: every negative index is above the target's -> rank 5, except row 0 made by hand:
    split.candidates[0] = torch.tensor([4, 1, 2, 3, 5])  # target 4 at column 0; only 5 is larger -> rank 2
    ranks1 = evaluate_ranks(ByIndex(), split, batch_size=1)
    ranks7 = evaluate_ranks(ByIndex(), split, batch_size=7)
    assert ranks1.tolist() == ranks7.tolist()
    assert ranks1.tolist() == [2] + [5] * 6
    # evaluate returns them on request, and the metrics record leaves them out
    m = evaluate(ByIndex(), split, return_ranks=True)
    assert m["ranks"].tolist() == [2] + [5] * 6 and "ranks" not in evaluate(ByIndex(), split)
    assert "ranks" not in metrics_record(m, "test", 1, "by_index", 0.0)


def test_evaluate_errors():
    split = make_split()
    bad = make_split()
    bad.candidates[2, :] = 999  # target missing
    with pytest.raises(ValueError, match="row 2, user 'u2'"):
        evaluate(Oracle(), bad)
    no_cands = Split(users=split.users, history=split.history, target=split.target, candidates=None)
    with pytest.raises(ValueError, match="no candidate"):
        evaluate(Oracle(), no_cands)
    with pytest.raises(ValueError, match="shape"):
        evaluate(WrongShape(), split)
    with pytest.raises(ValueError, match="empty"):
        evaluate(Oracle(), split.subset([]))


# ---- run directory -------------------------------------------------------------------------


def test_metrics_record_and_write_run(tmp_path):
    m = evaluate(Constant(), make_split())
    rec = metrics_record(m, "test", 3, "constant", 1.23456)
    assert set(rec) == {
        *(f"hr@{k}" for k in (1, 3, 5, 10)),
        *(f"ndcg@{k}" for k in (1, 3, 5, 10)),
        *("mrr", "n", "split", "seed", "model", "wall_time_s", "eval_time_s"),
    }
    assert rec["split"] == "test" and rec["seed"] == 3 and rec["n"] == 7 and rec["wall_time_s"] == 1.235
    assert rec["eval_time_s"] == round(m["eval_time_s"], 3) and 0 <= m["eval_time_s"] < 60  # the scoring's

    def write_weights(path):
        path.write_text("w")

    out = tmp_path / "run"
    cfg = {"model": "constant", "seed": 3, "data": {"path": tmp_path}}
    write_run(out, cfg, rec, metrics_record(m, "valid", 3, "constant", 1.0), files={"w.txt": write_weights})
    assert json.loads((out / "metrics.json").read_text()) == rec
    assert json.loads((out / "valid_metrics.json").read_text())["split"] == "valid"
    assert (out / "w.txt").read_text() == "w"
    assert load_run_config(out) == {"model": "constant", "seed": 3, "data": {"path": str(tmp_path)}}
    assert sorted(p.name for p in out.iterdir()) == [
        "config.yaml",
        "metrics.json",
        "valid_metrics.json",
        "w.txt",
    ]


def test_metrics_record_keeps_generation_metrics_and_rejects_missing():
    m = {**evaluate(Oracle(), make_split()), "gen_hr@1": 0.5, "valid_ratio": 0.75}
    rec = metrics_record(m, "test", 1, "x", 0.0)
    assert rec["gen_hr@1"] == 0.5 and rec["valid_ratio"] == 0.75
    with pytest.raises(ValueError, match="mrr"):
        metrics_record({k: v for k, v in m.items() if k != "mrr"}, "test", 1, "x", 0.0)


def test_write_run_rejects_raw_metrics(tmp_path):
    m = evaluate(Oracle(), make_split())
    with pytest.raises(ValueError, match="metrics_record"):
        write_run(tmp_path / "r", {}, m, m)


def test_load_run_config_errors(tmp_path):
    with pytest.raises(AmfrecError, match="config.yaml: file not found"):
        load_run_config(tmp_path)
    (tmp_path / "config.yaml").write_text("model: x\n  bad: [\n")
    with pytest.raises(AmfrecError, match=r"config.yaml:\d+: malformed YAML"):
        load_run_config(tmp_path)
    (tmp_path / "config.yaml").write_text("- a\n- b\n")
    with pytest.raises(AmfrecError, match="mapping"):
        load_run_config(tmp_path)


def test_slice_metrics_by_hand() -> None:
    from amfrec.evaluate import slice_metrics

    ranks = torch.tensor([1, 3, 2, 1])
    out = slice_metrics(
        ranks, {"cold": torch.tensor([True, True, False, False]), "none": torch.zeros(4, dtype=bool)}
    )
    assert out["none"] == {"n": 0}
    cold = out["cold"]  # ranks 1 and 3
    assert cold["n"] == 2
    assert cold["hr@1"] == pytest.approx(0.5)
    assert cold["hr@3"] == pytest.approx(1.0)
    assert cold["mrr"] == pytest.approx((1 + 1 / 3) / 2)
    assert cold["ndcg@3"] == pytest.approx((1 + 1 / math.log2(4)) / 2)
    with pytest.raises(ValueError, match="shape"):
        slice_metrics(ranks, {"bad": torch.ones(3, dtype=bool)})


def test_evaluate_reports_slices_and_records_keep_them() -> None:
    split = make_split(n=6, n_cand=5)
    mask = torch.tensor([True, False, True, False, False, False])
    metrics = evaluate(Oracle(), split, batch_size=4, slices={"cold": mask})
    assert metrics["slices"]["cold"]["n"] == 2 and metrics["slices"]["cold"]["hr@1"] == 1.0
    rec = metrics_record(metrics, "test", 1, "oracle", 0.5)
    assert rec["slices"]["cold"]["n"] == 2


def test_item_train_counts_and_cold_slice_against_the_raw_files(tiny_prepared) -> None:
    """Slow reference: count every item over train.jsonl's targets and each user's first item."""
    from amfrec.data.dataset import PreparedData

    data = PreparedData.load(tiny_prepared)
    rows = [json.loads(line) for line in (tiny_prepared / "train.jsonl").open()]
    counts: dict[str, int] = {}
    first_seen: set[str] = set()
    for row in rows:
        counts[row["target"]] = counts.get(row["target"], 0) + 1
        if row["user"] not in first_seen:  # the user's first window: its history is the first item alone
            first_seen.add(row["user"])
            counts[row["history"][0]] = counts.get(row["history"][0], 0) + 1
    for k, item in enumerate(data.items[1:], 1):
        assert int(data.item_train_counts[k]) == counts.get(item.item_id, 0), item.item_id
    cold = data.slices(data.test)["train<=5"]
    want = [counts.get(data.items[t].item_id, 0) <= data.cold_threshold for t in data.test.target.tolist()]
    assert cold.tolist() == want
    assert data.cold_threshold == 5  # the default written by prepare


def test_score_metrics_of_given_scores_by_hand() -> None:
    split = make_split(n=2, n_cand=3)  # targets at columns 0 and 1
    scores = torch.tensor([[0.5, 1.0, 0.0], [2.0, 3.0, 1.0]])  # target ranks 2 and 1
    m = score_metrics(scores, split)
    assert m["n"] == 2
    assert m["hr@1"] == pytest.approx(0.5)
    assert m["mrr"] == pytest.approx((1 / 2 + 1) / 2)
    assert m["ndcg@3"] == pytest.approx((1 / math.log2(3) + 1) / 2)
    std0 = math.sqrt(((0.5 - 0.5) ** 2 + 0.5**2 + 0.5**2) / 2)  # sample std of (0.5, 1, 0) and of (2, 3, 1)
    assert m["spread"] == pytest.approx((std0 + 1.0) / 2)
    with pytest.raises(ValueError, match="shape"):
        score_metrics(scores[:, :2], split)
