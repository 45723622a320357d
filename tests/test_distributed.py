"""torchrun with 2 CPU processes (gloo) on a tiny real AMFRec: after a few steps the trainable weights equal
those of one process with the same global batch and seed (to 1e-5), the validations (each rank scoring its
share of the users, 3 and 2 of 5) read what one process reads, and only rank 0 wrote files; with every
position a target too, where the ranks' prompts hold different numbers of targets. After training each rank
calibrates and tests on its share of the users (2 of 4): the choices, ranks and metrics are one process's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from llm_fixtures import SMALL, make_tiny_amfrec_inputs
from safetensors.torch import load_file

# Every training process runs on one CPU (one thread): on an AMX Xeon two-thread training parted now and then
# (docs/RESULTS.md, "Repeatable training"); the sharding is what these tests are about.
pytestmark = pytest.mark.usefixtures("one_cpu")

SETTINGS = {**SMALL, "train.max_steps": 6, "train.batch_size": 4, "train.eval_every": 3, "train.patience": 0,
            "train.eval_examples": 5}  # fmt: skip


def command(prepared: Path, features: Path, config: Path, out: Path, positions: str = "all") -> list[str]:
    argv = ["-m", "amfrec", "train", "--model", "amfrec", "--data", str(prepared), "--features",
            str(features), "--config", str(config), "--seed", "5", "--out", str(out),
            "--limit", "4"]  # fmt: skip
    for key, value in {**SETTINGS, "model.positions": positions}.items():
        argv += ["--set", f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}"]
    return argv


@pytest.mark.parametrize("positions", ["all", "last"])  # all: the ranks' chunks hold unequal target counts
def test_two_processes_equal_one(tiny_prepared: Path, tmp_path: Path, positions: str) -> None:
    features, config = make_tiny_amfrec_inputs(tiny_prepared, tmp_path, dtype="float32")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one", tmp_path / "two"
    argv_one, argv_two = (command(tiny_prepared, features, config, d, positions) for d in (one, two))
    subprocess.run([sys.executable, *argv_one], check=True, env=env, timeout=600)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    done = subprocess.run([*torchrun, *argv_two], env=env, timeout=600, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run directory:") == 1  # only rank 0 reports
    for name in ("checkpoint", "last"):
        a = load_file(one / name / "trainable.safetensors")
        b = load_file(two / name / "trainable.safetensors")
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-5, msg=f"{name}/{key}")
    # only rank 0 wrote: the same files as the single process, no leftovers, one log line per validation
    files = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob("*"))  # noqa: E731
    assert files(two) == files(one)
    log = (two / "train.log").read_text()
    assert log.count("step 3: valid") == 1 and log.count("step 6: valid") == 1
    # the validations: each rank scored its share of the 5 users; the mean over both is one process's
    evals = [json.loads((d / "train_history.json").read_text())["evals"] for d in (one, two)]
    assert [e["step"] for e in evals[1]] == [e["step"] for e in evals[0]] == [3, 6]
    for a, b in zip(*evals, strict=True):
        assert b["ndcg@10"] == pytest.approx(a["ndcg@10"], abs=1e-6)
    assert "validate: 3 users" in done.stderr and "validate: 2 users" in done.stderr
    # after training: every rank scored 2 of the 4 calibration, valid and test users; one process's results
    assert done.stderr.count("valid: 2 users") == 2 and done.stderr.count("test: 2 users") == 2
    configs = [yaml.safe_load((d / "config.yaml").read_text())["model"] for d in (one, two)]
    for term in ("content_similarity", "new_item_order", "new_item_offset"):
        assert configs[1][term] == pytest.approx(configs[0][term], rel=1e-5, abs=1e-6), term  # in grid units
    for split in ("valid", "test"):
        ranks = [json.loads((d / f"{split}_ranks.json").read_text()) for d in (one, two)]
        assert ranks[1]["ranks"] == ranks[0]["ranks"] and len(ranks[0]["ranks"]) == 4
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (one, two)]
    for key in ("hr@1", "ndcg@10", "mrr", "n"):
        assert metrics[1][key] == pytest.approx(metrics[0][key], abs=1e-6), key


@pytest.mark.parametrize("batch, world", [(5, 2)])
def test_a_global_batch_that_does_not_split_is_refused(batch: int, world: int) -> None:
    from amfrec.training.distributed import Ranks, shard

    with pytest.raises(ValueError, match="batch_size 5 is not divisible by the 2 processes"):
        shard(Ranks(rank=0, world=world), torch.zeros(batch, 3))
    first, second = (shard(Ranks(rank=r, world=2), torch.arange(8))[0] for r in (0, 1))
    assert first.tolist() == [0, 1, 2, 3] and second.tolist() == [4, 5, 6, 7]


def test_resume_under_torchrun_after_a_kill(tiny_prepared: Path, tmp_path: Path) -> None:
    """torchrun killed (SIGKILL to the whole process group) after its first saved validation, then resumed
    under torchrun: the final weights equal one uninterrupted single process's (to 1e-5)."""
    import signal
    import time

    features, config = make_tiny_amfrec_inputs(tiny_prepared, tmp_path, dtype="float32")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    settings = ["--set", "train.max_steps=30", "--set", "train.eval_every=5"]
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, *command(tiny_prepared, features, config, one), *settings], check=True,
                   env=env, timeout=600)  # fmt: skip
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    argv = [*torchrun, *command(tiny_prepared, features, config, two), *settings]
    proc = subprocess.Popen(argv, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while not (two / "last" / "state.pt").is_file():
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(60)
    assert not (two / "metrics.json").exists()
    subprocess.run([*argv, "--resume"], check=True, env=env, timeout=600, capture_output=True)
    a, b = (
        load_file(one / "last" / "trainable.safetensors"),
        load_file(two / "last" / "trainable.safetensors"),
    )
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-5, msg=key)
    assert (two / "metrics.json").is_file()
