"""The two inference terms chosen on validation full ranking (`amfrec.runs.calibrate`): the content
similarity (content_knn's cosine, weighted) and one offset on the scores of the items without a trained id;
checked against slow references and a trained run."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from llm_fixtures import SMALL, make_tiny_amfrec_inputs

from amfrec.cli.main import main
from amfrec.data.prepare import prepare
from amfrec.features.store import load_features
from amfrec.model.similarity import reorder_new_items
from amfrec.runs.amfrec_run import load_run, train_amfrec
from amfrec.runs.calibrate import (
    OFFSET_GRID,
    ORDER_GRID,
    SIMILARITY_GRID,
    Validation,
    catalogue_scores,
    choose_offset,
    choose_order,
    choose_similarity,
    clear_best,
)
from amfrec.runs.ranker import Ranker
from amfrec.stats import paired_bootstrap_ci
from amfrec.training.checkpoint import load_checkpoint


def slow_ndcg10(scores: list[list[float]], target: list[int], seen: list[set[int]]) -> np.ndarray:
    """ndcg@10 one user at a time: the target (item t, column t - 1) among the items the user has not seen,
    ties against the model."""
    out = []
    for row, t, s in zip(scores, target, seen, strict=True):
        others = [j for j in range(1, len(row) + 1) if j != t and j not in s]
        rank = 1 + sum(row[j - 1] >= row[t - 1] for j in others)
        out.append(1 / math.log2(rank + 1) if rank <= 10 else 0.0)
    return np.array(out)


def slow_hr1(scores: list[list[float]], target: list[int], candidates: list[list[int]]) -> np.ndarray:
    """1 where the target scores above every other candidate of its row (ties against the model)."""
    return np.array([float(all(row[t - 1] > row[c - 1] for c in cands if c != t))
                     for row, t, cands in zip(scores, target, candidates, strict=True)])  # fmt: skip


def slow_judge(scores: list[list[float]], v: Validation) -> dict[str, np.ndarray]:
    seen_sets = [set(torch.nonzero(r).flatten().tolist()) - {0} for r in v.seen]
    out = {"ndcg@10": slow_ndcg10(scores, v.target.tolist(), seen_sets)}
    if v.candidates is not None:
        out["hr@1"] = slow_hr1(scores, v.target.tolist(), v.candidates.tolist())
    return out


def slow_pick(found: dict[float, dict[str, np.ndarray]], slices: dict | None = None) -> float:
    """Among the values whose slices (cold, warm, new) are on no metric clearly below 0's, the best mean
    ndcg@10 (ties: nearest 0), or 0 unless its paired gain over 0 has an interval above 0."""

    def costs(w: float) -> bool:
        for name in ("cold", "warm", "new"):
            rows = (slices or {}).get(name)
            for metric in found[w] if rows is not None and rows.any() else ():
                diff = found[w][metric][rows] - found[0.0][metric][rows]
                if diff.mean() < 0 and paired_bootstrap_ci(diff)[1] < 0:
                    return True
        return False

    ok = {w: m["ndcg@10"] for w, m in found.items() if w == 0.0 or not costs(w)}
    best_mean = max(v.mean() for v in ok.values())
    best = min((w for w, v in ok.items() if v.mean() == best_mean), key=abs)
    return best if best == 0.0 or paired_bootstrap_ci(ok[best] - ok[0.0])[0] > 0 else 0.0


def slow_reorder(v: Validation, fresh: torch.Tensor, weight: float, order: float) -> list[list[float]]:
    """One user at a time: the new items outside the history take, best place first, the places (scores)
    the new items hold, in the order of score + order x cosine (ties: the lower item first)."""
    out = []
    scored = (v.scores + weight * v.cosines).tolist()
    for row, cos, hist in zip(scored, v.cosines.tolist(), v.history.tolist(), strict=True):
        new = [j for j in range(len(row)) if fresh[j] and j + 1 not in hist]
        places = sorted((row[j] for j in new), reverse=True)
        takers = sorted(new, key=lambda j: (-(row[j] + order * cos[j]), j))
        for j, place in zip(takers, places, strict=True):
            row[j] = place
        out.append(row)
    return out


def slow_order_choice(v: Validation, fresh: torch.Tensor, weight: float = 0.0) -> float:
    unit = float(v.scores.std()) / float(v.cosines.std())
    found = {k * unit: slow_judge(slow_reorder(v, fresh, weight, k * unit), v) for k in ORDER_GRID}
    return slow_pick(found, v.slices)


def slow_choice(v: Validation, fresh: torch.Tensor, weight: float = 0.0, order: float = 0.0) -> float:
    scores = slow_reorder(v, fresh, weight, order) if order else (v.scores + weight * v.cosines).tolist()
    spread = float(torch.tensor(scores).std())
    found = {}
    for k in OFFSET_GRID:
        shifted = [[x + (k * spread if fresh[j] else 0.0) for j, x in enumerate(row)] for row in scores]
        found[k * spread] = slow_judge(shifted, v)
    return slow_pick(found, v.slices)


def slow_similarity_choice(v: Validation) -> float:
    unit = float(v.scores.std()) / float(v.cosines.std())
    found = {k * unit: slow_judge((v.scores + k * unit * v.cosines).tolist(), v) for k in SIMILARITY_GRID}
    return slow_pick(found, v.slices)


def test_a_gain_within_the_noise_keeps_zero() -> None:
    g = np.random.default_rng(0)
    base = g.random(400)
    noisy = {0.0: base, 1.0: base + g.normal(0.001, 0.05, 400), -1.0: base - 0.01}
    assert noisy[1.0].mean() > base.mean() and clear_best(noisy) == 0.0
    clear = {0.0: base, 1.0: base + 0.02 + g.normal(0, 0.01, 400), 2.0: base + 0.01}
    assert clear_best(clear) == 1.0


def slow_knn_cosines(features: Path, n_items: int, history: torch.Tensor, decay: float = 0.8) -> torch.Tensor:
    """content_knn's cosine, one user and one item at a time: (B, n_items) for items 1..n_items."""
    mods = load_features(features, n_items, ["text", "image"])

    def content(i: int) -> torch.Tensor:  # text and image rows, each unit length, joined, unit length
        parts = [m.values[i].double() / m.values[i].double().norm() for m in mods.values()]
        return torch.cat(parts) / torch.cat(parts).norm()

    out = torch.zeros(len(history), n_items, dtype=torch.float64)
    for b, row in enumerate(history.tolist()):
        items = [i for i in row if i]
        user = sum(decay ** (len(items) - 1 - k) * content(i) for k, i in enumerate(items))
        user = user / user.norm()
        for j in range(1, n_items + 1):
            out[b, j - 1] = float(user @ content(j))
    return out


