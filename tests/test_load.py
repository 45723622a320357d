"""A bounded load test of `amfrec serve` on loopback (tiny real AMFRec run): N concurrent clients, a fixed
number of requests each. Prints requests/s and p50/p99 latency; asserts zero 5xx and zero dropped requests.
Only 127.0.0.1, bounded in count (8 x 20) and time (httpx timeouts)."""

from __future__ import annotations

import json
import statistics
import threading
import time
from pathlib import Path

import httpx
import pytest
from llm_fixtures import SMALL, make_tiny_amfrec_inputs
from server import running_server

from amfrec.runs.amfrec_run import train_amfrec

CLIENTS, REQUESTS = 8, 20


@pytest.fixture(scope="module")
def tiny_run(tiny_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("load")
    features, config = make_tiny_amfrec_inputs(tiny_prepared, root)
    train_amfrec(tiny_prepared, features, config, 1, root / "run", SMALL, limit=4)
    return root / "run"


def test_concurrent_clients_get_every_answer(tiny_run: Path, tiny_prepared: Path) -> None:
    ids = [json.loads(line)["item_id"] for line in (tiny_prepared / "items.jsonl").open()]
    statuses: list[int] = []
    latencies: list[float] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        with httpx.Client(timeout=30.0) as http:
            for r in range(REQUESTS):
                body = {"history": ids[(c + r) % 10 : (c + r) % 10 + 3], "k": 10}
                t0 = time.perf_counter()
                res = http.post(f"{url}/recommend", json=body)
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    statuses.append(res.status_code)

    with running_server(tiny_run, max_queue=CLIENTS) as url:
        threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        wall = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=100)
    print(f"\nload: {CLIENTS} clients x {REQUESTS} requests: {len(statuses) / wall:.1f} requests/s, "
          f"p50 {1000 * q[49]:.1f} ms, p99 {1000 * q[98]:.1f} ms")  # fmt: skip
    assert len(statuses) == CLIENTS * REQUESTS  # nothing dropped
    assert all(s == 200 for s in statuses), sorted(set(statuses))  # in particular no 5xx, no 503
