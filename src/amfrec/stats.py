"""Paired significance of a difference between two models on the same examples (pure numpy, no domain types).

Per example, a metric value is computed from the target's rank (`per_example`); two models scored on the
same examples give a paired difference per example. Its mean gets a percentile bootstrap confidence interval
(`paired_bootstrap_ci`) and a two-sided sign-flip permutation p-value (`sign_flip_p`); `paired_test` bundles
both into a `PairedResult`. Over several training seeds scored on the same users, `clustered_test` resamples
a user with all of its seeds together (a cluster bootstrap), tests each seed on its own, and gives a
`Verdict`: "A beats B" needs the pooled interval above 0 and every seed's difference above 0. Every draw
comes from `numpy.random.default_rng(seed)` in a fixed order, so a seed gives the same numbers on every
machine, and the work is done in vectorised chunks of resamples.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

_CHUNK_ELEMENTS = 1 << 22  # resamples x examples per vectorised chunk (32 MiB of float64)
_METRIC = re.compile(r"(?P<name>hr|ndcg|recall)@(?P<k>[0-9]+)|mrr")


def per_example(ranks: Sequence[int] | np.ndarray, metric: str) -> np.ndarray:
    """(N,) float64 values of `metric` per example from (N,) ranks (1 = best).

    metric: `hr@k` (1[rank <= k]), `recall@k` (the same, one relevant item per example), `ndcg@k`
    (1/log2(rank + 1) if rank <= k else 0) or `mrr` (1/rank). Their means are `metrics.ranking_metrics`.
    Raises ValueError on an unknown metric, k < 1 or a rank < 1.
    """
    r = np.asarray(ranks, dtype=np.float64)  # (N,)
    if r.ndim != 1:
        raise ValueError(f"ranks must be 1-d, got shape {r.shape}")
    if r.size and r.min() < 1:
        raise ValueError(f"ranks start at 1, got {int(r.min())}")
    m = _METRIC.fullmatch(metric)
    if m is None:
        raise ValueError(f"unknown metric {metric!r} (hr@K, ndcg@K, recall@K or mrr)")
    if metric == "mrr":
        return 1.0 / r
    k = int(m["k"])
    if k < 1:
        raise ValueError(f"{metric}: k must be >= 1")
    if m["name"] == "ndcg":
        return np.where(r <= k, 1.0 / np.log2(r + 1.0), 0.0)
    return (r <= k).astype(np.float64)


def _as_diff(diff: Sequence[float] | np.ndarray) -> np.ndarray:
    d = np.asarray(diff, dtype=np.float64)  # (N,)
    if d.ndim != 1 or d.size == 0:
        raise ValueError(f"diff must be a non-empty 1-d vector, got shape {d.shape}")
    if not np.isfinite(d).all():
        raise ValueError("diff holds NaN or infinite values")
    return d


def _paired(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> tuple[np.ndarray, ...]:
    """(a, b, a - b) as (N,) float64 vectors; ValueError when the shapes differ or a value is not finite."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)  # (N,), (N,)
    if a.shape != b.shape:
        raise ValueError(f"paired values differ in shape: {a.shape} vs {b.shape}")
    return a, b, _as_diff(a - b)


