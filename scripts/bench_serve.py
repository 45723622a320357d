"""Load-test `amfrec serve` over a trained run on loopback and print one table row.

    python scripts/bench_serve.py --run quickstart/seed1/amfrec --clients 8 --requests 20

Histories are drawn from the run's own test split (the last 3 items of the first users' histories).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the shared server starter

from server import running_server  # noqa: E402

from amfrec.data.dataset import PreparedData  # noqa: E402
from amfrec.hardware import cpu_flags  # noqa: E402
from amfrec.runs.rundir import run_info  # noqa: E402
from amfrec.serve.load import load_test  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=20)
    a = p.parse_args()
    data = PreparedData.load(run_info(a.run)["data"])
    histories = [
        [data.items[i].item_id for i in row[row > 0][-3:].tolist()] for row in data.test.history[:50]
    ]
    with running_server(a.run, max_queue=a.clients, timeout=600) as url:
        r = load_test(url, histories, clients=a.clients, requests=a.requests)
    print(f"CPU flags: {cpu_flags()}")
    print("| run | clients x requests | requests/s | p50 ms | p99 ms | statuses |")
    print("|---|---|---:|---:|---:|---|")
    print(f"| {a.run} | {a.clients} x {a.requests} | {r['requests_per_s']:.1f} | {r['p50_ms']:.0f} | "
          f"{r['p99_ms']:.0f} | {r['statuses']} |")  # fmt: skip


if __name__ == "__main__":
    main()
