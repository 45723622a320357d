"""What this machine does fast: the dtype chosen by measurement and the cores the process may use.

CPUs differ: with AVX-512-BF16/AMX bfloat16 matmuls run several times faster than float32; on an AVX2-only
CPU they fall back to scalar code and run ~70x slower. So ``dtype: auto`` never guesses from flags: on the
CPU it times one small matmul per dtype (``probe_matmul_gflops``, ~0.1 s, cached per process) and picks
bfloat16 only where it is measured faster; on CUDA it picks bfloat16 where the GPU supports it. The two dtypes
take turns for at least ``PROBE_SECONDS``: on a busy machine a scheduler stall (a few ms) then slows some
rounds of both, not every round of one (five repeats of one dtype in a row once read bfloat16 at 4 GFLOP/s
against float32's 158 on a CPU where it is the faster one).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable, Iterator

import torch

log = logging.getLogger(__name__)

PROBE_N = 256  # (256, 256) @ (256, 256): 34 MFLOP, ~25 ms even at 1 GFLOP/s
PROBE_REPEATS = 5
PROBE_SECONDS = 0.1  # the dtypes alternate at least this long (several scheduler slices) ...
PROBE_MAX_ROUNDS = 200  # ... and at most this many rounds each


def usable_cores() -> int:
    """The number of CPUs this process may run on (its affinity mask), not the machine's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # platforms without sched_getaffinity
        return os.cpu_count() or 1


def use_all_cores() -> int:
    """Set torch's intra-op threads to the usable cores (never more; under torchrun, shared evenly by the
    processes of this machine); return the count.

    Called once by the command line at start-up: the library itself never changes the global setting.
    """
    n = max(1, usable_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def matmul_gflops(
    dtype: torch.dtype, n: int = PROBE_N, repeats: int = PROBE_REPEATS, device: str = "cpu"
) -> float:
    """Best-of-``repeats`` GFLOP/s of an (n, n) @ (n, n) product in ``dtype`` on ``device``."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b  # warm-up (kernel selection, page faults)
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / max(best, 1e-9) / 1e9


def alternating_best(
    runs: dict[str, Callable[[], object]],
    min_seconds: float,
    max_rounds: int,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Each run's shortest time in seconds, the runs taking turns round after round until `min_seconds` have
    passed (at least one round, at most `max_rounds`)."""
    best = dict.fromkeys(runs, float("inf"))
    start = clock()
    for _ in range(max_rounds):
        for name, run in runs.items():
            t0 = clock()
            run()
            best[name] = min(best[name], clock() - t0)
        if clock() - start >= min_seconds:
            break
    return best


@functools.lru_cache(maxsize=1)
def probe_matmul_gflops() -> dict[str, float]:
    """{"float32": GFLOP/s, "bfloat16": GFLOP/s} on the CPU, measured once per process, the dtypes in turn
    (``alternating_best``)."""
    n = PROBE_N
    pairs = {name: (torch.randn(n, n).to(dt), torch.randn(n, n).to(dt))
             for name, dt in (("float32", torch.float32), ("bfloat16", torch.bfloat16))}  # fmt: skip
    for a, b in pairs.values():
        a @ b  # warm-up (kernel selection, page faults)
    runs = {name: functools.partial(torch.matmul, a, b) for name, (a, b) in pairs.items()}
    best = alternating_best(runs, PROBE_SECONDS, PROBE_MAX_ROUNDS)
    return {name: 2 * n**3 / max(t, 1e-9) / 1e9 for name, t in best.items()}


def cpu_flags() -> str:
    """The CPU's SIMD flags that decide bfloat16 speed (avx2, avx512*, amx*), or "" when unknown."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return ""
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    keep = sorted(f for f in flags if f in ("avx2", "fma") or f.startswith(("avx512", "amx")))
    return " ".join(keep)


def resolve_dtype(requested: str, device: str | torch.device = "cpu") -> tuple[str, str]:
    """The dtype to use for ``requested`` ("auto", "float32" or "bfloat16") on ``device``, and why.

    "auto": CUDA -> bfloat16 where supported, else float32; CPU -> bfloat16 only when the probe measures it
    faster than float32. An explicit dtype is always respected; an explicit bfloat16 on a CPU where it is
    measured slower logs a warning with both numbers. Returns (dtype name, reason).
    """
    device = torch.device(device)
    if requested not in ("auto", "float32", "bfloat16"):
        raise ValueError(f"dtype must be one of 'auto', 'float32', 'bfloat16', got {requested!r}")
    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        if requested == "auto":
            choice = "bfloat16" if bf16 else "float32"
            return choice, f"dtype auto -> {choice}: CUDA {'supports' if bf16 else 'lacks'} bfloat16"
        return requested, f"dtype {requested} (explicit)"
    if requested == "float32":
        return requested, "dtype float32 (explicit)"
    g = probe_matmul_gflops()
    numbers = f"bf16 matmul {g['bfloat16']:.0f} GFLOP/s vs fp32 {g['float32']:.0f} GFLOP/s"
    faster = g["bfloat16"] > g["float32"]
    if requested == "auto":
        choice = "bfloat16" if faster else "float32"
        return choice, f"dtype auto -> {choice}: {numbers}"
    if not faster:
        log.warning("dtype bfloat16 (explicit) is slower than float32 on this CPU: %s", numbers)
    return requested, f"dtype bfloat16 (explicit): {numbers}"


_logged: set[tuple[str, str]] = set()


def pick_dtype(requested: str, device: str | torch.device = "cpu") -> str:
    """``resolve_dtype``'s choice; the reason is logged once per process for each (requested, device)."""
    choice, reason = resolve_dtype(requested, device)
    key = (requested, str(device))
    if key not in _logged:
        _logged.add(key)
        log.info(reason)
    return choice


def sync(device: str | torch.device) -> None:
    """Wait for the device's queued work (CUDA); a no-op on the CPU. For timing."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool, device: str | torch.device = "cpu") -> Iterator[None]:
    """While the block runs, torch picks deterministic kernels (``torch.use_deterministic_algorithms``) when
    ``enabled``; the process's earlier setting is restored after it. Ops without a deterministic kernel warn
    rather than fail. On CUDA the cuBLAS workspace must be fixed in the environment before the process
    starts (CUBLAS_WORKSPACE_CONFIG=:4096:8); a missing one is logged, as the run is then not repeatable."""
    before = torch.are_deterministic_algorithms_enabled()
    before_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    if enabled and torch.device(device).type == "cuda" and "CUBLAS_WORKSPACE_CONFIG" not in os.environ:
        log.warning("train.deterministic: set CUBLAS_WORKSPACE_CONFIG=:4096:8 for repeatable CUDA matmuls")
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=before_warn)
