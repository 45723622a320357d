"""amfrec.stats: per-example metrics by hand; the bootstrap interval and the sign-flip p-value against slow
pure-Python references on the same random stream, against exhaustive enumeration, and on known answers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from amfrec import stats
from amfrec.metrics import ranking_metrics

DIFF = [0.3, -0.1, 0.5, 0.2, 0.9, -0.4, 0.6, 0.1, 0.05, 0.7]  # n = 10, mean 0.285


def test_per_example_by_hand() -> None:
    ranks = [1, 2, 3, 11]
    assert stats.per_example(ranks, "hr@1").tolist() == [1.0, 0.0, 0.0, 0.0]
    assert stats.per_example(ranks, "hr@3").tolist() == [1.0, 1.0, 1.0, 0.0]
    assert stats.per_example(ranks, "recall@3").tolist() == [1.0, 1.0, 1.0, 0.0]
    assert stats.per_example(ranks, "ndcg@10").tolist() == pytest.approx([1.0, 1 / math.log2(3), 0.5, 0.0])
    assert stats.per_example(ranks, "ndcg@1").tolist() == [1.0, 0.0, 0.0, 0.0]
    assert stats.per_example(ranks, "mrr").tolist() == pytest.approx([1.0, 0.5, 1 / 3, 1 / 11])
    # their means are the evaluator's metrics
    agg = ranking_metrics(torch.tensor(ranks))
    for metric in ("hr@1", "hr@3", "ndcg@3", "ndcg@10", "mrr"):
        assert stats.per_example(ranks, metric).mean() == pytest.approx(agg[metric])


@pytest.mark.parametrize(
    ("ranks", "metric", "match"),
    [([1], "hr", "unknown metric"), ([1], "hr@0", "k must"), ([0, 1], "mrr", "start at 1")],
)
def test_per_example_rejects(ranks: list[int], metric: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        stats.per_example(ranks, metric)


def _quantile(values: list[float], q: float) -> float:
    """Linear-interpolation quantile, by hand."""
    s = sorted(values)
    h = (len(s) - 1) * q
    lo = math.floor(h)
    return s[lo] + (h - lo) * (s[min(lo + 1, len(s) - 1)] - s[lo])


def slow_bootstrap(
    diff: list[float], n_resamples: int, seed: int, level: float = 0.95
) -> tuple[float, float]:
    """One resample at a time in plain Python, drawing the same indices (one `integers` call per resample)."""
    rng = np.random.default_rng(seed)
    n = len(diff)
    means = []
    for _ in range(n_resamples):
        idx = rng.integers(0, n, size=n, dtype=np.int32).tolist()
        means.append(sum(diff[i] for i in idx) / n)
    return _quantile(means, (1 - level) / 2), _quantile(means, (1 + level) / 2)


def slow_sign_flip(diff: list[float], n_permutations: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    observed = abs(sum(diff))
    count = 0
    for _ in range(n_permutations):
        keep = rng.integers(0, 2, size=len(diff), dtype=np.int32).tolist()
        flipped = sum(d if k else -d for d, k in zip(diff, keep, strict=True))
        count += abs(flipped) >= observed - 1e-9
    return (count + 1) / (n_permutations + 1)


@pytest.mark.parametrize("chunk", [1 << 22, 25])  # one chunk, or many chunks of 2 resamples each
def test_bootstrap_matches_the_slow_reference(monkeypatch, chunk: int) -> None:
    monkeypatch.setattr(stats, "_CHUNK_ELEMENTS", chunk)
    for level in (0.95, 0.8):
        lo, hi = stats.paired_bootstrap_ci(DIFF, n_resamples=3000, seed=7, level=level)
        ref = slow_bootstrap(DIFF, 3000, 7, level)
        assert (lo, hi) == pytest.approx(ref, abs=1e-12)
        assert lo < sum(DIFF) / len(DIFF) < hi
    assert stats.paired_bootstrap_ci(DIFF, 3000, seed=8) != stats.paired_bootstrap_ci(DIFF, 3000, seed=7)
    assert stats.paired_bootstrap_ci(DIFF, 3000, seed=7) == stats.paired_bootstrap_ci(DIFF, 3000, seed=7)


def test_bootstrap_of_equal_differences_is_a_point() -> None:
    assert stats.paired_bootstrap_ci([0.25] * 17, n_resamples=500) == (0.25, 0.25)


def test_bootstrap_interval_shrinks_like_one_over_sqrt_n() -> None:
    """A 0/1 vector with mean 1/2: the 95% interval's half-width is about 1.96 * 0.5 / sqrt(n)."""
    for n in (100, 400):
        lo, hi = stats.paired_bootstrap_ci([0.0, 1.0] * (n // 2), n_resamples=4000, seed=1)
        assert (hi - lo) / 2 == pytest.approx(1.96 * 0.5 / math.sqrt(n), rel=0.1)


@pytest.mark.parametrize("chunk", [1 << 22, 30])
def test_sign_flip_matches_the_slow_reference(monkeypatch, chunk: int) -> None:
    monkeypatch.setattr(stats, "_CHUNK_ELEMENTS", chunk)
    for seed in (0, 3):
        assert stats.sign_flip_p(DIFF, n_permutations=2000, seed=seed) == slow_sign_flip(DIFF, 2000, seed)


def test_sign_flip_against_exhaustive_enumeration() -> None:
    """n = 10: all 2^10 sign vectors give the exact p; Monte Carlo lies within 4 standard errors."""
    diff = [0.3, -0.1, 0.5, -0.2, 0.9, -0.4, 0.6, 0.1, -0.05, 0.7]  # exact p = 132 / 1024
    observed = abs(sum(diff))
    signs = list(itertools.product((1, -1), repeat=len(diff)))
    exact = sum(abs(sum(s * d for s, d in zip(sig, diff, strict=True))) >= observed - 1e-12 for sig in signs)
    exact /= len(signs)
    assert exact == 132 / 1024
    p = stats.sign_flip_p(diff, n_permutations=20000, seed=0)
    assert p == pytest.approx(exact, abs=4 * math.sqrt(exact * (1 - exact) / 20000))


def test_sign_flip_known_answers() -> None:
    assert stats.sign_flip_p([-1.0, 1.0, -2.0, 2.0, -3.0, 3.0], 1000) == 1.0  # mean 0: every flip is as far
    assert stats.sign_flip_p([0.0] * 5, 1000) == 1.0
    # 30 equal signs: only the two constant sign vectors (chance 2 / 2^30 each) reach it -> the floor 1/(n+1)
    assert stats.sign_flip_p([0.5] * 30, 1000) == 1 / 1001


def test_paired_test_and_summary() -> None:
    a, b = [1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0]
    r = stats.paired_test(a, b, metric="hr@1", slice="cold", n_resamples=500, seed=2)
    assert (r.n, r.mean_a, r.mean_b, r.diff, r.metric, r.slice) == (4, 0.75, 0.25, 0.5, "hr@1", "cold")
    assert (r.ci_lo, r.ci_hi) == stats.paired_bootstrap_ci([1.0, 0.0, 0.0, 1.0], 500, seed=2)
    assert r.p == stats.sign_flip_p([1.0, 0.0, 0.0, 1.0], 500, seed=2)
    fixed = stats.PairedResult(25326, 0.5, 0.4877, 0.0123, 0.004, 0.0205, 0.003, "hr@1", "all")
    assert fixed.summary() == "+0.0123 [+0.0040, +0.0205], p=0.003, n=25326"
    with pytest.raises(ValueError, match="shape"):
        stats.paired_test([1.0], [1.0, 0.0])


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: stats.paired_bootstrap_ci([]), "non-empty"),
        (lambda: stats.paired_bootstrap_ci([1.0, float("nan")]), "NaN"),
        (lambda: stats.paired_bootstrap_ci([1.0], n_resamples=0), "n_resamples"),
        (lambda: stats.paired_bootstrap_ci([1.0], level=1.0), "level"),
        (lambda: stats.sign_flip_p([1.0], n_permutations=0), "n_permutations"),
    ],
)
def test_bad_arguments(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()
