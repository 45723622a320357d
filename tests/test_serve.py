"""`amfrec serve` in-process (FastAPI's TestClient) over a tiny real AMFRec run and a Popularity run: the
same ranking as `amfrec recommend`, the item routes, JSON 4xx for bad input, 503 when the queue is full."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from amfrec.runs.baseline_run import train_baseline
from amfrec.runs.ranker import Ranker
from amfrec.serve.app import create_app


@pytest.fixture(scope="module")
def ranker(tiny_amfrec_run: Path) -> Ranker:
    return Ranker.load(tiny_amfrec_run)


@pytest.fixture(scope="module")
def client(ranker: Ranker) -> TestClient:
    return TestClient(create_app(ranker), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def item_ids(tiny_prepared: Path) -> list[str]:
    return [json.loads(line)["item_id"] for line in (tiny_prepared / "items.jsonl").open()]


def test_recommend_equals_the_cli_ranking(client: TestClient, ranker: Ranker, item_ids: list[str]) -> None:
    history = item_ids[:3]
    res = client.post("/recommend", json={"history": history, "k": 5})
    assert res.status_code == 200
    body = res.json()
    want = ranker.rank(history, k=5)  # what `amfrec recommend` prints
    assert [it["item_id"] for it in body["items"]] == [r["item_id"] for r in want]
    assert [it["score"] for it in body["items"]] == pytest.approx([r["score"] for r in want], abs=1e-6)
    assert body["model"] == "amfrec" and not set(history) & {it["item_id"] for it in body["items"]}
    for it in body["items"] + body["history"]:
        assert set(it["gate"]) == {"id", "text", "image"} and sum(it["gate"].values()) == pytest.approx(
            1, abs=1e-4
        )
    assert [it["item_id"] for it in body["history"]] == history
    # given candidates: only those, best first; exclude_seen false keeps history items in the default set
    cands = item_ids[5:9]
    res = client.post("/recommend", json={"history": history, "k": 10, "candidates": cands}).json()
    assert sorted(it["item_id"] for it in res["items"]) == sorted(cands)
    res = client.post("/recommend", json={"history": history, "k": 40, "exclude_seen": False}).json()
    assert set(history) <= {it["item_id"] for it in res["items"]}


def test_items_search_detail_health_and_info(client: TestClient, item_ids: list[str], ranker: Ranker) -> None:
    title = ranker.data.titles[1]
    word = title.split()[0]
    page = client.get("/items", params={"query": word.upper(), "per_page": 2}).json()
    assert page["total"] >= 1 and len(page["items"]) <= 2
    assert all(word.lower() in it["title"].lower() for it in page["items"])
    everything = client.get("/items", params={"per_page": 100}).json()
    assert everything["total"] == len(item_ids)
    detail = client.get(f"/items/{item_ids[0]}").json()
    assert detail["item_id"] == item_ids[0] and detail["title"] == title
    assert detail["modalities"] == {"id": True, "text": True, "image": True} and detail["poster_url"] is None
    assert client.get("/health").json()["status"] == "ok"
    info = client.get("/info").json()
    assert info["model"] == "amfrec" and info["items"] == len(item_ids) and "hr@1" in info["metrics"]
    assert info["backbone"]["n_params"] > 0
    page = client.get("/")
    assert page.status_code == 200 and "<title>amfrec" in page.text
    assert client.get("/static/app.js").status_code == 200


BAD_REQUESTS = [
    ("post", "/recommend", {"history": []}, 422, "history"),
    ("post", "/recommend", {"history": ["nope"]}, 422, "history"),
    ("post", "/recommend", {"history": [{"a": 1}]}, 422, "history.0"),
    ("post", "/recommend", {"history": ["1"] * 201}, 422, "history"),
    ("post", "/recommend", {"history": ["1"], "k": 0}, 422, "k"),
    ("post", "/recommend", {"history": ["1"], "k": 101}, 422, "k"),
    ("post", "/recommend", {"history": ["1"], "k": "ten"}, 422, "k"),
    ("post", "/recommend", {"history": ["1"], "candidates": ["zzz"]}, 422, "candidates"),
    ("post", "/recommend", {"history": ["1"], "candidates": []}, 422, "candidates"),
    ("post", "/recommend", {"history": ["1"], "color": "red"}, 422, "color"),
    ("post", "/recommend", {}, 422, "history"),
    ("get", "/items/no-such-item", None, 404, "item_id"),
    ("get", "/items?per_page=0", None, 422, "per_page"),
    ("get", "/items?page=-1", None, 422, "page"),
    ("get", "/posters/1", None, 404, "item_id"),
    ("get", "/no/such/route", None, 404, None),
]


@pytest.mark.parametrize("method, path, body, status, field", BAD_REQUESTS)
def test_bad_requests_are_json_4xx(client: TestClient, method, path, body, status, field) -> None:
    res = client.post(path, json=body) if method == "post" else client.get(path)
    assert res.status_code == status, res.text
    err = res.json()
    assert err["field"] == field and err["error"] and "Traceback" not in res.text


def test_malformed_and_oversized_bodies(client: TestClient) -> None:
    res = client.post("/recommend", content=b"{not json", headers={"content-type": "application/json"})
    assert res.status_code == 422 and res.json()["error"]
    big = json.dumps({"history": ["1"] * 20_000}).encode()
    res = client.post("/recommend", content=big, headers={"content-type": "application/json"})
    assert res.status_code == 413 and res.json()["field"] == "body"


def test_a_full_queue_answers_503_with_retry_after(ranker: Ranker, item_ids: list[str], monkeypatch) -> None:
    client = TestClient(create_app(ranker, max_queue=0, max_batch=1), raise_server_exceptions=False)
    entered, release = threading.Event(), threading.Event()
    original = ranker.rank_batch

    def slow_rank(*args, **kwargs):
        entered.set()
        release.wait(10)
        return original(*args, **kwargs)

    monkeypatch.setattr(ranker, "rank_batch", slow_rank)
    first: dict = {}
    thread = threading.Thread(
        target=lambda: first.update(r=client.post("/recommend", json={"history": item_ids[:2]}))
    )
    thread.start()
    assert entered.wait(10)
    busy = client.post("/recommend", json={"history": item_ids[:2]})
    release.set()
    thread.join(10)
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1" and "busy" in busy.json()["error"]
    assert first["r"].status_code == 200  # the one in flight still answers


def test_a_baseline_run_is_served_too(tiny_prepared: Path, tmp_path: Path, item_ids: list[str]) -> None:
    train_baseline("popularity", tiny_prepared, 1, tmp_path / "pop")
    client = TestClient(create_app(Ranker.load(tmp_path / "pop")), raise_server_exceptions=False)
    body = client.post("/recommend", json={"history": item_ids[:2], "k": 3}).json()
    assert body["model"] == "popularity" and len(body["items"]) == 3
    assert all(it["gate"] is None for it in body["items"])
    scores = [it["score"] for it in body["items"]]
    assert scores == sorted(scores, reverse=True)