def test_the_similarity_weight_finds_a_signal_only_the_cosines_carry() -> None:
    """The targets score like every other item but have the highest cosine in their row: only a weight > 0
    ranks them, and the slow reference agrees on which weight."""
    g = torch.Generator().manual_seed(1)
    n_users, n_items = 40, 30
    scores = torch.randn(n_users, n_items, generator=g)
    cosines = torch.rand(n_users, n_items, generator=g) * 0.5
    target = torch.randint(1, n_items + 1, (n_users,), generator=g)
    cosines[torch.arange(n_users), target - 1] = 0.9
    seen = torch.rand(n_users, n_items + 1, generator=g) < 0.2
    seen[torch.arange(n_users), target] = False
    v = Validation(scores, cosines, target, seen)
    best, found, refused = choose_similarity(v)
    assert best == pytest.approx(slow_similarity_choice(v), rel=1e-6)
    assert best > 0 and found[best] > found[0.0] and refused == {}
    flat = Validation(scores, torch.zeros_like(cosines), target, seen)
    assert choose_similarity(flat) == (0.0, {0.0: found[0.0]}, {})


def test_a_weight_that_wins_on_average_by_costing_a_slice_is_refused() -> None:
    """Cold targets have the top cosine of their row, warm ones score high but resemble nothing the user had
    while three other items of the row resemble it: a weight lifts the cold rows a lot and costs the warm ones
    clearly. Unguarded (no slices) the best weight is taken; guarded it is refused with the warm slice named,
    and the choice is the slow reference's."""
    g = torch.Generator().manual_seed(2)
    n_users, n_items = 200, 40
    warm = torch.arange(n_users) % 2 == 0  # (N,)
    scores = torch.randn(n_users, n_items, generator=g)
    cosines = torch.rand(n_users, n_items, generator=g) * 0.4
    target = torch.randint(1, n_items + 1, (n_users,), generator=g)
    rows = torch.arange(n_users)
    scores[rows[warm], target[warm] - 1] += 2.5  # warm targets near the top without the term
    cosines[rows[~warm], target[~warm] - 1] = 0.9  # cold targets: the most similar item
    cosines[rows[warm], target[warm] - 1] = 0.0
    near = (target[warm].unsqueeze(1) - 1 + torch.tensor([1, 2, 3])) % n_items  # (N / 2, 3) columns
    cosines[rows[warm].unsqueeze(1), near] = 1.0  # three other items resemble the warm rows' history
    seen = torch.zeros(n_users, n_items + 1, dtype=torch.bool)
    others = torch.stack([torch.randperm(n_items - 1, generator=g)[:9] + 1 for _ in range(n_users)])  # (N, 9)
    others = others + (others >= target.unsqueeze(1)).long()  # every item but the target
    candidates = torch.cat([target.unsqueeze(1), others], 1)  # (N, 10)
    slices = {"warm": warm.numpy(), "cold": (~warm).numpy()}
    free, found, _ = choose_similarity(Validation(scores, cosines, target, seen, candidates))
    assert free > 0 and found[free] > found[0.0]  # on average the term wins
    guarded = Validation(scores, cosines, target, seen, candidates, slices)
    best, _, refused = choose_similarity(guarded)
    assert free in refused and any(cost.startswith("warm ") for cost in refused[free])
    assert best < free and best not in refused
    assert best == pytest.approx(slow_similarity_choice(guarded), rel=1e-6)


