"""`amfrec bench serve --run RUN`: what one request costs in-process (the floor) against what clients get
from `amfrec serve` over loopback, in one table.

- The floor: the run loaded in this process; the median over `repeats` (after one warm-up) of
  `Ranker.rank_batch` on one typical request alone (a test user's whole history, the catalogue ranked, top
  k): the model's forward plus the top-k, no HTTP, no queueing, in the main thread (where the server scores
  too, see `amfrec.serve.batcher`).
- The load: `amfrec serve` started as a child process on a free 127.0.0.1 port (`running_server`), warmed up,
  then `amfrec.bench.load.load_test` with each client count in turn (same histories: the first 50 test
  users'); the server's /health counters give the mean batch size and the share of the wall time the
  model was computing ("model busy": near 100%, the server is compute-bound).
"""

from __future__ import annotations

import contextlib
import gc
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from amfrec.bench.load import load_test
from amfrec.errors import AmfrecError
from amfrec.hardware import cpu_flags
from amfrec.runs.ranker import Ranker
from amfrec.serve.batcher import MAX_WAIT_MS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(
    run: Path,
    max_queue: int = 32,
    timeout: float = 120.0,
    max_batch: int = 16,
    max_wait_ms: float = MAX_WAIT_MS,
) -> Iterator[str]:
    """Start `amfrec serve --run RUN` on 127.0.0.1 in a child process; yield its base URL once /health
    answers; stop it after. Raises RuntimeError when it exits early, TimeoutError after `timeout` s."""
    import httpx

    port = free_port()
    argv = [sys.executable, "-m", "amfrec.cli", "-q", "serve", "--run", str(run), "--port", str(port),
            "--max-queue", str(max_queue), "--max-batch", str(max_batch),
            "--max-wait-ms", str(max_wait_ms)]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                output = proc.stdout.read().decode() if proc.stdout else ""
                raise RuntimeError(f"amfrec serve exited with {proc.returncode}: {output}")
            try:
                if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("amfrec serve did not answer /health in time")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def typical_histories(ranker: Ranker, n: int = 50) -> list[list[str]]:
    """The whole (<= max_len) histories of the first n test users, as item ids, oldest first."""
    rows = ranker.data.test.history[:n]  # (n, L) left-padded
    return [[ranker.data.items[i].item_id for i in row[row > 0].tolist()] for row in rows]


def floor_ms(ranker: Ranker, history: list[str], k: int = 10, repeats: int = 5) -> float:
    """Median milliseconds of ranking one request alone in-process (after one warm-up call)."""
    query = ranker.query(history, k)
    ranker.rank_batch([query])
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ranker.rank_batch([query])
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def _model_dtype(ranker: Ranker) -> str:
    params = next(iter(getattr(ranker.model, "parameters", lambda: iter(()))()), None)
    return str(params.dtype).removeprefix("torch.") if params is not None else "float32"


def bench_serve(
    run: Path,
    clients: list[int] | tuple[int, ...] = (1, 8),
    requests: int = 20,
    max_batch: int = 16,
    max_wait_ms: float = MAX_WAIT_MS,
    k: int = 10,
    repeats: int = 5,
) -> str:
    """The floor and the loopback load for each client count (see the module doc) -> a markdown table."""
    import httpx

    if not clients or min(clients) < 1 or requests < 1 or repeats < 1:
        raise AmfrecError("bench serve: --clients, --requests and --repeats must be >= 1")
    ranker = Ranker.load(run)
    histories = typical_histories(ranker)
    typical = sorted(histories, key=len)[len(histories) // 2]  # the median history length
    floor = floor_ms(ranker, typical, k, repeats)
    model, n_items, dtype = ranker.info["model"], ranker.data.n_items, _model_dtype(ranker)
    del ranker  # the server loads its own copy
    gc.collect()
    lines = [
        "| clients x requests | requests/s | p50 ms | p99 ms | mean batch | model busy | statuses |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    with running_server(run, max_queue=max(clients), timeout=600, max_batch=max_batch,
                        max_wait_ms=max_wait_ms) as url:  # fmt: skip
        info = httpx.get(f"{url}/info", timeout=10).json()
        for history in histories[:2]:  # warm-up: the first requests build caches
            httpx.post(f"{url}/recommend", json={"history": history, "k": k}, timeout=600)
        for c in clients:
            before = httpx.get(f"{url}/health", timeout=10).json()
            r = load_test(url, histories, clients=c, requests=requests, k=k)
            after = httpx.get(f"{url}/health", timeout=10).json()
            calls = max(after["model_calls"] - before["model_calls"], 1)
            batch = (after["answered"] - before["answered"]) / calls
            busy = (after["model_busy_s"] - before["model_busy_s"]) / r["wall_s"]
            lines.append(f"| {c} x {requests} | {r['requests_per_s']:.1f} | {r['p50_ms']:.1f} | "
                         f"{r['p99_ms']:.1f} | {batch:.1f} | {busy:.0%} | {r['statuses']} |")  # fmt: skip
    server_dtype = info.get("dtype", dtype)
    head = [
        f"CPU flags: {cpu_flags() or 'unknown'}",
        f"run: {run} ({model}, {n_items} items); dtype {server_dtype} (server)"
        + ("" if server_dtype == dtype else f", {dtype} (in-process floor)")
        + f"; torch threads {torch.get_num_threads()}; batches <= {max_batch}, wait <= {max_wait_ms:g} ms",
        f"in-process forward of one request (floor): {floor:.1f} ms ({len(typical)}-item history, top {k} of "
        f"the catalogue, median of {repeats})",
        "",
    ]
    return "\n".join(head + lines)
