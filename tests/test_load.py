"""A bounded load test of `amfrec serve` on loopback (tiny real AMFRec run): N concurrent clients, a fixed
number of requests each. Prints requests/s and p50/p99 latency; asserts zero 5xx and zero dropped requests.
Only 127.0.0.1, bounded in count (8 x 20) and time (60 s per request)."""

from __future__ import annotations

import json
from pathlib import Path

from server import running_server

from amfrec.serve.load import load_test

CLIENTS, REQUESTS = 8, 20


def test_concurrent_clients_get_every_answer(tiny_amfrec_run: Path, tiny_prepared: Path) -> None:
    ids = [json.loads(line)["item_id"] for line in (tiny_prepared / "items.jsonl").open()]
    histories = [ids[i : i + 3] for i in range(10)]
    with running_server(tiny_amfrec_run, max_queue=CLIENTS) as url:
        result = load_test(url, histories, clients=CLIENTS, requests=REQUESTS)
    print(f"\nload: {CLIENTS} clients x {REQUESTS} requests: {result['requests_per_s']:.1f} requests/s, "
          f"p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms")  # fmt: skip
    assert result["requests"] == CLIENTS * REQUESTS
    assert result["statuses"] == {200: CLIENTS * REQUESTS}  # no 5xx, no 503, nothing dropped (status 0)