def test_the_offset_lifts_new_items_that_score_too_low() -> None:
    """Warm targets score at the top of their row; new targets (items 1-5) carry a penalty of -6: only an
    offset that gives the penalty back ranks them, and the slow reference agrees on which one."""
    g = torch.Generator().manual_seed(0)
    n_users, n_items = 40, 30
    fresh = torch.zeros(n_items, dtype=torch.bool)
    fresh[:5] = True  # items 1..5 have no trained id
    scores = torch.randn(n_users, n_items, generator=g)
    target = torch.randint(6, n_items + 1, (n_users,), generator=g)
    target[::2] = torch.randint(1, 6, (n_users // 2,), generator=g)  # every other user wants a new item
    scores[torch.arange(n_users), target - 1] += 2.0
    scores[:, fresh] -= 6.0
    seen = torch.rand(n_users, n_items + 1, generator=g) < 0.2
    seen[torch.arange(n_users), target] = False
    v = Validation(scores, torch.zeros_like(scores), target, seen)
    best, found, _ = choose_offset(v, fresh)
    assert best == pytest.approx(slow_choice(v, fresh), rel=1e-6)
    assert best > 0 and found[best][0] > found[0.0][0]
    ranks_zero = [  # the new targets' recall@10 with no offset, one user at a time
        1 + sum(scores[u, j] >= scores[u, t - 1] for j in range(n_items) if j != t - 1 and not seen[u, j + 1])
        for u, t in enumerate(target.tolist())
        if fresh[t - 1]
    ]
    assert found[0.0][1] == pytest.approx(sum(r <= 10 for r in ranks_zero) / len(ranks_zero))
    assert choose_offset(v, torch.zeros(n_items, dtype=torch.bool))[0] == 0.0  # no new item


def test_new_items_keep_their_places_and_take_them_in_content_order() -> None:
    """Items 2, 4, 5, 6 are new, 6 is in the history. By score + 10 x cosine the order is 5 (10), 2 (4),
    4 (3): they take the places 4, 2, 1 the new items held; 6 keeps its own; warm items do not move."""
    total = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    fresh = torch.tensor([False, True, False, True, True, True])
    cosines = torch.tensor([[0.0, 0.0, 0.0, 0.1, 0.9, 0.5]])
    in_history = torch.tensor([[False, False, False, False, False, True]])
    shift = reorder_new_items(total, cosines, fresh, in_history, 10.0)
    assert shift.tolist() == [[0.0, -2.0, 0.0, -1.0, 3.0, 0.0]]
    assert reorder_new_items(total, cosines, fresh, in_history, 0.0).abs().sum() == 0  # the score's own order


def test_the_order_weight_ranks_new_targets_by_content_within_their_places() -> None:
    """The scores rank the new items (1-8) at random among themselves, the cosines put each new target
    first among them: an order weight is chosen (the slow reference agrees), and the warm targets keep
    their ranks exactly."""
    g = torch.Generator().manual_seed(1)
    n_users, n_items = 60, 30
    fresh = torch.zeros(n_items, dtype=torch.bool)
    fresh[:8] = True
    scores = torch.randn(n_users, n_items, generator=g)
    target = torch.randint(9, n_items + 1, (n_users,), generator=g)
    target[::2] = torch.randint(1, 9, (n_users // 2,), generator=g)
    scores[:, fresh] += 1.5  # new items high in every row: their order decides the new targets' ranks
    cosines = torch.rand(n_users, n_items, generator=g) * 0.5
    cosines[torch.arange(n_users), target - 1] = 1.0
    history = torch.randint(9, n_items + 1, (n_users, 3), generator=g)
    seen = torch.zeros(n_users, n_items + 1, dtype=torch.bool).scatter_(1, history, True)
    seen[torch.arange(n_users), target] = False
    history[seen.gather(1, history) == 0] = 0  # a target is never in its own history
    v = Validation(scores, cosines, target, seen, history=history)
    best, found, _ = choose_order(v, fresh)
    assert best == pytest.approx(slow_order_choice(v, fresh), rel=1e-6)
    assert best > 0 and found[best][1] > found[0.0][1]
    warm = ~fresh[target - 1]
    moved = torch.tensor(slow_reorder(v, fresh, 0.0, best))
    assert torch.equal(moved[:, ~fresh], scores[:, ~fresh]) and not torch.equal(moved, scores)
    rank = lambda s: (s >= s.gather(1, target[:, None] - 1)).sum(1)  # noqa: E731
    assert torch.equal(rank(moved)[warm], rank(scores)[warm])


@pytest.fixture(scope="module")
def run(tiny_atomic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny AMFRec trained under the new-item protocol (a quarter of the items never trained), the offset
    chosen on every validation user after training."""
    root = tmp_path_factory.mktemp("calibrate")
    prepare(tiny_atomic_dir, root / "data", seed=1, new_items=0.25)
    features, config = make_tiny_amfrec_inputs(root / "data", root, dtype="float32")
    sets = {**SMALL, "model.modality_dropout": {"id": 0.5}, "train.calibrate_examples": 1000}
    train_amfrec(root / "data", features, config, 1, root / "run", sets, limit=4)
    return root / "run"


def test_training_chooses_the_terms_on_validation_and_the_run_keeps_them(run: Path) -> None:
    model, data, run_cfg = load_run(run)
    _, cfg, _ = load_checkpoint(run / "checkpoint")
    assert model.new_item_offset == cfg.model.new_item_offset
    assert model.content_similarity == cfg.model.content_similarity
    fresh = model.fresh_items()[1:].cpu()
    assert bool(fresh.any()) and not bool(fresh[data.item_train_counts[1:] > 0].any())
    v = catalogue_scores(model, data, None)  # both terms off while scoring
    assert set(v.slices) >= {"cold", "warm", "new"} and v.candidates is not None
    weight = slow_similarity_choice(v)
    assert cfg.model.content_similarity == pytest.approx(weight, rel=1e-5)
    order = slow_order_choice(v, fresh, weight)
    assert cfg.model.new_item_order == pytest.approx(order, rel=1e-5)
    offset = slow_choice(v, fresh, weight, order)
    assert cfg.model.new_item_offset == pytest.approx(offset, rel=1e-5, abs=1e-6)
    ranker = Ranker.load(run).model
    assert (ranker.new_item_offset, ranker.content_similarity, ranker.new_item_order) == (
        model.new_item_offset, weight, model.new_item_order)  # fmt: skip


def test_the_similarity_term_is_content_knns_cosine(run: Path) -> None:
    model, data, run_cfg = load_run(run)
    history = data.test.history[:3]
    catalogue = torch.arange(1, data.n_items + 1).expand(3, -1)
    model.content_similarity = 0.0
    before = model.score(history, catalogue).float()
    model.content_similarity = 0.7
    after = model.score(history, catalogue).float()
    slow = slow_knn_cosines(Path(run_cfg["run"]["features"]), data.n_items, history).float()
    torch.testing.assert_close(after - before, 0.7 * slow, atol=1e-4, rtol=0)
    cosines = catalogue_scores(model, data, 2).cosines
    slow = slow_knn_cosines(Path(run_cfg["run"]["features"]), data.n_items, data.valid.history[:2]).float()
    torch.testing.assert_close(cosines, slow, atol=1e-5, rtol=0)


def test_the_offset_moves_exactly_the_new_items_scores(run: Path) -> None:
    model, data, _ = load_run(run)
    history = data.test.history[:3]
    catalogue = torch.arange(1, data.n_items + 1).expand(3, -1)
    fresh = model.fresh_items()[1:].cpu()
    model.new_item_offset = 0.0
    before = model.score(history, catalogue).float()
    model.new_item_offset = 2.5
    after = model.score(history, catalogue).float()
    torch.testing.assert_close(after - before, 2.5 * fresh.float().expand(3, -1), atol=1e-4, rtol=0)


def test_the_new_items_order_moves_only_new_items_among_their_own_places(run: Path) -> None:
    """With an order weight the warm items' scores stay, each row's new items (outside the history) hold
    the same scores among them, handed out in the order of score + weight x content_knn's cosine; the
    1 + 19 candidates get what the catalogue gives them."""
    model, data, run_cfg = load_run(run)
    history, rows = data.test.history, len(data.test)
    catalogue = torch.arange(1, data.n_items + 1).expand(rows, -1)
    fresh = model.fresh_items()[1:].cpu()
    model.new_item_order = 0.0
    before = model.score(history, catalogue).float()
    model.new_item_order = 3.0
    after = model.score(history, catalogue).float()
    assert torch.equal(after[:, ~fresh], before[:, ~fresh])
    cosines = slow_knn_cosines(Path(run_cfg["run"]["features"]), data.n_items, history).float()
    v = Validation(before, cosines, data.test.target, torch.zeros(rows, data.n_items + 1, dtype=torch.bool),
                   history=history)  # fmt: skip
    torch.testing.assert_close(after, torch.tensor(slow_reorder(v, fresh, 0.0, 3.0)), atol=1e-4, rtol=0)
    assert not torch.equal(after, before)  # the tiny run's new items do change places
    picked = model.score(history, data.test.candidates).float()
    torch.testing.assert_close(picked, after.gather(1, data.test.candidates - 1), atol=1e-5, rtol=0)


def test_amfrec_calibrate_rewrites_the_checkpoint_and_config(run: Path, capsys) -> None:
    model, data, _ = load_run(run)
    v = catalogue_scores(model, data, 6)
    weight = slow_similarity_choice(v)
    order = slow_order_choice(v, model.fresh_items()[1:].cpu(), weight)
    offset = slow_choice(v, model.fresh_items()[1:].cpu(), weight, order)
    assert main(["calibrate", "--run", str(run), "--examples", "6"]) == 0
    out = capsys.readouterr().out
    assert "model.new_item_offset" in out and "model.content_similarity" in out and "new_item_order" in out
    _, cfg, _ = load_checkpoint(run / "checkpoint")
    saved = yaml.safe_load((run / "config.yaml").read_text())["model"]
    loaded = load_run(run)[0]
    for name, want in (
        ("new_item_offset", offset),
        ("content_similarity", weight),
        ("new_item_order", order),
    ):
        assert getattr(cfg.model, name) == pytest.approx(want, rel=1e-5, abs=1e-6)
        assert saved[name] == pytest.approx(want, rel=1e-5, abs=1e-6)
        assert getattr(loaded, name) == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_a_run_without_new_items_gets_the_similarity_only(
    tiny_amfrec_run: Path, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_amfrec_run, run)  # the session's run stays as it is
    model, data, _ = load_run(run)
    if model.fresh_items() is not None and bool(model.fresh_items()[1:].any()):
        pytest.skip("the tiny standard split left an item without training interactions")
    offset = load_checkpoint(run / "checkpoint")[1].model.new_item_offset
    v = catalogue_scores(model, data, None)
    assert main(["calibrate", "--run", str(run), "--examples", "1000"]) == 0
    out = capsys.readouterr().out
    assert "model.content_similarity" in out and "new_item_offset" not in out
    _, cfg, _ = load_checkpoint(run / "checkpoint")
    assert cfg.model.new_item_offset == offset
    assert cfg.model.content_similarity == pytest.approx(slow_similarity_choice(v))
