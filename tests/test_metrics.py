"""Metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from amfrec.metrics import generation_metrics, matched_titles, ranking_metrics, ranks_from_scores


def test_ranks_strict_order():
    scores = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]])
    assert ranks_from_scores(scores, torch.tensor([3, 0])).tolist() == [1, 4]


def test_ranks_ties_count_against_the_model():
    scores = torch.tensor([[0.1, 0.5, 0.5, 0.2], [0.1, 0.5, 0.5, 0.2], [0.0, 0.0, 0.0, 0.0]])
    # Target 0.5 ties with one other 0.5 -> rank 2 (either of the two); all-equal -> rank C = 4.
    assert ranks_from_scores(scores, torch.tensor([1, 2, 0])).tolist() == [2, 2, 4]


def test_ranks_with_infinities():
    scores = torch.tensor([[-math.inf, 0.0, math.inf]])
    assert ranks_from_scores(scores, torch.tensor([0])).tolist() == [3]
    assert ranks_from_scores(scores, torch.tensor([2])).tolist() == [1]


def test_ranks_reject_nan_and_bad_shapes():
    with pytest.raises(ValueError, match="NaN"):
        ranks_from_scores(torch.tensor([[0.0, float("nan")]]), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"\(B, C\)"):
        ranks_from_scores(torch.zeros(3), torch.tensor([0]))
    with pytest.raises(ValueError, match="target_pos"):
        ranks_from_scores(torch.zeros(2, 3), torch.tensor([0]))
    with pytest.raises(ValueError, match="out of range"):
        ranks_from_scores(torch.zeros(1, 3), torch.tensor([3]))


def test_ranking_metrics_by_hand():
    m = ranking_metrics(torch.tensor([1, 3, 25]), ks=(1, 3, 5, 10, 30))
    assert m["hr@1"] == pytest.approx(1 / 3)
    assert m["hr@3"] == pytest.approx(2 / 3)
    assert m["hr@10"] == pytest.approx(2 / 3)
    assert m["hr@30"] == pytest.approx(1.0)
    assert m["ndcg@1"] == pytest.approx(1 / 3)
    assert m["ndcg@3"] == pytest.approx((1 + 0.5) / 3)  # 1/log2(3+1) = 0.5
    assert m["ndcg@30"] == pytest.approx((1 + 0.5 + 1 / math.log2(26)) / 3)
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 25) / 3)


def test_ranking_metrics_default_keys_and_rank_2():
    m = ranking_metrics(torch.tensor([2]))
    assert set(m) == {"hr@1", "hr@3", "hr@5", "hr@10", "ndcg@1", "ndcg@3", "ndcg@5", "ndcg@10", "mrr"}
    assert m["hr@1"] == 0.0 and m["hr@3"] == 1.0
    assert m["ndcg@3"] == pytest.approx(1 / math.log2(3))
    assert m["mrr"] == 0.5


def test_k_larger_than_candidate_count():
    # 4 candidates: every rank is <= 4, so hr@5 = hr@10 = 1 and ndcg@10 = ndcg@4-equivalent.
    ranks = ranks_from_scores(torch.tensor([[4.0, 3.0, 2.0, 1.0]] * 4), torch.tensor([0, 1, 2, 3]))
    m = ranking_metrics(ranks)
    assert m["hr@5"] == 1.0 and m["hr@10"] == 1.0
    expected = (1 + 1 / math.log2(3) + 1 / math.log2(4) + 1 / math.log2(5)) / 4
    assert m["ndcg@10"] == pytest.approx(expected)
    assert m["ndcg@5"] == pytest.approx(expected)


def test_ranking_metrics_reject_bad_ranks():
    with pytest.raises(ValueError):
        ranking_metrics(torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match="start at 1"):
        ranking_metrics(torch.tensor([0, 1]))


CANDS = ["Alien", "Aliens", "Toy Story", "Up"]


def test_generation_case_and_whitespace_and_first_line():
    outputs = [
        "  toy   STORY\nAliens",  # first line only: Toy Story -> valid, correct
        "Toy Story",  # valid, wrong target
        "I recommend Alien.",  # valid, correct
        "\nToy Story",  # the first (stripped) line is "Toy Story"
    ]
    targets = ["Toy Story", "Alien", "Alien", "Toy Story"]
    m = generation_metrics(outputs, [CANDS] * 4, targets)
    assert m == {"gen_hr@1": 3 / 4, "valid_ratio": 1.0}


def test_generation_invalid_outputs():
    outputs = ["Alien or Toy Story", "Nothing matches", "", "Upside Down"]  # two titles, none, empty, "Up"
    m = generation_metrics(outputs, [CANDS] * 4, ["Alien"] * 4)
    assert m == {"gen_hr@1": 0.0, "valid_ratio": 0.0}


def test_generation_title_inside_a_longer_title():
    # "Aliens" contains "Alien": the longer title wins, so the output names exactly one title.
    assert matched_titles("Aliens", CANDS) == {"aliens"}
    assert generation_metrics(["Aliens"], [CANDS], ["Aliens"]) == {"gen_hr@1": 1.0, "valid_ratio": 1.0}
    assert generation_metrics(["Aliens"], [CANDS], ["Alien"]) == {"gen_hr@1": 0.0, "valid_ratio": 1.0}
    # Both named separately -> two titles -> invalid.
    assert matched_titles("Alien, then Aliens", CANDS) == {"alien", "aliens"}


def test_generation_duplicate_candidate_titles_count_once():
    m = generation_metrics(["Hamlet"], [["Hamlet", "Hamlet", "Up"]], ["Hamlet"])
    assert m == {"gen_hr@1": 1.0, "valid_ratio": 1.0}


def test_generation_rejects_misaligned_inputs():
    with pytest.raises(ValueError):
        generation_metrics(["a"], [CANDS, CANDS], ["Alien"])
    with pytest.raises(ValueError):
        generation_metrics([], [], [])
