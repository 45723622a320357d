"""A bounded load test of `amfrec serve` on loopback (tiny real AMFRec run): N concurrent clients, a fixed
number of requests each. Prints requests/s and p50/p99 latency; asserts zero 5xx and zero dropped requests.
Only 127.0.0.1, bounded in count (8 x 20) and time (60 s per request)."""

from __future__ import annotations

import json
from pathlib import Path

from server import running_server

from amfrec.bench.load import load_test

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


def test_bench_serve_prints_the_floor_and_one_row_per_client_count(tiny_amfrec_run: Path, capsys) -> None:
    from amfrec.cli.main import main

    argv = ["bench", "serve", "--run", str(tiny_amfrec_run), "--clients", "1,2", "--requests", "3"]
    assert main([*argv, "--repeats", "1", "--max-wait-ms", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("CPU flags: ")
    assert lines[1].startswith(f"run: {tiny_amfrec_run} (amfrec, ") and " dtype " in lines[1]
    assert lines[2].startswith("in-process forward of one request (floor): ") and lines[2].count(" ms") == 1
    header, rule, *rows = lines[4:]
    assert header.split("|")[1:-1] == [
        " clients x requests ",
        " requests/s ",
        " p50 ms ",
        " p99 ms ",
        " mean batch ",
        " model busy ",
        " statuses ",
    ]
    assert [row.split("|")[1].strip() for row in rows] == ["1 x 3", "2 x 3"]
    assert [row.split("|")[7].strip() for row in rows] == ["{200: 3}", "{200: 6}"]  # every request answered
    assert all(0 < float(row.split("|")[6].strip().rstrip("%")) <= 100 for row in rows)  # the model's share


def test_bench_serve_refuses_bad_counts(tiny_amfrec_run: Path, capsys) -> None:
    from amfrec.cli.main import main

    assert main(["bench", "serve", "--run", str(tiny_amfrec_run), "--clients", "0"]) == 2
    assert "--clients" in capsys.readouterr().err
