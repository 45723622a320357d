"""dtype "auto" is chosen by measurement; an explicit dtype is respected; threads follow the affinity mask."""

from __future__ import annotations

import logging

import pytest
import torch
from llm_fixtures import make_tiny_backbone_dir

from amfrec import hardware
from amfrec.hardware import deterministic_algorithms, resolve_dtype


def fake_probe(monkeypatch: pytest.MonkeyPatch, fp32: float, bf16: float) -> None:
    monkeypatch.setattr(hardware, "probe_matmul_gflops", lambda: {"float32": fp32, "bfloat16": bf16})


def test_auto_picks_float32_where_bf16_is_slow(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_probe(monkeypatch, fp32=72.0, bf16=1.0)
    choice, reason = resolve_dtype("auto", "cpu")
    assert choice == "float32"
    assert reason == "dtype auto -> float32: bf16 matmul 1 GFLOP/s vs fp32 72 GFLOP/s"


def test_auto_picks_bfloat16_where_it_is_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_probe(monkeypatch, fp32=213.0, bf16=865.0)
    choice, reason = resolve_dtype("auto", "cpu")
    assert choice == "bfloat16"
    assert "865" in reason and "213" in reason


@pytest.mark.parametrize("explicit", ["float32", "bfloat16"])
def test_explicit_dtype_is_respected(monkeypatch: pytest.MonkeyPatch, explicit: str) -> None:
    for fp32, bf16 in ((72.0, 1.0), (213.0, 865.0)):
        fake_probe(monkeypatch, fp32, bf16)
        assert resolve_dtype(explicit, "cpu")[0] == explicit


def test_explicit_slow_bfloat16_warns_with_both_numbers(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake_probe(monkeypatch, fp32=72.0, bf16=1.0)
    with caplog.at_level(logging.WARNING, logger="amfrec.hardware"):
        resolve_dtype("bfloat16", "cpu")
    assert "1 GFLOP/s" in caplog.text and "72 GFLOP/s" in caplog.text
    caplog.clear()
    fake_probe(monkeypatch, fp32=213.0, bf16=865.0)
    with caplog.at_level(logging.WARNING, logger="amfrec.hardware"):
        resolve_dtype("bfloat16", "cpu")
    assert caplog.text == ""


def test_unknown_dtype_is_refused() -> None:
    with pytest.raises(ValueError, match="float8"):
        resolve_dtype("float8", "cpu")


def test_backbone_loads_in_the_dtype_auto_picks(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from amfrec.llm.backbone import load_backbone

    tiny_dir = make_tiny_backbone_dir(tmp_path / "tiny")
    fake_probe(monkeypatch, fp32=72.0, bf16=1.0)
    assert load_backbone(str(tiny_dir), dtype="auto", device="cpu").dtype == torch.float32
    fake_probe(monkeypatch, fp32=213.0, bf16=865.0)
    assert load_backbone(str(tiny_dir), dtype="auto", device="cpu").dtype == torch.bfloat16
    assert load_backbone(str(tiny_dir), dtype="float32", device="cpu").dtype == torch.float32


def test_alternating_best_survives_a_stall_that_a_run_of_repeats_would_not() -> None:
    """A fake clock: every call takes 1 s, but a stall adds 100 s to the first five calls, whichever dtype
    makes them. Taking turns (f b f b f | b f b f b), each dtype gets unstalled rounds and reads 1 s; five
    repeats of float32 in a row would have spent all of them inside the stall."""
    now, made = [0.0], []

    def run(name: str):
        def go() -> None:
            now[0] += 101.0 if len(made) < 5 else 1.0
            made.append(name)

        return go

    names = ("float32", "bfloat16")
    best = hardware.alternating_best({k: run(k) for k in names}, 10**6, 5, clock=lambda: now[0])
    assert best == {"float32": 1.0, "bfloat16": 1.0}
    assert made == ["float32", "bfloat16"] * 5  # they took turns, five rounds
    # min_seconds reached after the first round: one round only
    made.clear()
    made.extend(["x"] * 5)  # past the stall
    assert hardware.alternating_best({k: run(k) for k in names}, 0.5, 5, clock=lambda: now[0]) == {
        "float32": 1.0,
        "bfloat16": 1.0,
    }
    assert made[5:] == ["float32", "bfloat16"]


def test_the_real_probe_measures_both_dtypes() -> None:
    g = hardware.probe_matmul_gflops()
    assert set(g) == {"float32", "bfloat16"} and all(v > 0 for v in g.values())


def test_use_all_cores_follows_the_affinity_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda pid: {0})
    try:
        assert hardware.use_all_cores() == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_cli_leaves_the_thread_count_as_it_found_it(tmp_path) -> None:
    from amfrec.cli.main import main

    torch.set_num_threads(1)
    try:
        argv = ["data", "prepare", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "D")]
        assert main(argv) == 2
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(hardware.usable_cores())


def test_deterministic_kernels_repeat_an_indexed_tables_gradient_to_the_bit() -> None:
    """The gradient of a float32 table read at repeated indices (what a prompt does to the item table) adds
    rows in a thread-dependent order on the CPU; inside ``deterministic_algorithms(True)`` it repeats, and
    equals the row-by-row sum. Without the setting this test failed in 2 of 5 runs (2 cores, a busy machine):
    it catches a lost setting some of the time; the loop's wiring is checked in test_llm_train.py."""
    threads, before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(2)
    try:
        with deterministic_algorithms(True):
            assert torch.are_deterministic_algorithms_enabled()
            for draw in range(3):
                g = torch.Generator().manual_seed(draw)
                table = torch.randn(100, 8, 256, generator=g, requires_grad=True)  # (n_items + 1, T, d)
                history = torch.randint(1, 50, (64, 10), generator=g)  # (B, L): each item read ~13 times
                upstream = torch.randn(64, 10, 8, 256, generator=g)  # (B, L, T, d)
                grads = []
                for _ in range(5):
                    table.grad = None
                    (table[history] * upstream).sum().backward()
                    grads.append(table.grad.clone())
                assert all(torch.equal(grads[0], other) for other in grads[1:]), f"draw {draw}"
        expected = torch.zeros(100, 8, 256, dtype=torch.float64)  # the slow reference (the last draw)
        for b in range(64):
            for t in range(10):
                expected[history[b, t]] += upstream[b, t].double()
        torch.testing.assert_close(grads[0].double(), expected, rtol=1e-5, atol=1e-5)
    finally:
        torch.set_num_threads(threads)
    assert torch.are_deterministic_algorithms_enabled() == before  # restored
