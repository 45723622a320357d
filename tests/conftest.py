"""Shared fixtures.

- `ml100k_dir` (session): the real MovieLens-100K atomic files in ../shared/data/ml-100k (skips if absent).
- `prepared_ml100k` (session): `prepare(ml100k_dir, seed=1)` run once per session; returns its directory.
  Tests that use either fixture read real data: mark them `@pytest.mark.e2e`.
- `tiny_atomic_dir` (session): a small synthetic RecBole data set (30 users, 40 items, 6..14 interactions
  per user, titles/years/genres), for fast unit tests.
- `tiny_prepared` (session): `prepare(tiny_atomic_dir, seed=1)` (max_len 10, 20 candidates); load it with
  `PreparedData.load(tiny_prepared)`.
- `one_cpu`: the test's child processes run on one CPU (one torch thread each), for tests that compare
  trained weights across processes.
Do not modify the directories these fixtures return; copy them first.

`--auto-dtype {measure,float32,bfloat16}` (or the environment variable `AMFREC_TEST_AUTO_DTYPE`) forces what
`dtype: auto` resolves to on the CPU in this process, so a machine without fast bfloat16 still runs every
unforced test in bfloat16 (`make test-bf16`). Tests that check exact math pin `dtype="float32"` themselves.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from amfrec import hardware
from amfrec.data.prepare import prepare

REPO = Path(__file__).resolve().parents[1]
ML100K = (REPO / ".." / "shared" / "data" / "ml-100k").resolve()


AUTO_DTYPES = ("measure", "float32", "bfloat16")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--auto-dtype",
        choices=AUTO_DTYPES,
        default=os.environ.get("AMFREC_TEST_AUTO_DTYPE", "measure"),
        help="what model.dtype 'auto' resolves to on the CPU (measure = the matmul probe, as users get)",
    )


def pytest_report_header(config: pytest.Config) -> str:
    return f"amfrec: dtype auto -> {config.getoption('--auto-dtype')} (CPU flags: {hardware.cpu_flags()})"


@pytest.fixture(autouse=True)
def _forced_auto_dtype(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `dtype: auto` pick the forced dtype: the probe reports the forced one twice as fast."""
    forced = request.config.getoption("--auto-dtype")
    if forced != "measure":
        other = "float32" if forced == "bfloat16" else "bfloat16"
        monkeypatch.setattr(hardware, "probe_matmul_gflops", lambda: {forced: 2.0, other: 1.0})


def write_atomic(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    """Write a RecBole atomic file: a tab-separated `name:type` header, then the rows."""
    lines = ["\t".join(header)] + ["\t".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def make_tiny_atomic(root: Path, n_users: int = 30, n_items: int = 40, seed: int = 0) -> Path:
    """A small synthetic data set `tiny.inter` / `tiny.item` in `root` (deterministic in `seed`)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    genres = ["Action", "Comedy", "Drama", "Sci-Fi", "Romance"]
    items = [
        [i, f"Movie {i}", 1980 + i % 30, " ".join(genres[j] for j in range(len(genres)) if (i >> j) & 1)]
        for i in range(1, n_items + 1)
    ]
    write_atomic(
        root / "tiny.item",
        ["item_id:token", "movie_title:token_seq", "release_year:token", "class:token_seq"],
        items,
    )
    rows = []
    for u in range(1, n_users + 1):
        n = int(rng.integers(6, 15))
        # a drifting window over the items gives the data some sequential signal
        start = int(rng.integers(0, n_items))
        seq = [(start + 2 * t + int(rng.integers(0, 2))) % n_items + 1 for t in range(n)]
        for t, item in enumerate(dict.fromkeys(seq)):
            rows.append([u, item, int(rng.integers(1, 6)), 1_000_000 + 100 * u + 10 * t])
    write_atomic(
        root / "tiny.inter", ["user_id:token", "item_id:token", "rating:float", "timestamp:float"], rows
    )
    return root


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    if not (ML100K / "ml-100k.inter").is_file():
        pytest.skip(f"real data not found at {ML100K}")
    return ML100K


@pytest.fixture(scope="session")
def prepared_ml100k(ml100k_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "ml-100k-seed1"
    prepare(ml100k_dir, out, seed=1)
    return out


@pytest.fixture(scope="session")
def tiny_atomic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_atomic(tmp_path_factory.mktemp("tiny-atomic"))


@pytest.fixture(scope="session")
def tiny_prepared(tiny_atomic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny-prepared") / "seed1"
    prepare(tiny_atomic_dir, out, seed=1)
    return out


# Words of the tiny BERT's vocabulary: test_features_text's texts and the feature-build fixture's item texts.
BERT_WORDS = ["star", "wars", "empire", "jedi", "toy", "story", "comedy", "drama", "the", "of", "alpha",
              "beta", "gamma", "delta", "two", "genres", "romance", "sci", "fi", "1990", "2001", "1977", "(",
              ")", ".", ":", ",", "-"]  # fmt: skip


def make_tiny_bert(d: Path, seed: int = 0) -> Path:
    """A tiny random BERT (hidden 16, one layer) with its tokenizer, saved in `d` (a real HF encoder)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *BERT_WORDS]
    d.mkdir(parents=True, exist_ok=True)
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(d / "vocab.txt")).save_pretrained(d)
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    BertModel(cfg).save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_amfrec_run(tiny_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained run folder of the real AMFRec on a tiny random Llama and random features (2 steps)."""
    from llm_fixtures import SMALL, make_tiny_amfrec_inputs

    from amfrec.runs.amfrec_run import train_amfrec

    root = tmp_path_factory.mktemp("tiny-amfrec-run")
    features, config = make_tiny_amfrec_inputs(tiny_prepared, root)
    train_amfrec(tiny_prepared, features, config, 1, root / "run", SMALL, limit=4)
    return root / "run"


@pytest.fixture
def one_cpu() -> Iterator[None]:
    """The test's child processes start on one of the CPUs this thread may use (they inherit its affinity, and
    the library then runs one torch thread each); the affinity is restored after. For tests that compare
    trained weights across processes: at two threads an AMX Xeon's training kernels parted now and then
    (docs/RESULTS.md, "Repeatable training")."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)
