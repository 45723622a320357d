"""`amfrec bench scale` (issue 19's scale curve) and the linear candidate draw of `prepare` it led to."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from amfrec.baselines import BASELINES
from amfrec.bench.scale import growth_exponent, run_scale_bench
from amfrec.bench.scale_stages import write_synthetic
from amfrec.cli.main import build_parser
from amfrec.data.prepare import _draw_candidates
from amfrec.errors import AmfrecError


def test_growth_exponent_is_the_log_log_slope() -> None:
    x = [1e3, 1e4, 1e5]
    assert growth_exponent(x, [3 * v**1.5 for v in x]) == pytest.approx(1.5)
    assert growth_exponent(x, [2.0, 2.0, 2.0]) == pytest.approx(0.0)
    assert growth_exponent([10, 100], [1.0, 10.0]) == pytest.approx(1.0)
    assert growth_exponent([1e3], [0.5]) is None  # one size: no slope


def test_synthetic_data_has_the_promised_shape(tmp_path: Path) -> None:
    counts = write_synthetic(tmp_path, 5000, 400, seed=3)
    lines = (tmp_path / "scale.inter").read_text().splitlines()
    assert lines[0] == "user_id:token\titem_id:token\ttimestamp:float"
    rows = np.array([[int(v) for v in line.split("\t")] for line in lines[1:]])  # (N, 3)
    per_user = np.bincount(rows[:, 0])
    assert per_user.min() >= 5 and per_user.max() <= 50
    assert 5000 - 50 <= len(rows) <= 5000 and counts["interactions"] == len(rows)
    assert counts["users"] == len(per_user) and counts["items"] == len(np.unique(rows[:, 1]))
    assert rows[:, 1].min() >= 1 and rows[:, 1].max() <= 400
    for u in (0, len(per_user) - 1):  # timestamps increase within a user
        assert np.all(np.diff(rows[rows[:, 0] == u, 2]) > 0)
    pop = np.sort(np.bincount(rows[:, 1], minlength=401)[1:])[::-1]
    assert pop[0] > 20 * max(pop[200], 1)  # power law: the top item dwarfs the median one
    items = (tmp_path / "scale.item").read_text().splitlines()
    assert items[0] == "item_id:token\ttitle:token_seq" and len(items) == 401


def _mask_draw(
    rows: list[dict], names: list[str], seq: np.ndarray, starts: np.ndarray, n_cand: int, seed: int
):
    """The slow reference: a (n_items + 1,) mask per user, rng.choice over the allowed items' array."""
    rng = np.random.default_rng(seed)
    n_items = len(names) - 1
    out = []
    for u, row in enumerate(rows):
        allowed = np.ones(n_items + 1, dtype=bool)
        allowed[0] = False
        allowed[seq[starts[u] : starts[u + 1]]] = False
        neg = rng.choice(np.flatnonzero(allowed), size=n_cand - 1, replace=False)
        cands = np.append(neg, names.index(row["target"]))[rng.permutation(n_cand)]
        out.append([names[i] for i in cands])
    return out


@pytest.mark.parametrize(("n_items", "n_cand"), [(30, 5), (500, 20), (12000, 400)])
def test_candidate_draw_matches_the_per_user_mask(n_items: int, n_cand: int) -> None:
    """prepare draws the same candidates as the per-user catalogue mask it replaced (so prepared folders are
    unchanged), never a seen item, with no catalogue-sized work per user."""
    rng = np.random.default_rng(n_items)
    lengths = rng.integers(3, 20, size=25)
    seq = rng.integers(1, n_items + 1, size=int(lengths.sum()))  # repeats included
    starts = np.concatenate([[0], np.cumsum(lengths)])
    names = ["<pad>"] + [f"i{k}" for k in range(1, n_items + 1)]
    rows = [{"user": f"u{u}", "target": names[seq[starts[u + 1] - 1]]} for u in range(25)]
    drawn = [dict(r) for r in rows]
    _draw_candidates((drawn,), names, seq, starts, n_cand, 7, Path("x.inter"))
    assert [r["candidates"] for r in drawn] == _mask_draw(rows, names, seq, starts, n_cand, 7)
    for u, row in enumerate(drawn):
        seen = {names[i] for i in seq[starts[u] : starts[u + 1]]}
        assert len(set(row["candidates"])) == n_cand
        assert set(row["candidates"]) & seen == {row["target"]}


def test_candidate_draw_names_a_user_with_too_few_unseen_items() -> None:
    names = ["<pad>", "a", "b", "c", "d"]
    seq, starts = np.array([1, 2, 3]), np.array([0, 3])
    with pytest.raises(AmfrecError, match=r"x.inter: user 'u0' interacted with 3 of 4 items"):
        _draw_candidates(([{"user": "u0", "target": "c"}],), names, seq, starts, 3, 0, Path("x.inter"))


def test_scale_bench_runs_every_stage_at_the_smallest_size(tmp_path: Path) -> None:
    """Every stage gets a row with positive time and memory, the exponent column, the files; no timing
    assertion (the machine decides those)."""
    table = run_scale_bench([1000], out=tmp_path, rank_items=[3000], steps=1, batch_size=32, threads=1)
    result = json.loads((tmp_path / "scale.json").read_text())
    expected = {"prepare", "features (id)", "step amfrec no_llm", "step amfrec (tiny LM)", "rank catalogue"}
    expected |= {f"{'fit' if m in ('popularity', 'content_knn') else 'step'} {m}" for m in BASELINES}
    assert set(result["stages"]) == expected
    for label, stage in result["stages"].items():
        assert len(stage["seconds"]) == 1 and stage["seconds"][0] > 0, label
        assert stage["peak_mib"][0] > 0 and stage["exponent"] is None, label
        assert f"| {label} |" in table
    assert "| exponent |" in table and "exponent vs items" in table
    assert [r["items"] for r in result["rank"]] == [result["sizes"][0]["items"], 3000]
    assert result["rank"][1]["seconds"] > 0 and result["floor_mib"] > 0
    assert 900 <= result["sizes"][0]["interactions"] <= 1000
    assert (tmp_path / "scale.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "scale.md").read_text().strip() in table


@pytest.mark.parametrize("command", [["bench", "scale"], ["bench-scale"]])
def test_bench_scale_command_line(command: list[str]) -> None:
    a = build_parser().parse_args([*command, "--sizes", "1e3,2e4", "--rank-items", "1e6", "--threads", "1"])
    assert (a.sizes, a.rank_items, a.items, a.threads, a.steps) == ([1000, 20000], [1000000], None, 1, 3)
    assert a.func.__name__ == "cmd_bench_scale"
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([*command, "--sizes", "1.5"])
    assert e.value.code == 2


def test_bench_scale_rejects_a_ladder_too_small() -> None:
    with pytest.raises(AmfrecError, match="--sizes: every size must be >= 100"):
        run_scale_bench([50], rank_items=[])
    with pytest.raises(AmfrecError, match="--threads must be >= 1"):
        run_scale_bench([1000], rank_items=[], threads=0)
