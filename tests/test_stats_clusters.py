"""Seeds as clusters (`amfrec.stats.clustered_test`): every training seed scores the same users, so a user's
differences over seeds are resampled together. Checked against slow per-resample loops written here."""

from __future__ import annotations

import numpy as np
import pytest

from amfrec import stats


def hr_diffs(n_users: int, seed: int) -> np.ndarray:
    """(n_users,) per-user hr@1 differences in {-1, 0, 1} with mean about +0.3."""
    return np.random.default_rng(seed).choice([-1.0, 0.0, 1.0], size=n_users, p=[0.1, 0.5, 0.4])


def slow_cluster_ci(diff: np.ndarray, users: np.ndarray, n: int, seed: int) -> tuple[float, float]:
    """The cluster bootstrap by hand: a dict of each user's differences, one Python loop per resample (the
    same draws: G sorted users, `rng.integers(0, G, size=(n, G), dtype=int32)`)."""
    by_user: dict = {}
    for u, d in zip(users.tolist(), diff.tolist(), strict=True):
        by_user.setdefault(u, []).append(d)
    keys = sorted(by_user)
    draws = np.random.default_rng(seed).integers(0, len(keys), size=(n, len(keys)), dtype=np.int32)
    means = []
    for row in draws:
        picked = [d for g in row for d in by_user[keys[g]]]
        means.append(sum(picked) / len(picked))
    lo, hi = np.quantile(np.array(means), [0.025, 0.975])
    return float(lo), float(hi)


def three_seeds(per_seed: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(diff, users, seeds) rows of (seed, user) for the same users u0..u{G-1} in every seed."""
    g = per_seed[0].size
    users = np.tile(np.array([f"u{i}" for i in range(g)]), len(per_seed))
    seeds = np.repeat(np.arange(1, len(per_seed) + 1), g)
    return np.concatenate(per_seed), users, seeds


def test_cluster_bootstrap_equals_the_slow_reference() -> None:
    d = hr_diffs(57, seed=4)
    diff, users, _ = three_seeds([d, np.roll(d, 3), -np.roll(d, 7)])  # users differ in how many rows agree
    diff, users = diff[:-5], users[:-5]  # and clusters of unequal size: the last 5 users lack seed 3
    assert stats.cluster_bootstrap_ci(diff, users, 400, seed=2) == pytest.approx(
        slow_cluster_ci(diff, users, 400, seed=2), abs=1e-12
    )


def test_identical_seeds_widen_the_interval_by_the_square_root_of_their_number() -> None:
    """Three seeds with the same per-user differences carry the information of one: the cluster interval is
    about sqrt(3) wider than the interval that pools the 3 x G rows as independent users."""
    diff, users, seeds = three_seeds([hr_diffs(400, seed=0)] * 3)
    lo_c, hi_c = stats.cluster_bootstrap_ci(diff, users, 4000, seed=0)
    lo_p, hi_p = stats.paired_bootstrap_ci(diff, 4000, seed=0)
    assert 1.55 < (hi_c - lo_c) / (hi_p - lo_p) < 1.9  # sqrt(3) = 1.73
    lo_1, hi_1 = stats.paired_bootstrap_ci(diff[seeds == 1], 4000, seed=0)  # one seed alone: the same width
    assert (hi_c - lo_c) / (hi_1 - lo_1) == pytest.approx(1.0, abs=0.1)
    # the permutation p flips a user's three rows together: the same p as one seed's users
    assert stats.cluster_sign_flip_p(diff, users, 2000, seed=1) == stats.sign_flip_p(
        3 * diff[seeds == 1], 2000, 1
    )


def test_a_flipped_seed_is_not_a_win() -> None:
    """Seeds 1 and 2 favour A, seed 3 the same users the other way. Pooled as independent users (the old
    compare) the interval is above 0; the per-seed differences disagree, so the verdict is not "A beats B"."""
    d = hr_diffs(300, seed=1)
    diff, users, seeds = three_seeds([d, d, -d])
    a = np.clip(diff, 0, None)
    b = a - diff  # a - b = diff
    r = stats.clustered_test(a, b, users, seeds, metric="hr@1", n_resamples=2000, seed=0)
    assert stats.paired_bootstrap_ci(diff, 2000, seed=0)[0] > 0
    assert r.pooled.ci_lo > 0 and r.pooled.diff == pytest.approx(d.mean() / 3)
    assert [s.diff for s in r.per_seed] == pytest.approx([d.mean(), d.mean(), -d.mean()])
    assert r.seeds == (1, 2, 3) and r.n_users == 300 and r.pooled.n == 900
    assert r.verdict is stats.Verdict.MIXED
    # every seed the same sign and the interval above 0: a win; mirrored: a loss; 0 inside: no difference
    assert (
        stats.clustered_test(a, a - np.abs(diff), users, seeds, n_resamples=500).verdict
        is stats.Verdict.BEATS
    )
    assert (
        stats.clustered_test(a - np.abs(diff), a, users, seeds, n_resamples=500).verdict
        is stats.Verdict.LOSES
    )
    noise = np.random.default_rng(5).choice([-1.0, 1.0], size=900)
    assert stats.clustered_test(noise, 0 * noise, users, seeds, n_resamples=500).verdict is stats.Verdict.TIE
    # one seed tells nothing of the spread between seeds: "ahead", never "beats"
    one = seeds == 1
    r1 = stats.clustered_test(a[one], a[one] - np.abs(diff[one]), users[one], seeds[one], n_resamples=500)
    assert r1.pooled.ci_lo > 0 and r1.verdict is stats.Verdict.AHEAD_ONE_SEED
    r1 = stats.clustered_test(a[one] - np.abs(diff[one]), a[one], users[one], seeds[one], n_resamples=500)
    assert r1.verdict is stats.Verdict.BEHIND_ONE_SEED


def test_each_seed_is_tested_on_its_own_rows() -> None:
    diff, users, seeds = three_seeds([hr_diffs(50, seed=s) for s in (1, 2, 3)])
    r = stats.clustered_test(diff, np.zeros_like(diff), users, seeds, "ndcg@10", "cold", 300, seed=4)
    for k, s in enumerate((1, 2, 3)):
        assert r.per_seed[k] == stats.paired_test(diff[seeds == s], np.zeros(50), "ndcg@10", "cold", 300, 4)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: stats.cluster_bootstrap_ci([1.0, 2.0], ["u1"]), "clusters of shape"),
        (lambda: stats.cluster_bootstrap_ci([1.0], ["u1"], n_resamples=0), "n_resamples"),
        (lambda: stats.clustered_test([1.0], [1.0], ["u"], [1, 2]), "seeds of shape"),
        (lambda: stats.clustered_test([1.0], [1.0, 0.0], ["u"], [1]), "shape"),
    ],
)
def test_bad_arguments(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()
