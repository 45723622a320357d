"""Popularity, SASRec, GRU4Rec, the config's max_len and train_baseline (unit tests on tiny synthetic data;
one e2e on ml-100k). BERT4Rec: tests/test_bert4rec.py."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from amfrec.baselines.content import SASRecContentConfig
from amfrec.baselines.popularity import Popularity, training_interaction_counts
from amfrec.baselines.sequential import (
    BERT4Rec,
    BERT4RecConfig,
    GRU4Rec,
    GRU4RecConfig,
    GRU4RecNet,
    SASRec,
    SASRecConfig,
    SASRecNet,
)
from amfrec.data.dataset import ItemInfo, PreparedData, Split
from amfrec.errors import AmfrecError
from amfrec.evaluate import evaluate
from amfrec.runs.baseline_run import train_baseline
from amfrec.runs.rundir import load_run_config

REPO = Path(__file__).resolve().parents[1]


def left_pad(seq: list[int], max_len: int) -> list[int]:
    seq = seq[-max_len:]
    return [0] * (max_len - len(seq)) + seq


def cyclic_data(n_items: int = 30, n_users: int = 60, seq_len: int = 16, max_len: int = 5, n_cand: int = 10):
    """Every user walks the item cycle 1 -> 2 -> ... -> n_items -> 1 from a random start: the next
    item is a deterministic function of the last one. Leave-one-out split as `amfrec data prepare` does."""
    g = torch.Generator().manual_seed(0)
    items = [ItemInfo("", "")] + [ItemInfo(str(i), f"Item {i}") for i in range(1, n_items + 1)]
    rows: dict[str, list] = {"train": [], "valid": [], "test": []}
    for u in range(n_users):
        start = int(torch.randint(0, n_items, (1,), generator=g))
        seq = [(start + t) % n_items + 1 for t in range(seq_len)]
        for t in range(1, seq_len - 2):
            rows["train"].append((f"u{u}", left_pad(seq[:t], max_len), seq[t], None))
        for name, t in (("valid", seq_len - 2), ("test", seq_len - 1)):
            others = [i for i in range(1, n_items + 1) if i != seq[t]]
            negs = [others[j] for j in torch.randperm(len(others), generator=g)[: n_cand - 1].tolist()]
            pos = int(torch.randint(0, n_cand, (1,), generator=g))
            rows[name].append(
                (f"u{u}", left_pad(seq[:t], max_len), seq[t], negs[:pos] + [seq[t]] + negs[pos:])
            )

    def split(name: str) -> Split:
        r = rows[name]
        return Split(
            users=[x[0] for x in r],
            history=torch.tensor([x[1] for x in r]),
            target=torch.tensor([x[2] for x in r]),
            candidates=None if name == "train" else torch.tensor([x[3] for x in r]),
        )

    manifest = {"max_len": max_len, "seed": 0, "n_candidates": n_cand}
    return PreparedData(Path("synthetic"), manifest, items, split("train"), split("valid"), split("test"))


@pytest.fixture(scope="module")
def cyclic() -> PreparedData:
    return cyclic_data()


# ---- Popularity ------------------------------------------------------------------------------


def test_popularity_counts_by_hand():
    # User a: 1 2 3 (train targets 2, 3 with first item 1); user b: 3 4 (train target 4, first item 3).
    train = Split(
        users=["a", "a", "b"],
        history=torch.tensor([[0, 0, 1], [0, 1, 2], [0, 0, 3]]),
        target=torch.tensor([2, 3, 4]),
    )
    counts = training_interaction_counts(train, n_items=5)
    assert counts.tolist() == [0, 1, 1, 2, 1, 0]


def test_popularity_scores_and_roundtrip(cyclic, tmp_path):
    model = Popularity()
    info = model.fit(cyclic, seed=1)
    n_train_interactions = len(cyclic.train) + len(set(cyclic.train.users))
    assert info["interactions"] == n_train_interactions
    cands = torch.tensor([[1, 2, 3]])
    # slow reference: count each candidate over the training rows (targets + each user's first item)
    firsts: dict[str, int] = {}  # a user's first window (rows come in time order) holds its first item
    for u, h in zip(cyclic.train.users, cyclic.train.history.tolist(), strict=True):
        firsts.setdefault(u, next(i for i in h if i))
    targets = cyclic.train.target.tolist()
    counts = [targets.count(c) + list(firsts.values()).count(c) for c in (1, 2, 3)]
    expected = torch.tensor([counts], dtype=model.counts.dtype)
    assert torch.equal(model.score(torch.zeros(1, 5, dtype=torch.long), cands), expected)
    model.save(tmp_path)
    again = Popularity.load(tmp_path, cyclic)
    assert torch.equal(again.score(torch.zeros(1, 5, dtype=torch.long), cands), expected)


# ---- configs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (SASRecConfig, {"heads": 3}, "heads"),
        (SASRecConfig, {"hidden": 0}, "hidden"),
        (SASRecConfig, {"dropout": 1.0}, "dropout"),
        (GRU4RecConfig, {"lr": 0.0}, "lr"),
        (GRU4RecConfig, {"patience": 0}, "patience"),
        (GRU4RecConfig, {"positions": "first"}, "positions"),
        (GRU4RecConfig, {"num_threads": 0}, "num_threads"),
        (
            SASRecConfig,
            {"max_len": 0},
            r"SASRecConfig.max_len must be null .* or an integer >= 1",
        ),
        (GRU4RecConfig, {"max_len": 2.5}, "GRU4RecConfig.max_len"),
        (BERT4RecConfig, {"max_len": True}, "BERT4RecConfig.max_len"),
        (SASRecContentConfig, {"max_len": "10"}, "SASRecContentConfig.max_len"),
    ],
)
def test_config_validation(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


@pytest.mark.parametrize(("name", "cls"), [("sasrec", SASRecConfig), ("gru4rec", GRU4RecConfig)])
def test_config_files_match_defaults(name, cls):
    on_disk = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())
    assert on_disk == dataclasses.asdict(cls())


# ---- networks --------------------------------------------------------------------------------


def test_sasrec_is_causal():
    torch.manual_seed(0)
    net = SASRecNet(20, 6, SASRecConfig(hidden=16, layers=2, heads=2, dropout=0.0)).eval()
    h = torch.tensor([[0, 0, 3, 4, 5, 6]])
    changed = h.clone()
    changed[0, -1] = 7
    out, out2 = net(h), net(changed)  # (1, 6, 16)
    assert torch.allclose(out[0, :5], out2[0, :5], atol=1e-6)  # earlier positions don't see the future
    assert not torch.allclose(out[0, 5], out2[0, 5])
    assert torch.isfinite(out).all()


def test_gru4rec_left_padding_matches_plain_gru():
    torch.manual_seed(0)
    net = GRU4RecNet(20, 6, GRU4RecConfig(hidden=8, layers=2, dropout=0.0)).eval()
    h = torch.tensor([[0, 0, 0, 3, 4, 5], [1, 2, 3, 4, 5, 6]])
    out = net(h)  # (2, 6, 8)
    for row, n in ((0, 3), (1, 6)):
        seq = h[row, -n:].unsqueeze(0)  # (1, n)
        plain, _ = net.gru(net.item_emb(seq))  # (1, n, 8)
        assert torch.allclose(out[row, -n:], net.out(plain)[0], atol=1e-6)


# ---- learning a deterministic next item -------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "cfg"),
    [
        (
            SASRec,
            SASRecConfig(hidden=32, heads=2, dropout=0.0, lr=1e-2, batch_size=64, max_epochs=10, patience=3),
        ),
        (GRU4Rec, GRU4RecConfig(hidden=32, dropout=0.0, lr=1e-2, batch_size=64, max_epochs=20, patience=3)),
        (
            SASRec,
            SASRecConfig(
                hidden=32, dropout=0.0, lr=1e-2, batch_size=64, max_epochs=8, patience=8, positions="last"
            ),
        ),
    ],
    ids=["sasrec", "gru4rec", "sasrec-last"],
)
def test_sequential_models_learn_the_cycle(cyclic, cls, cfg):
    model = cls(cfg)
    info = model.fit(cyclic, seed=1)
    assert 1 <= info["best_epoch"] <= info["epochs_run"] <= cfg.max_epochs
    test = evaluate(model, cyclic.test)
    assert test["hr@1"] >= 0.9, test
    assert info["best_valid_ndcg@10"] >= 0.9


def test_early_stopping_restores_best_epoch(cyclic):
    model = SASRec(SASRecConfig(hidden=16, dropout=0.0, lr=1e-2, batch_size=64, max_epochs=6, patience=1))
    info = model.fit(cyclic, seed=3)
    best = max(e["valid_ndcg@10"] for e in info["epochs"])
    assert info["best_valid_ndcg@10"] == best
    assert evaluate(model, cyclic.valid)["ndcg@10"] == pytest.approx(best)
    # patience=1 stops at the first epoch without improvement
    ndcg = [e["valid_ndcg@10"] for e in info["epochs"]]
    assert all(b > a for a, b in zip(ndcg[:-2], ndcg[1:-1], strict=True))


def test_fit_is_seeded(cyclic):
    cfg = GRU4RecConfig(hidden=8, lr=1e-2, batch_size=64, max_epochs=2, patience=2)
    a, b = GRU4Rec(cfg), GRU4Rec(cfg)
    a.fit(cyclic, seed=5)
    b.fit(cyclic, seed=5)
    h, c = cyclic.test.history, cyclic.test.candidates
    assert torch.equal(a.score(h, c), b.score(h, c))


def test_sasrec_save_load_and_item_embeddings(cyclic, tmp_path):
    model = SASRec(SASRecConfig(hidden=16, lr=1e-2, batch_size=64, max_epochs=1))
    model.fit(cyclic, seed=1)
    emb = model.item_embeddings()
    assert emb.shape == (cyclic.n_items + 1, 16) and emb.dtype == torch.float32
    assert torch.count_nonzero(emb[0]) == 0 and torch.count_nonzero(emb[1:]) > 0
    model.save(tmp_path)
    assert (tmp_path / "sasrec.safetensors").is_file()
    npy = np.load(tmp_path / "item_embeddings.npy")
    assert npy.dtype == np.float32 and np.array_equal(npy, emb.numpy())
    again = SASRec.load(tmp_path, cyclic)
    assert again.config == model.config
    h, c = cyclic.test.history, cyclic.test.candidates
    assert torch.equal(again.score(h, c), model.score(h, c))
    other = cyclic_data(n_items=31)
    with pytest.raises(AmfrecError, match="31"):
        SASRec.load(tmp_path, other)
    with pytest.raises(AmfrecError, match="not found"):
        GRU4Rec.load(tmp_path, cyclic)


# ---- train_baseline --------------------------------------------------------------------------


def test_train_baseline_writes_the_run_directory(tiny_prepared, tmp_path):
    out = tmp_path / "run"
    res = train_baseline("sasrec", tiny_prepared, 2, out, {"max_epochs": 2, "hidden": 16})
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "config.yaml",
        "item_embeddings.npy",
        "metrics.json",
        "sasrec.safetensors",
        "test_ranks.json",
        "train.log",
        "valid_metrics.json",
        "valid_ranks.json",
    ]
    test = json.loads((out / "metrics.json").read_text())
    assert test == res["test"] and test["split"] == "test" and test["seed"] == 2 and test["model"] == "sasrec"
    assert json.loads((out / "valid_metrics.json").read_text())["split"] == "valid"
    cfg = load_run_config(out)
    assert cfg["model"]["name"] == cfg["run"]["model"] == "sasrec" and cfg["run"]["seed"] == 2
    assert cfg["model"]["hidden"] == 16 and cfg["model"]["positions"] == "all"
    assert cfg["run"]["data"] == str(Path(tiny_prepared).resolve())
    assert "sasrec epoch 1" in (out / "train.log").read_text()
    assert SASRec.load(out).item_embeddings().shape[1] == 16


def test_train_baseline_parses_command_line_strings(tiny_prepared, tmp_path):
    ov = {"lr": "3e-3", "hidden": "16", "max_epochs": "1", "dropout": "0", "num_threads": "null"}
    train_baseline("gru4rec", tiny_prepared, 1, tmp_path / "g", ov)
    cfg = load_run_config(tmp_path / "g")["model"]
    assert cfg["lr"] == 0.003 and cfg["hidden"] == 16 and cfg["dropout"] == 0.0 and cfg["num_threads"] is None
    assert (tmp_path / "g" / "gru4rec.safetensors").is_file()
    with pytest.raises(AmfrecError, match="'lr': expected a number"):
        train_baseline("gru4rec", tiny_prepared, 1, tmp_path / "h", {"lr": "fast"})
    with pytest.raises(AmfrecError, match="hidden must be an integer"):
        train_baseline("gru4rec", tiny_prepared, 1, tmp_path / "h", {"hidden": "1.5"})


def test_train_baseline_popularity(tiny_prepared, tmp_path):
    res = train_baseline("popularity", tiny_prepared, 1, tmp_path / "pop")
    assert (tmp_path / "pop" / "popularity.safetensors").is_file()
    assert 0.0 <= res["test"]["hr@1"] <= 1.0 and res["test"]["n"] == res["valid"]["n"]


def test_train_baseline_user_errors(tiny_prepared, tmp_path):
    with pytest.raises(AmfrecError, match="unknown baseline"):
        train_baseline("caser", tiny_prepared, 1, tmp_path / "a")
    with pytest.raises(AmfrecError, match="unknown config field"):
        train_baseline("sasrec", tiny_prepared, 1, tmp_path / "b", {"hiden": 8})
    with pytest.raises(AmfrecError, match="heads"):
        train_baseline("sasrec", tiny_prepared, 1, tmp_path / "c", {"heads": 5})
    with pytest.raises(AmfrecError, match="not found"):
        train_baseline("gru4rec", tmp_path / "missing", 1, tmp_path / "d")
    assert not list(tmp_path.iterdir())  # no run directory, no temporary leftovers


@pytest.mark.e2e
def test_sasrec_beats_popularity_on_ml100k(prepared_ml100k, tmp_path):
    data = PreparedData.load(prepared_ml100k)
    pop = Popularity()
    pop.fit(data, seed=1)
    pop_test = evaluate(pop, data.test)
    sasrec = SASRec(SASRecConfig(max_epochs=3, patience=3))
    sasrec.fit(data, seed=1)
    sas_test = evaluate(sasrec, data.test)
    assert pop_test["hr@1"] > 0.05 + 0.05  # popularity is itself clearly above chance (1/20)
    assert sas_test["hr@1"] > pop_test["hr@1"] + 0.1, (sas_test, pop_test)
    assert sas_test["ndcg@10"] > pop_test["ndcg@10"] + 0.1


def test_run_info_reads_both_run_formats(tiny_prepared, tmp_path):
    """Today's run folders state run.model and model.name; baseline folders of the earlier format
    (model: "sasrec", data: {path}) are still read; anything else is refused naming the file."""
    from amfrec.runs.rundir import run_info

    train_baseline("popularity", tiny_prepared, 3, tmp_path / "pop")
    info = run_info(tmp_path / "pop")
    assert info["model"] == "popularity" and info["seed"] == 3
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.yaml").write_text("model: sasrec\nseed: 2\ndata: {path: /d}\n")
    assert run_info(tmp_path / "old") == {"model": "sasrec", "seed": 2, "data": "/d"}
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.yaml").write_text("model: {hidden: 3}\n")
    with pytest.raises(AmfrecError, match=r"odd/config.yaml: unknown run format"):
        run_info(tmp_path / "odd")


def test_same_results_as_before_the_restructure(tiny_atomic_dir, tmp_path):
    """Golden values: the same calls on the code before the restructure into baselines/ and runs/ (commit
    8e6f30d, `git show 8e6f30d:src/amfrec/models/train_baselines.py`), run on this fixture, gave exactly these
    test metrics. A change here means the baselines or the evaluator changed behaviour. SASRec's values were
    renewed once, on purpose, when an epoch of `positions: all` became N / (mean history items per window)
    windows instead of N / L (this fixture's windows are shorter than L: the old epoch saw fewer pairs)."""
    from amfrec.data.prepare import prepare

    prepare(tiny_atomic_dir, tmp_path / "D", seed=1)
    golden = {
        "popularity": (None, (0.13333333333333333, 0.3068795735358569, 0.2556860697495372)),
        "sasrec": ({"max_epochs": 3, "hidden": 16, "heads": 1}, (0.03333333333333333, 0.2625107865905791,
                                                                 0.19037529864929245)),
    }  # fmt: skip
    for name, (overrides, want) in golden.items():
        test = train_baseline(name, tmp_path / "D", 1, tmp_path / name, overrides)["test"]
        assert (test["hr@1"], test["ndcg@10"], test["mrr"]) == pytest.approx(want, abs=1e-12), name


@pytest.mark.parametrize("name", ["popularity", "sasrec", "gru4rec", "bert4rec"])
def test_scores_follow_the_candidates_when_permuted(cyclic, name):
    """Every baseline scores a candidate by itself: permuting the candidates permutes the scores (so a
    target's rank never depends on its column). AMFRec: tests/test_llm_item_token.py."""
    builders = {
        "popularity": Popularity,
        "sasrec": lambda: SASRec(SASRecConfig(max_epochs=1, hidden=16, heads=1)),
        "gru4rec": lambda: GRU4Rec(GRU4RecConfig(max_epochs=1, hidden=16)),
        "bert4rec": lambda: BERT4Rec(BERT4RecConfig(max_epochs=1, hidden=16, inner=32)),
    }
    model = builders[name]()
    model.fit(cyclic, seed=0)
    h, c = cyclic.test.history[:6], cyclic.test.candidates[:6]  # (6, L), (6, C)
    perm = torch.randperm(c.shape[1], generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(model.score(h, c[:, perm]), model.score(h, c)[:, perm], rtol=0, atol=1e-6)


# ---- max_len: the model reads the last L items of the data's histories ---------------------------

SHORT = 4  # the tiny fixture is prepared with max_len 10
SEQUENTIAL = {
    "sasrec": (SASRec, lambda **kw: SASRecConfig(hidden=16, heads=1, max_epochs=3, patience=3, **kw)),
    "gru4rec": (GRU4Rec, lambda **kw: GRU4RecConfig(hidden=16, max_epochs=3, patience=3, **kw)),
    "bert4rec": (BERT4Rec, lambda **kw: BERT4RecConfig(hidden=16, inner=32, max_epochs=3, patience=3, **kw)),
}


@pytest.fixture(scope="module")
def tiny_short(tiny_atomic_dir, tmp_path_factory) -> PreparedData:
    """The tiny fixture prepared with max_len SHORT (same seed, so the same windows cut shorter)."""
    from amfrec.data.prepare import prepare

    out = tmp_path_factory.mktemp("tiny-short") / "seed1"
    prepare(tiny_atomic_dir, out, seed=1, max_len=SHORT)
    return PreparedData.load(out)


@pytest.mark.parametrize("name", list(SEQUENTIAL))
def test_max_len_equals_data_prepared_with_the_shorter_max_len(tiny_prepared, tiny_short, name, tmp_path):
    """Training with max_len=4 on the max_len-10 folder is training on the max_len-4 folder: the same
    windows, the same per-epoch draws, so bit-identical scores; the saved weights remember 4."""
    cls, cfg = SEQUENTIAL[name]
    long = PreparedData.load(tiny_prepared)
    assert long.max_len == 10 and tiny_short.max_len == SHORT
    assert torch.equal(long.train.history[:, -SHORT:], tiny_short.train.history)  # the premise
    cut, plain = cls(cfg(max_len=SHORT)), cls(cfg())
    info = cut.fit(long, seed=2)
    plain_info = plain.fit(tiny_short, seed=2)
    assert info["max_len"] == plain_info["max_len"] == SHORT and cut.max_len == SHORT
    assert info["epochs"] == plain_info["epochs"]
    h, c = long.test.history, long.test.candidates  # (N, 10), (N, C)
    assert torch.equal(cut.score(h, c), plain.score(tiny_short.test.history, c))
    cut.save(tmp_path)
    again = cls.load(tmp_path, long)
    assert again.max_len == SHORT and again.config.max_len == SHORT
    assert torch.equal(again.score(h, c), cut.score(h, c))


@pytest.mark.parametrize("name", list(SEQUENTIAL))
def test_max_len_scores_ignore_older_items(cyclic, name):
    """Scoring reads only the last L items: changing an older one changes nothing, a recent one does."""
    cls, cfg = SEQUENTIAL[name]
    model = cls(cfg(max_len=3))
    model.fit(cyclic, seed=0)  # cyclic's histories hold up to 5 items
    h, c = cyclic.test.history, cyclic.test.candidates
    older, recent = h.clone(), h.clone()
    older[:, :-3] = torch.where(older[:, :-3] > 0, 7, 0)
    recent[:, -1] = 7
    assert torch.equal(model.score(older, c), model.score(h, c))
    assert not torch.equal(model.score(recent, c), model.score(h, c))


def test_max_len_above_the_data_is_refused(tiny_prepared, tmp_path):
    with pytest.raises(ValueError, match=r"SASRecConfig.max_len=11 exceeds the prepared data's max_len=10"):
        SASRecConfig(max_len=11).history_len(10)
    assert SASRecConfig(max_len=10).history_len(10) == 10 and SASRecConfig().history_len(7) == 7
    with pytest.raises(AmfrecError, match=r"GRU4RecConfig.max_len=50 exceeds the prepared data's max_len=10"):
        train_baseline("gru4rec", tiny_prepared, 1, tmp_path / "g", {"max_len": 50})
    assert not (tmp_path / "g").exists()


def test_max_len_from_the_command_line(tiny_prepared, tmp_path, capsys):
    from amfrec.cli.main import main

    argv = ["train", "--model", "sasrec", "--data", str(tiny_prepared), "--seed", "1"]
    sets = ["--set", "max_epochs=1", "--set", "hidden=16"]
    assert main([*argv, "--out", str(tmp_path / "s"), *sets, "--set", "max_len=5"]) == 0
    cfg = load_run_config(tmp_path / "s")
    assert cfg["model"]["max_len"] == 5 and cfg["train_info"]["max_len"] == 5 and cfg["run"]["max_len"] == 10
    assert SASRec.load(tmp_path / "s").net.pos_emb.num_embeddings == 5
    assert main([*argv, "--out", str(tmp_path / "t"), *sets, "--set", "max_len=50"]) == 2
    assert "max_len=50 exceeds the prepared data's max_len=10" in capsys.readouterr().err


def test_an_epoch_sees_each_pair_about_once_whatever_the_window_lengths() -> None:
    """positions: all draws N / (mean history items per window) windows: by hand on short windows, the same
    for any L >= the longest history (sparse data's windows are short whatever L is)."""
    import math

    from amfrec.baselines.sequential import BERT4Rec, BERT4RecConfig, SASRec, SASRecConfig

    history = torch.tensor([[0, 0, 0, 7], [0, 0, 3, 7], [0, 5, 3, 7], [0, 0, 0, 2]])  # k = 1, 2, 3, 1
    sasrec = SASRec(SASRecConfig())
    assert sasrec._windows_per_epoch(history) == math.ceil(4 / (7 / 4))  # = 3
    wide = torch.cat([torch.zeros(4, 46, dtype=torch.long), history], dim=1)  # the same windows, L = 50
    assert sasrec._windows_per_epoch(wide) == 3
    assert SASRec(SASRecConfig(positions="last"))._windows_per_epoch(wide) == 4
    # BERT4Rec: k + 1 tokens per window (its target too), mask_ratio of them masked: 4 / (2.75 * 0.5) -> 3
    assert BERT4Rec(BERT4RecConfig(mask_ratio=0.5))._windows_per_epoch(wide) == math.ceil(4 / (2.75 * 0.5))
    assert BERT4Rec(BERT4RecConfig(mask_ratio=0.1))._windows_per_epoch(wide) == 4  # at most N