def _chunks(total: int, n: int) -> list[int]:
    """Sizes of the resample chunks: `total` split so that a chunk holds about _CHUNK_ELEMENTS numbers."""
    step = max(1, _CHUNK_ELEMENTS // n)
    return [min(step, total - start) for start in range(0, total, step)]


def paired_bootstrap_ci(
    diff: Sequence[float] | np.ndarray, n_resamples: int = 10000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of the (N,) paired differences `diff`.

    Each resample draws N examples with replacement (`rng.integers(0, N, size=N, dtype=int32)` per resample,
    in order); the interval is the (1 - level)/2 and (1 + level)/2 quantiles (linear interpolation) of the
    resampled means.
    """
    d = _as_diff(diff)
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    n = d.size
    draws = (rng.integers(0, n, size=(c, n), dtype=np.int32) for c in _chunks(n_resamples, n))  # (c, N) each
    means = np.concatenate([d[idx].mean(axis=1) for idx in draws])  # (n_resamples,)
    lo, hi = np.quantile(means, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(lo), float(hi)


def sign_flip_p(diff: Sequence[float] | np.ndarray, n_permutations: int = 10000, seed: int = 0) -> float:
    """Two-sided paired sign-flip permutation p-value of the mean of the (N,) differences `diff`.

    Under the null each difference is as likely to have either sign: every permutation flips each sign with
    probability 1/2 (`rng.integers(0, 2, size=N, dtype=int32)` per permutation, in order; 1 keeps the sign).
    p = (count + 1) / (n_permutations + 1), count = the permutations whose |mean| is at least the observed
    |mean| (up to rounding).
    """
    d = _as_diff(diff)
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be >= 1, got {n_permutations}")
    rng = np.random.default_rng(seed)
    n = d.size
    total = float(d.sum())
    observed = abs(total)
    tol = 1e-9 * max(1.0, float(np.abs(d).sum()))  # sums that equal the observed one up to rounding count
    count = 0
    for c in _chunks(n_permutations, n):
        flips = rng.integers(0, 2, size=(c, n), dtype=np.int32).astype(np.float64)  # (c, N) of 0 | 1
        count += int((np.abs(2.0 * (flips @ d) - total) >= observed - tol).sum())  # sum(s * d), s = +-1
    return (count + 1) / (n_permutations + 1)


@dataclass(frozen=True)
class PairedResult:
    """A paired comparison of models A and B on one metric and slice: diff = mean_a - mean_b."""

    n: int
    mean_a: float
    mean_b: float
    diff: float
    ci_lo: float
    ci_hi: float
    p: float
    metric: str
    slice: str

    def summary(self) -> str:
        """`+0.0123 [+0.0040, +0.0205], p=0.003, n=25326`."""
        return f"{self.diff:+.4f} [{self.ci_lo:+.4f}, {self.ci_hi:+.4f}], p={self.p:.3g}, n={self.n}"


def paired_test(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    metric: str = "",
    slice: str = "all",
    n_resamples: int = 10000,
    seed: int = 0,
) -> PairedResult:
    """Compare (N,) per-example values `a` and `b` of the same examples: means, bootstrap CI, sign-flip p."""
    a, b, d = _paired(a, b)
    lo, hi = paired_bootstrap_ci(d, n_resamples=n_resamples, seed=seed)
    p = sign_flip_p(d, n_permutations=n_resamples, seed=seed)
    return PairedResult(
        n=int(d.size),
        mean_a=float(a.mean()),
        mean_b=float(b.mean()),
        diff=float(d.mean()),
        ci_lo=lo,
        ci_hi=hi,
        p=p,
        metric=metric,
        slice=slice,
    )


# ------------------------------------------------------------------------------------ clusters (seeds)
# Under the standard protocol every training seed is scored on the same users and targets: the (seed, user)
# differences of one user are not independent, and pooling them as users makes the interval too narrow.
# The cluster versions below resample (or sign-flip) a user with all of its seeds together.


def _cluster_sums(d: np.ndarray, clusters: Sequence | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """((G,) sums of `d` per cluster, (G,) counts): clusters are the distinct values of the (N,) keys, in
    sorted order."""
    keys = np.asarray(clusters)
    if keys.shape != d.shape:
        raise ValueError(f"clusters of shape {keys.shape} for differences of shape {d.shape}")
    codes = np.unique(keys, return_inverse=True)[1].reshape(-1)  # (N,) in 0..G-1
    return np.bincount(codes, weights=d), np.bincount(codes).astype(np.float64)


def cluster_bootstrap_ci(
    diff: Sequence[float] | np.ndarray,
    clusters: Sequence | np.ndarray,
    n_resamples: int = 10000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of the (N,) differences `diff`, resampling whole clusters.

    clusters: (N,) keys (a user id per difference); the G distinct keys, sorted, are the clusters. Each
    resample draws G clusters with replacement (`rng.integers(0, G, size=G, dtype=int32)` per resample, in
    order); its mean is the drawn clusters' summed differences over their summed counts.
    """
    d = _as_diff(diff)
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    sums, counts = _cluster_sums(d, clusters)  # (G,), (G,)
    rng = np.random.default_rng(seed)
    g = sums.size
    draws = (rng.integers(0, g, size=(c, g), dtype=np.int32) for c in _chunks(n_resamples, g))  # (c, G)
    means = np.concatenate([sums[idx].sum(axis=1) / counts[idx].sum(axis=1) for idx in draws])
    lo, hi = np.quantile(means, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(lo), float(hi)


def cluster_sign_flip_p(
    diff: Sequence[float] | np.ndarray,
    clusters: Sequence | np.ndarray,
    n_permutations: int = 10000,
    seed: int = 0,
) -> float:
    """Two-sided sign-flip p-value of the mean of (N,) differences, flipping whole clusters: `sign_flip_p`
    over the G clusters' summed differences (a user's seeds keep one sign together)."""
    sums, _ = _cluster_sums(_as_diff(diff), clusters)
    return sign_flip_p(sums, n_permutations=n_permutations, seed=seed)


class Verdict(StrEnum):
    """What a clustered comparison allows one to say of A against B."""

    BEATS = "A beats B"  # the pooled interval above 0 and every seed's difference above 0
    LOSES = "B beats A"  # the mirror image
    MIXED = "undecided: seeds disagree"  # the interval excludes 0, a seed's difference has the other sign
    TIE = "no difference shown"  # the pooled interval holds 0
    AHEAD_ONE_SEED = "A ahead, one seed only"  # interval above 0, but nothing is known of the seeds' spread
    BEHIND_ONE_SEED = "B ahead, one seed only"


@dataclass(frozen=True)
class ClusteredResult:
    """A comparison of A and B over seeds: the pooled difference with users as clusters (`pooled.n` counts
    (seed, user) rows), each seed's own paired test, and the verdict of both together."""

    pooled: PairedResult
    n_users: int
    seeds: tuple[int, ...]
    per_seed: tuple[PairedResult, ...]

    @property
    def verdict(self) -> Verdict:
        diffs = [r.diff for r in self.per_seed]
        one = len(diffs) < 2
        if self.pooled.ci_lo > 0:
            return Verdict.AHEAD_ONE_SEED if one else Verdict.BEATS if min(diffs) > 0 else Verdict.MIXED
        if self.pooled.ci_hi < 0:
            return Verdict.BEHIND_ONE_SEED if one else Verdict.LOSES if max(diffs) < 0 else Verdict.MIXED
        return Verdict.TIE


def clustered_test(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    users: Sequence | np.ndarray,
    seeds: Sequence[int] | np.ndarray,
    metric: str = "",
    slice: str = "all",
    n_resamples: int = 10000,
    seed: int = 0,
) -> ClusteredResult:
    """Compare (N,) per-row values `a` and `b`, one row per (seed, user) given by (N,) `seeds` and `users`.

    Pooled: means over every row, the cluster bootstrap interval and cluster sign-flip p with users as the
    clusters. Per seed: `paired_test` on that seed's rows (its users are independent).
    """
    a, b, d = _paired(a, b)
    seeds = np.asarray(seeds)
    if seeds.shape != d.shape:
        raise ValueError(f"seeds of shape {seeds.shape} for values of shape {d.shape}")
    lo, hi = cluster_bootstrap_ci(d, users, n_resamples=n_resamples, seed=seed)
    pooled = PairedResult(
        n=int(d.size),
        mean_a=float(a.mean()),
        mean_b=float(b.mean()),
        diff=float(d.mean()),
        ci_lo=lo,
        ci_hi=hi,
        p=cluster_sign_flip_p(d, users, n_permutations=n_resamples, seed=seed),
        metric=metric,
        slice=slice,
    )
    order = [int(s) for s in dict.fromkeys(seeds.tolist())]  # seeds in order of first appearance
    per_seed = tuple(
        paired_test(a[seeds == s], b[seeds == s], metric, slice, n_resamples=n_resamples, seed=seed)
        for s in order
    )
    n_users = int(np.unique(np.asarray(users)).size)
    return ClusteredResult(pooled=pooled, n_users=n_users, seeds=tuple(order), per_seed=per_seed)
