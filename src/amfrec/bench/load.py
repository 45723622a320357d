"""A bounded load test of a running `amfrec serve`: `clients` threads, `requests` POST /recommend each, on
the given base URL (meant for 127.0.0.1). Returns the counts and latencies; prints nothing."""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter


def load_test(
    url: str, histories: list[list[str]], clients: int = 8, requests: int = 20, k: int = 10
) -> dict:
    """-> {"requests", "statuses" (status -> count), "requests_per_s", "p50_ms", "p99_ms", "wall_s"}.

    Client c's r-th request sends histories[(c + r) % len(histories)]; every request has a 60 s timeout.
    """
    import httpx

    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        with httpx.Client(timeout=60.0) as http:
            for r in range(requests):
                body = {"history": histories[(c + r) % len(histories)], "k": k}
                t0 = time.perf_counter()
                try:
                    status = http.post(f"{url}/recommend", json=body).status_code
                except httpx.TransportError:
                    status = 0  # dropped: no answer
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    statuses[status] += 1

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [latencies[0]] * 99
    return {
        "requests": sum(statuses.values()),
        "statuses": dict(statuses),
        "requests_per_s": sum(statuses.values()) / wall,
        "p50_ms": 1000 * q[49],
        "p99_ms": 1000 * q[98],
        "wall_s": wall,
    }
