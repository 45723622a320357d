"""Protocols of issue 18: the new-item split, the slices (train<=K, cold, warm, new), full ranking, generic
item text fields, `--negatives`, the experiment's protocol check. Expected: by hand or slow references."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_atomic, write_atomic

from amfrec.data.dataset import ItemInfo, PreparedData, Split
from amfrec.data.prepare import prepare
from amfrec.errors import AmfrecError
from amfrec.evaluate import evaluate_ranks
from amfrec.evaluate_full import evaluate_full, full_ranks, full_ranks_from_scores
from amfrec.features.build import build_features
from amfrec.features.store import load_features

INTER_H = ["user_id:token", "item_id:token", "timestamp:float"]
ITEM_H = ["item_id:token", "movie_title:token_seq", "release_year:token", "class:token_seq"]
SPLIT_FILES = ("train.jsonl", "valid.jsonl", "test.jsonl", "items.jsonl", "sequences.jsonl")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ---------------------------------------------------------------------------------------------- new items
@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_atomic(tmp_path_factory.mktemp("proto-tiny"), n_users=30, n_items=40, seed=3)


@pytest.fixture(scope="module")
def standard(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("std") / "D"
    prepare(tiny, out, seed=4, max_len=4)
    return out


@pytest.fixture(scope="module")
def new_split(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("new") / "D"
    prepare(tiny, out, seed=4, max_len=4, new_items=0.25)
    return out


def reference_train(out: Path, new: set[str], max_len: int) -> list[dict]:
    """Slow reference: per user, the training part of the sequence without new items, cut into windows."""
    rows = []
    for rec in read_jsonl(out / "sequences.jsonl"):
        part = [i for i in rec["items"][:-2] if i not in new]
        rows += [{"user": rec["user"], "history": part[max(0, t - max_len) : t], "target": part[t]}
                 for t in range(1, len(part))]  # fmt: skip
    return rows


def test_new_items_never_in_training_and_valid_test_unchanged(standard: Path, new_split: Path) -> None:
    new = set(json.loads((new_split / "new_items.json").read_text())["items"])
    m = json.loads((new_split / "manifest.json").read_text())
    assert len(new) == m["protocol"]["n_new_items"] == 10  # round(0.25 * 40 items)
    assert m["protocol"]["new_items"] == 0.25 and m["protocol"]["n_negatives"] == 19
    train = read_jsonl(new_split / "train.jsonl")
    std = read_jsonl(standard / "train.jsonl")  # the check is not vacuous: these items train in the standard
    assert sum(r["target"] in new or bool(new & set(r["history"])) for r in std) > 20
    assert train and not [r for r in train if r["target"] in new or new & set(r["history"])]
    assert train == reference_train(new_split, new, 4)
    # valid/test (histories, targets, candidates) are exactly the standard protocol's
    for f in ("valid.jsonl", "test.jsonl", "items.jsonl", "sequences.jsonl"):
        assert (new_split / f).read_bytes() == (standard / f).read_bytes(), f
    test_targets = {r["target"] for r in read_jsonl(new_split / "test.jsonl")}
    assert test_targets & new  # some test cases have a new target: the `new` slice is not empty
    data = PreparedData.load(new_split)
    assert {data.items[k].item_id for k in torch.nonzero(data.new_items).flatten().tolist()} == new
    for item in new:  # never trained: count 0
        assert int(data.item_train_counts[data.index[item]]) == 0


def test_new_item_split_is_seeded_and_fraction_zero_is_standard(tiny: Path, standard: Path, new_split: Path,
                                                                tmp_path: Path) -> None:  # fmt: skip
    again = tmp_path / "again"
    prepare(tiny, again, seed=4, max_len=4, new_items=0.25)
    for f in (*SPLIT_FILES, "new_items.json", "manifest.json"):
        assert (again / f).read_bytes() == (new_split / f).read_bytes(), f
    other = tmp_path / "other"
    prepare(tiny, other, seed=5, max_len=4, new_items=0.25)
    items = [json.loads((d / "new_items.json").read_text())["items"] for d in (other, new_split)]
    assert items[0] != items[1]
    zero = tmp_path / "zero"
    prepare(tiny, zero, seed=4, max_len=4, new_items=0.0)
    for f in (*SPLIT_FILES, "manifest.json"):
        assert (zero / f).read_bytes() == (standard / f).read_bytes(), f
    assert not (zero / "new_items.json").exists()


def test_id_features_absent_for_new_items(new_split: Path, tmp_path: Path) -> None:
    data = PreparedData.load(new_split)
    run = tmp_path / "sasrec"
    run.mkdir()
    table = np.random.default_rng(0).normal(size=(data.n_items + 1, 6)).astype(np.float32) + 1.0
    np.save(run / "item_embeddings.npy", table)
    build_features(new_split, tmp_path / "F", ["id"], id_from=run)
    mod = load_features(tmp_path / "F", data.n_items)["id"]
    trained = {r["target"] for r in read_jsonl(new_split / "train.jsonl")}
    trained |= {r["history"][0] for r in read_jsonl(new_split / "train.jsonl")}
    want = [k > 0 and it.item_id in trained for k, it in enumerate(data.items)]
    assert mod.present.tolist() == want
    assert not mod.present[data.new_items].any()
    assert torch.equal(mod.values[~mod.present][1:], torch.zeros(int((~mod.present).sum()) - 1, 6))
    assert torch.equal(mod.values[mod.present], torch.from_numpy(table)[mod.present])


@pytest.mark.parametrize("kwargs", [{"new_items": 1.0}, {"new_items": -0.1}, {"negatives": 0}])
def test_bad_protocol_arguments(tiny: Path, tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(AmfrecError, match="new_items must be a fraction|n_candidates must be >= 2"):
        prepare(tiny, tmp_path / "out", **kwargs)


def test_negatives_sets_the_candidate_count(tiny: Path, tmp_path: Path) -> None:
    prepare(tiny, tmp_path / "D", seed=1, negatives=5)
    data = PreparedData.load(tmp_path / "D")
    assert data.test.candidates.shape[1] == 6 and data.manifest["n_candidates"] == 6
    assert data.protocol == {"new_items": 0.0, "n_negatives": 5}


def test_experiment_refuses_a_seed_folder_of_another_protocol(tiny: Path, tmp_path: Path) -> None:
    from amfrec.experiments.experiment import prepare_seed

    prepare_seed(tiny, tmp_path / "data", 1, 0.0, 19)
    prepare_seed(tiny, tmp_path / "data", 1, 0.0, 19)  # same protocol: reused
    with pytest.raises(AmfrecError, match=r"manifest\.json: prepared under protocol .*new_items': 0\.0"):
        prepare_seed(tiny, tmp_path / "data", 1, 0.2, 19)
    with pytest.raises(AmfrecError, match="n_negatives': 100"):
        prepare_seed(tiny, tmp_path / "data", 1, 0.0, 100)


# ---------------------------------------------------------------------------------------------- by hand
@pytest.fixture
def hand(tmp_path: Path) -> PreparedData:
    """Sequences A 1 2 3 4 5 | B 1 2 6 3 | C 2 1 4 6 | D 5 1 2 | E 6 5 6 (E repeats its first item as target).

    Training windows: A [1]->2 [1,2]->3; B [1]->2; C [2]->1 (D and E have none). Train counts: item 1: 3,
    2: 3, 3: 1, 4: 0, 5: 0, 6: 0.
    """
    seqs = {"A": [1, 2, 3, 4, 5], "B": [1, 2, 6, 3], "C": [2, 1, 4, 6], "D": [5, 1, 2], "E": [6, 5, 6]}
    rows = [[u, i, t] for u, seq in seqs.items() for t, i in enumerate(seq)]
    raw = tmp_path / "raw"
    raw.mkdir()
    write_atomic(raw / "h.inter", INTER_H, rows)
    write_atomic(raw / "h.item", ITEM_H, [[i, f"T{i}", 1990, "Drama"] for i in range(1, 7)])
    prepare(raw, tmp_path / "D", seed=1, max_len=10, negatives=1, cold_threshold=1)
    return PreparedData.load(tmp_path / "D")


def test_slices_by_hand(hand: PreparedData) -> None:
    assert hand.item_train_counts.tolist() == [0, 3, 3, 1, 0, 0, 0]
    # 35% of 6 items = 2.1 -> 2. Ranked by (count, index): 4 5 6 | 3 | 1 2 -> cold {4, 5} (6 loses the tie
    # at count 0 to the lower indices), warm {1, 2}
    cold, warm = hand.popularity_groups()
    assert torch.nonzero(cold).flatten().tolist() == [4, 5]
    assert torch.nonzero(warm).flatten().tolist() == [1, 2]
    assert hand.test.target.tolist() == [5, 3, 6, 2, 6]
    s = hand.slices(hand.test)
    assert list(s) == ["train<=1", "cold", "warm"]  # no "new" outside the new-item protocol
    assert s["train<=1"].tolist() == [True, True, True, False, True]  # counts 0 1 0 3 0
    assert s["cold"].tolist() == [True, False, False, False, False]
    assert s["warm"].tolist() == [False, False, False, True, False]
    assert hand.slices(hand.valid)["cold"].tolist() == [True, False, True, False, True]  # 4 6 4 1 5


def test_new_slice_is_the_new_targets(new_split: Path) -> None:
    data = PreparedData.load(new_split)
    new = set(json.loads((new_split / "new_items.json").read_text())["items"])
    s = data.slices(data.test)
    assert s["new"].tolist() == [data.items[t].item_id in new for t in data.test.target.tolist()]
    assert 0 < int(s["new"].sum()) < len(data.test)
    assert bool((s["new"] <= s["train<=5"]).all())  # a new target has 0 training interactions


def test_seen_items_by_hand_and_without_sequences_file(hand: PreparedData) -> None:
    def as_sets(pairs: tuple[torch.Tensor, torch.Tensor], n: int) -> list[set[int]]:
        out: list[set[int]] = [set() for _ in range(n)]
        for r, i in zip(*(p.tolist() for p in pairs), strict=True):
            out[r].add(i)
        return out

    assert as_sets(hand.seen_items("test"), 5) == [{1, 2, 3, 4}, {1, 2, 6}, {2, 1, 4}, {5, 1}, {6, 5}]
    assert as_sets(hand.seen_items("valid"), 5) == [{1, 2, 3}, {1, 2}, {2, 1}, {5}, {6}]
    (hand.path / "sequences.jsonl").unlink()  # an older prepared folder: rebuilt from windows + histories
    old = PreparedData.load(hand.path)
    assert as_sets(old.seen_items("test"), 5) == as_sets(hand.seen_items("test"), 5)
    assert as_sets(old.seen_items("valid"), 5) == as_sets(hand.seen_items("valid"), 5)


class LowIndexFirst:
    """score(c) = -c: the lower the item index, the better."""

    name = "low-index-first"

    def score(self, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        return -candidates.float()


def test_full_ranking_excludes_the_history_by_hand(hand: PreparedData) -> None:
    # test targets 5 3 6 2 6; items scoring higher than the target that the user has not seen:
    # A: 1-4 all seen -> rank 1; B: 1, 2 seen -> 1; C: 3, 5 unseen -> 3; D: 1 seen -> 1;
    # E: target 6 was seen before but is never excluded; 5 seen, 1-4 unseen -> 5
    m = evaluate_full(LowIndexFirst(), hand.test, hand.seen_items("test"), hand.n_items, batch_size=2,
                      slices=hand.slices(hand.test))  # fmt: skip
    ranks = torch.tensor([1, 1, 3, 1, 5])
    assert m["hr@1"] == pytest.approx(0.6) and m["recall@1"] == m["hr@1"]
    assert m["hr@3"] == pytest.approx(0.8) and m["hr@5"] == pytest.approx(1.0) == m["recall@5"]
    assert m["ndcg@3"] == pytest.approx((3 + 1 / math.log2(4)) / 5)
    assert m["mrr"] == pytest.approx(float((1 / ranks.double()).mean()))
    assert m["slices"]["cold"]["n"] == 1 and m["slices"]["cold"]["hr@1"] == 1.0  # A alone (rank 1)
    assert m["slices"]["train<=1"]["n"] == 4 and m["slices"]["train<=1"]["hr@3"] == 0.75  # ranks 1 1 3 5
    assert (m["n"], m["protocol"], m["n_items"]) == (5, "full", 6)
    unexcluded = full_ranks(LowIndexFirst(), hand.test, None, hand.n_items)
    assert unexcluded.tolist() == [5, 3, 6, 2, 6]  # rank = index without exclusion


def test_full_ranks_from_scores_ties_against_the_model() -> None:
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.1], [1.0, 1.0, 1.0, 1.0]])  # items 1..4
    excluded = torch.tensor([[False, False, True, False, False], [False, True, True, False, True]])
    # row 0: target 1 (0.5); item 2 (0.9) is seen (excluded), item 3 ties (counts against) -> 2
    # row 1: target 4, excluded too by the mask, but the target is never excluded; item 3 ties -> 2
    ranks = full_ranks_from_scores(scores, torch.tensor([1, 4]), excluded)
    assert ranks.tolist() == [2, 2]


class Hashy:
    """Deterministic scores with ties: (history sum * 7 + candidate * 3) mod 5."""

    name = "hashy"

    def score(self, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        return ((history.sum(1, keepdim=True) * 7 + candidates * 3) % 5).float()


def test_full_ranking_without_exclusion_equals_the_candidate_protocol(new_split: Path) -> None:
    data = PreparedData.load(new_split)
    n = data.n_items
    g = torch.Generator().manual_seed(0)
    everything = torch.stack([torch.randperm(n, generator=g) + 1 for _ in range(len(data.test))])  # (N, n)
    split = Split(data.test.users, data.test.history, data.test.target, everything)
    want = evaluate_ranks(Hashy(), split, batch_size=7)
    assert torch.equal(full_ranks(Hashy(), data.test, None, n, batch_size=4), want)
    assert int(want.max()) > 5  # the ranks are not trivial


def test_one_full_pass_gives_the_candidate_protocols_ranks_too(new_split: Path) -> None:
    """candidates=True: the ranks among each row's candidates equal the candidate evaluator's (ties included),
    and the full ranks are those of a pass without them."""
    data = PreparedData.load(new_split)
    seen = data.seen_items("test")
    order = torch.randperm(len(data.test), generator=torch.Generator().manual_seed(3))
    n = data.n_items
    full, among = full_ranks(Hashy(), data.test, seen, n, batch_size=3, order=order, candidates=True)
    assert torch.equal(among, evaluate_ranks(Hashy(), data.test, batch_size=5))
    assert torch.equal(full, full_ranks(Hashy(), data.test, seen, data.n_items, batch_size=4))
    assert int(among.max()) > 1 and not torch.equal(among, full)  # two different, non-trivial protocols
    m = evaluate_full(Hashy(), data.test, seen, data.n_items, candidates=True)
    assert torch.equal(m["candidate_ranks"], among)


# ---------------------------------------------------------------------------------------------- item text
def test_item_text_renders_other_fields_and_skips_empty_ones(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    header = ["item_id:token", "title:token_seq", "categories:token_seq", "brand:token"]
    write_atomic(raw / "s.item", header, [["a", "Sanding Roll", "Industrial & Scientific Abrasives", "3M"],
                                          ["b", "Glove", "", "Ansell"], ["c", "Tape", "Tapes", ""],
                                          ["d", "Filler", "X", "Y"]])  # fmt: skip
    seqs = {"u": "abc", "v": "bca", "w": "cab"}
    write_atomic(raw / "s.inter", INTER_H, [[u, i, t] for u, s in seqs.items() for t, i in enumerate(s)] +
                 [["x", "d", 0], ["x", "a", 1], ["x", "b", 2]])  # fmt: skip
    prepare(raw, tmp_path / "D", negatives=1)
    rows = read_jsonl(tmp_path / "D" / "items.jsonl")
    fields = {"categories": "Industrial & Scientific Abrasives", "brand": "3M"}
    assert rows[0] == {"item_id": "a", "title": "Sanding Roll", "year": None, "genres": [], "fields": fields}
    data = PreparedData.load(tmp_path / "D")
    a, b, c = (data.items[data.index[i]] for i in "abc")
    assert a.fields == (("categories", "Industrial & Scientific Abrasives"), ("brand", "3M"))
    assert a.text() == "Sanding Roll. Categories: Industrial & Scientific Abrasives. Brand: 3M"
    assert b.text() == "Glove. Brand: Ansell" and c.text() == "Tape. Categories: Tapes"
    # items.jsonl rows of the older format (no "fields") still load, with no fields
    path = tmp_path / "D" / "items.jsonl"
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "fields"}) + "\n" for r in rows))
    assert PreparedData.load(tmp_path / "D").items[1].fields == ()
    old = ItemInfo(item_id="1", title="Kolya", year="1996", genres=("Comedy",))
    assert old.text() == "Kolya (1996). Genres: Comedy"


# ---------------------------------------------------------------------------------------------- runs, CLI
def slow_full_ranks(scores: dict[int, float], data: PreparedData, split: str) -> list[int]:
    """Slow reference: per test row, 1 + the unseen non-target items scoring >= the target (scores: item ->
    score, the same for every user), with the seen items from sequences.jsonl."""
    seqs = {r["user"]: r["items"] for r in read_jsonl(data.path / "sequences.jsonl")}
    part = data.valid if split == "valid" else data.test
    out = []
    for user, target in zip(part.users, part.target.tolist(), strict=True):
        items = seqs[user][: len(seqs[user]) - (2 if split == "valid" else 1)]
        seen = {data.index[i] for i in items} - {target}
        others = [j for j in range(1, data.n_items + 1) if j != target and j not in seen]
        out.append(1 + sum(scores[j] >= scores[target] for j in others))
    return out


class ByIndex:
    """The same score for every user: item j scores (j * 5) mod 7 (ties included)."""

    name = "by_index"

    def score(self, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        return ((candidates * 5) % 7).float()


def test_full_ranks_in_any_row_order_exclude_each_rows_own_seen_items(new_split: Path) -> None:
    data = PreparedData.load(new_split)
    want = slow_full_ranks({j: float((j * 5) % 7) for j in range(data.n_items + 1)}, data, "test")
    seen = data.seen_items("test")
    order = torch.randperm(len(data.test), generator=torch.Generator().manual_seed(3))
    for batch, rows in ((3, order), (5, None)):
        got = full_ranks(ByIndex(), data.test, seen, data.n_items, batch_size=batch, order=rows)
        assert got.tolist() == want
    assert len(set(want)) > 2  # the ranks are not trivial
    with pytest.raises(ValueError, match="permutation"):
        bad = torch.zeros(len(data.test), dtype=torch.long)
        full_ranks(ByIndex(), data.test, seen, data.n_items, order=bad)


def test_cli_full_ranking_of_a_popularity_run(new_split: Path, tmp_path: Path) -> None:
    from amfrec.cli.main import main
    from amfrec.metrics import ranking_metrics

    run = tmp_path / "pop"
    assert main(["-q", "train", "--model", "popularity", "--data", str(new_split), "--out", str(run)]) == 0
    assert main(["-q", "evaluate", "--run", str(run), "--protocol", "full"]) == 0
    rec = json.loads((run / "test_full_metrics.json").read_text())
    data = PreparedData.load(new_split)
    counts = data.item_train_counts.tolist()  # popularity = training counts
    ranks = torch.tensor(slow_full_ranks(dict(enumerate(counts)), data, "test"))
    want = ranking_metrics(ranks, (1, 3, 5, 10, 20))
    for k in ("hr@1", "hr@10", "ndcg@10", "hr@20", "ndcg@20", "mrr"):
        assert rec[k] == pytest.approx(want[k]), k
    assert rec["recall@10"] == rec["hr@10"] and rec["protocol"] == "full"
    assert set(rec["slices"]) == {"train<=5", "cold", "warm", "new"}
    new = data.slices(data.test)["new"]
    assert rec["slices"]["new"]["n"] == int(new.sum())
    assert rec["slices"]["new"]["mrr"] == pytest.approx(float((1 / ranks[new].double()).mean()))
    assert main(["-q", "evaluate", "--run", str(run), "--protocol", "full", "--corrupt", "image=noise"]) == 2
    # full+score: the baseline's 1 + 19 files from the full pass equal its own `--protocol score` files
    assert main(["-q", "evaluate", "--run", str(run), "--protocol", "score"]) == 0
    alone = json.loads((run / "test_score_ranks.json").read_text())
    assert main(["-q", "evaluate", "--run", str(run), "--protocol", "full+score"]) == 0
    shared = json.loads((run / "test_score_ranks.json").read_text())
    assert shared["ranks"] == alone["ranks"] and shared["slices"] == alone["slices"]
    assert json.loads((run / "test_full_metrics.json").read_text())["mrr"] == rec["mrr"]


def test_experiment_finds_image_vectors_beside_the_raw_data(tmp_path: Path) -> None:
    raw = make_tiny_atomic(tmp_path / "raw", n_users=12, n_items=15, seed=1)
    (raw / "image").mkdir()
    ids = ["3", "7", "11"]
    vectors = np.arange(3 * 4, dtype=np.float32).reshape(3, 4) + 1
    np.save(raw / "image" / "image.npy", vectors)
    (raw / "image" / "image_items.txt").write_text("\n".join(ids) + "\n")
    np.save(raw / "image" / "other.npy", vectors)  # not requested: not imported
    (raw / "image" / "other_items.txt").write_text("\n".join(ids) + "\n")
    prepare(raw, tmp_path / "D", negatives=3)
    m = build_features(tmp_path / "D", tmp_path / "F", ["image"])
    assert list(m["modalities"]) == ["image"] and m["modalities"]["image"]["present"] == 3
    data = PreparedData.load(tmp_path / "D")
    image = load_features(tmp_path / "F", data.n_items)["image"]
    assert torch.nonzero(image.present).flatten().tolist() == sorted(data.index[i] for i in ids)
    assert torch.equal(image.values[data.index["7"]], torch.from_numpy(vectors[1]))


def test_amfrec_scores_the_whole_catalogue(tiny_prepared: Path, tmp_path: Path) -> None:
    """AMFRec scores the whole catalogue (C = n_items) as it scores the candidates; full ranks = reference."""
    from llm_fixtures import SMALL, make_tiny_amfrec_inputs

    from amfrec.io import read_json
    from amfrec.runs.amfrec_run import evaluate_run, load_run, train_amfrec
    from amfrec.runs.full_ranking import evaluate_full_run

    features, config = make_tiny_amfrec_inputs(tiny_prepared, tmp_path)
    run = tmp_path / "run"
    train_amfrec(tiny_prepared, features, config, 1, run, {**SMALL, "model.dtype": "float32"}, limit=6)
    rec, score = evaluate_full_run(run, "test", limit=6)
    model, data, _ = load_run(run)
    part = data.test.head(6)
    n = data.n_items
    catalogue = torch.arange(1, n + 1).expand(6, n)
    full = model.score(part.history, catalogue).float().cpu()  # (6, n_items)
    on_candidates = model.score(part.history, part.candidates).float().cpu()  # (6, 20)
    torch.testing.assert_close(full.gather(1, part.candidates - 1), on_candidates, rtol=1e-4, atol=1e-5)
    seqs = {r["user"]: r["items"] for r in read_jsonl(tiny_prepared / "sequences.jsonl")}
    ranks = []
    for r, (user, target) in enumerate(zip(part.users, part.target.tolist(), strict=True)):
        seen = {data.index[i] for i in seqs[user][:-1]} - {target}
        others = [j for j in range(1, n + 1) if j != target and j not in seen]
        ranks.append(1 + sum(bool(full[r, j - 1] >= full[r, target - 1]) for j in others))
    assert rec["mrr"] == pytest.approx(float((1 / torch.tensor(ranks).double()).mean()), rel=1e-6)
    assert rec["n"] == 6 and (run / "test_full_metrics.json").is_file() and score is None
    # full+score: the candidate protocol's files from the same pass equal `--protocol score`'s
    evaluate_run(run, "test", "score", limit=6)
    alone = read_json(run / "test_score_ranks.json")
    _, score = evaluate_full_run(run, "test", limit=6, with_score=True)
    shared = read_json(run / "test_score_ranks.json")
    assert shared["ranks"] == alone["ranks"] and shared["n_candidates"] == alone["n_candidates"] == 20
    assert read_json(run / "test_score_metrics.json") == score and score["from"] == "full"


def test_cli_protocol_options() -> None:
    from amfrec.cli.main import build_parser

    p = build_parser()
    a = p.parse_args(["data", "prepare", "--out", "O"])
    assert (a.negatives, a.new_items) == (19, 0.0)
    assert p.parse_args(["data", "prepare", "--out", "O", "--n-candidates", "21"]).negatives == 20  # alias
    x = p.parse_args(["experiment", "--data", "X", "--out", "O", "--new-items", "0.2", "--negatives", "100"])
    assert (x.negatives, x.new_items) == (100, 0.2)
    assert p.parse_args(["evaluate", "--run", "R", "--protocol", "full"]).protocol == "full"
    assert p.parse_args(["evaluate", "--run", "R", "--protocol", "full+score"]).protocol == "full+score"
