"""Batching. Serving: the same requests ranked in one batch and one at a time give the same answers (float32:
tightly; the auto dtype: within its tolerance), on AMFRec (catalogue and candidate-list paths) and a
baseline; the tensor top-k with exclusion against a slow Python reference; the batcher's gathering.
Evaluation: AMFRec's rows sorted by prompt length in larger batches give the same ranks as unsorted."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from amfrec import evaluate as evaluate_module
from amfrec.data.dataset import PreparedData
from amfrec.evaluate import evaluate, evaluate_ranks
from amfrec.runs.amfrec_run import train_amfrec
from amfrec.runs.baseline_run import train_baseline
from amfrec.runs.ranker import Query, Ranker, stable_topk
from amfrec.runs.scoring import EVAL_BATCH_ITEM_TOKEN, prompt_order
from amfrec.serve.app import create_app
from amfrec.serve.batcher import Batcher


def _amfrec_run(prepared: Path, root: Path, dtype: str, **overrides) -> Path:
    from llm_fixtures import SMALL, make_tiny_amfrec_inputs

    features, config = make_tiny_amfrec_inputs(prepared, root, dtype=dtype)
    train_amfrec(prepared, features, config, 1, root / "run", {**SMALL, **overrides}, limit=4)
    return root / "run"


@pytest.fixture(scope="module")
def f32_ranker(tiny_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Ranker:
    return Ranker.load(_amfrec_run(tiny_prepared, tmp_path_factory.mktemp("f32"), "float32"))


@pytest.fixture(scope="module")
def auto_ranker(tiny_amfrec_run: Path) -> Ranker:
    return Ranker.load(tiny_amfrec_run)


def _queries(ranker: Ranker) -> list[Query]:
    """Catalogue and candidate-list requests of several history lengths, exclusion on and off."""
    ids = [it.item_id for it in ranker.data.items[1:]]
    asks = [
        (ids[:3], 5, None, True),
        (ids[10:11], 10, None, True),
        (ids[4:20], None, None, False),  # every item, history included
        (ids[7:9], 3, ids[20:26], True),
        (ids[1:8], 10, [ids[30], ids[2], ids[30]], True),  # a duplicate is ranked twice, as given
        (ids[::3], 7, None, True),
    ]
    return [ranker.query(h, k, c, e) for h, k, c, e in asks]


def _tolerance(ranker: Ranker) -> float:
    """Scores' tolerance between batched (left-padded) and alone prompts: 1e-5 in float32; for a
    lower-precision backbone 8 units in the last place of the largest score in its dtype."""
    dtype = next(ranker.model.parameters()).dtype if ranker.is_amfrec else torch.float32
    if dtype == torch.float32:
        return 1e-5
    scores = ranker.model.score(ranker._histories(_queries(ranker)[:1]), torch.arange(1, 11)[None])
    return 8 * torch.finfo(dtype).eps * max(1.0, float(scores.abs().max()))


def assert_same_answers(batched: list[list[dict]], alone: list[list[dict]], tol: float) -> None:
    """Every item's score within tol of its score alone; where the order differs, the two scores at that
    position are within 2 tol (near-equal items swapped); an item kept on one side only scores within 2 tol
    of the last kept one (a tie at the cut)."""
    for got, want in zip(batched, alone, strict=True):
        assert len(got) == len(want)
        alone_score = {r["item_id"]: r["score"] for r in want}
        for g, w in zip(got, want, strict=True):
            if g["item_id"] in alone_score:
                assert g["score"] == pytest.approx(alone_score[g["item_id"]], abs=tol)
            else:
                assert g["score"] == pytest.approx(want[-1]["score"], abs=2 * tol)
            if g["item_id"] != w["item_id"]:
                assert g["score"] == pytest.approx(w["score"], abs=2 * tol)


def test_batched_equals_alone_float32(f32_ranker: Ranker) -> None:
    queries = _queries(f32_ranker)
    batched = f32_ranker.rank_batch(queries)
    alone = [f32_ranker.rank_batch([q])[0] for q in queries]
    for got, want in zip(batched, alone, strict=True):
        assert [r["item_id"] for r in got] == [r["item_id"] for r in want]  # the same ranking, exactly
        assert [r["score"] for r in got] == pytest.approx([r["score"] for r in want], abs=1e-5)
        assert [r["gate"] for r in got] == [r["gate"] for r in want]
    assert [len(rows) for rows in batched] == [5, 10, f32_ranker.data.n_items, 3, 3, 7]


def test_batched_equals_alone_in_the_auto_dtype(auto_ranker: Ranker) -> None:
    queries = _queries(auto_ranker)
    batched = auto_ranker.rank_batch(queries)
    alone = [auto_ranker.rank_batch([q])[0] for q in queries]
    assert_same_answers(batched, alone, _tolerance(auto_ranker))


def test_candidates_in_the_prompt_are_batched_by_count(tiny_prepared: Path, tmp_path: Path) -> None:
    """model.prompt_candidates: each row's list is in its prompt; rows with as many candidates share one
    call."""
    ranker = Ranker.load(_amfrec_run(tiny_prepared, tmp_path, "float32", **{"model.prompt_candidates": True}))
    assert not ranker.per_item
    ids = [it.item_id for it in ranker.data.items[1:]]
    queries = [ranker.query(ids[i : i + 2], 4, ids[10 + i : 16 + i]) for i in range(3)]
    queries.append(ranker.query(ids[:2], 4, ids[20:23]))
    calls: list[tuple] = []
    score = ranker.model.score
    ranker.model.score = lambda h, c: calls.append(tuple(c.shape)) or score(h, c)
    batched = ranker.rank_batch(queries)
    assert sorted(calls) == [(1, 3), (3, 6)]
    del ranker.model.score
    alone = [ranker.rank_batch([q])[0] for q in queries]
    assert [[r["item_id"] for r in rows] for rows in batched] == [
        [r["item_id"] for r in rows] for rows in alone
    ]
    for got, want in zip(batched, alone, strict=True):
        assert [r["score"] for r in got] == pytest.approx([r["score"] for r in want], abs=1e-5)


@pytest.fixture(scope="module")
def sasrec_ranker(tiny_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Ranker:
    out = tmp_path_factory.mktemp("sasrec") / "run"
    train_baseline("sasrec", tiny_prepared, 1, out, {"max_epochs": 1, "hidden": 16, "num_threads": 1})
    return Ranker.load(out)


def test_batched_equals_alone_on_a_baseline(sasrec_ranker: Ranker) -> None:
    queries = _queries(sasrec_ranker)
    batched = sasrec_ranker.rank_batch(queries)
    alone = [sasrec_ranker.rank_batch([q])[0] for q in queries]
    for got, want in zip(batched, alone, strict=True):
        assert [r["item_id"] for r in got] == [r["item_id"] for r in want]
        assert [r["score"] for r in got] == pytest.approx([r["score"] for r in want], abs=1e-5)


def _slow_top(scores: list[float], items: list[int], k: int | None) -> list[tuple[int, float]]:
    """The reference: sort (item, score) pairs by score descending, ties by list position."""
    order = sorted(range(len(items)), key=lambda j: (-scores[j], j))
    return [(items[j], scores[j]) for j in order][: k or len(items)]


@pytest.mark.parametrize("name", ["sasrec", "f32"])
def test_top_k_with_exclusion_against_a_slow_reference(name: str, sasrec_ranker, f32_ranker) -> None:
    ranker = sasrec_ranker if name == "sasrec" else f32_ranker
    n = ranker.data.n_items
    for q in _queries(ranker):
        hist = ranker._histories([q])  # (1, L)
        items = (
            list(q.candidates)
            if q.candidates
            else [i for i in range(1, n + 1) if not (q.exclude_seen and i in q.seen)]
        )
        scores = ranker.model.score(hist, torch.tensor([items])).float()[0].tolist()
        want = _slow_top(scores, items, q.k)
        got = ranker.rank_batch([q])[0]
        assert [r["item_id"] for r in got] == [ranker.data.items[i].item_id for i, _ in want]
        assert [r["score"] for r in got] == pytest.approx([s for _, s in want], abs=1e-5)


def test_stable_topk_breaks_ties_by_position() -> None:
    g = torch.Generator().manual_seed(0)
    values = torch.randint(0, 4, (6, 30), generator=g).float()  # many ties
    values[0, :5] = float("-inf")
    values[1, 3] = float("nan")
    for k in (1, 7, 30):
        top_v, top_p = stable_topk(values, k)
        for row in range(6):
            vals = [float("-inf") if v != v else v for v in values[row].tolist()]
            want = _slow_top(vals, list(range(30)), k)
            assert top_p[row].tolist() == [j for j, _ in want]
            assert top_v[row].tolist() == [v for _, v in want]
    with pytest.raises(ValueError, match="k must be"):
        stable_topk(values, 31)


def test_the_batcher_gathers_concurrent_items_into_one_call() -> None:
    calls: list[list[int]] = []

    def fn(items: list[int]) -> list[int]:
        calls.append(list(items))
        if -1 in items:
            raise RuntimeError("bad item")
        return [2 * i for i in items]

    batcher = Batcher(fn, max_batch=3, max_wait_ms=300)
    futures = [batcher.submit(i) for i in range(5)]
    assert [f.result(10) for f in futures] == [0, 2, 4, 6, 8]
    assert calls == [[0, 1, 2], [3, 4]]  # at most max_batch; the rest waited at most max_wait_ms
    failing = [batcher.submit(i) for i in (7, -1)]
    for f in failing:
        with pytest.raises(RuntimeError, match="bad item"):
            f.result(10)
    assert batcher.submit(5).result(10) == 10  # the worker lives on
    batcher.close()
    with pytest.raises(ValueError, match="max_batch"):
        Batcher(fn, max_batch=0)


def test_without_its_own_thread_the_batcher_runs_in_the_caller_until_closed() -> None:
    """`thread=False` (the server: the model in the main thread): nothing is answered until someone runs
    `run()`; that thread makes the calls; `close()` ends `run()` after the queued items."""
    threads: list[str] = []

    def fn(items: list[int]) -> list[int]:
        threads.append(threading.current_thread().name)
        return [i + 1 for i in items]

    batcher = Batcher(fn, max_batch=4, max_wait_ms=50, thread=False)
    futures = [batcher.submit(i) for i in range(3)]
    time.sleep(0.1)
    assert not any(f.done() for f in futures)  # no loop running yet
    runner = threading.Thread(target=batcher.run, name="caller")
    runner.start()
    assert [f.result(10) for f in futures] == [1, 2, 3]
    batcher.close()
    runner.join(10)
    assert not runner.is_alive() and set(threads) == {"caller"} and batcher.busy_s > 0
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(9)


def test_a_lone_item_does_not_wait_when_nothing_else_is_in_flight() -> None:
    batcher = Batcher(lambda items: items, max_batch=4, max_wait_ms=1000, in_flight=lambda: 1)
    t0 = time.monotonic()
    assert batcher.submit(3).result(10) == 3
    assert time.monotonic() - t0 < 0.5  # not the 1 s wait
    batcher.close()


def test_after_a_larger_call_the_batcher_waits_for_as_many_items() -> None:
    """Closed-loop clients send again right after their answers: after a call of n items the next one gathers
    (for at most max_wait_ms) until it holds n again, even when fewer are in flight yet; a lone item after a
    lone call does not wait."""
    calls: list[list[int]] = []
    futures: list = []

    def fn(items: list[int]) -> list[int]:
        calls.append(list(items))
        return items

    def submit(i: int):
        futures.append(batcher.submit(i))
        return futures[-1]

    batcher = Batcher(fn, max_batch=8, max_wait_ms=400, in_flight=lambda: sum(not f.done() for f in futures),
                      thread=False)  # fmt: skip
    burst = [submit(i) for i in range(3)]
    runner = threading.Thread(target=batcher.run, daemon=True)  # daemon: a failed assert must not hang
    runner.start()
    assert [f.result(10) for f in burst] == [0, 1, 2]
    early = submit(10)  # 1 in flight, but the last call held 3: wait for more
    time.sleep(0.1)
    late = submit(11)
    assert (early.result(10), late.result(10)) == (10, 11) and calls[1] == [10, 11]
    t0 = time.monotonic()
    assert submit(12).result(10) == 12  # the last call held 2: waits the 400 ms out, then goes alone
    assert time.monotonic() - t0 > 0.3
    t0 = time.monotonic()
    assert submit(13).result(10) == 13  # the last call held 1: no wait
    assert time.monotonic() - t0 < 0.3
    batcher.close()
    runner.join(10)
    assert calls == [[0, 1, 2], [10, 11], [12], [13]]


def test_concurrent_http_requests_share_one_model_call(f32_ranker: Ranker, monkeypatch) -> None:
    """While one request is scored, three more arrive; they go together in the next model call, and each
    answer equals the request ranked alone."""
    app = create_app(f32_ranker, max_queue=4, max_batch=4, max_wait_ms=5)
    client = TestClient(app, raise_server_exceptions=False)
    ids = [it.item_id for it in f32_ranker.data.items[1:]]
    bodies = [{"history": ids[i : i + 3], "k": 5} for i in range(3)] + [
        {"history": ids[:2], "k": 3, "candidates": ids[10:15]}
    ]
    sizes, entered, release = [], threading.Event(), threading.Event()
    original = f32_ranker.rank_batch

    def blocking(queries):
        sizes.append(len(queries))
        entered.set()
        release.wait(30)
        return original(queries)

    monkeypatch.setattr(f32_ranker, "rank_batch", blocking)
    answers: dict[int, dict] = {}

    def post(j: int) -> None:
        answers[j] = client.post("/recommend", json=bodies[j]).json()

    threads = [threading.Thread(target=post, args=(j,)) for j in range(4)]
    threads[0].start()
    assert entered.wait(30)
    for t in threads[1:]:
        t.start()
    deadline = time.monotonic() + 30
    while app.state.batcher._queue.qsize() < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    release.set()
    for t in threads:
        t.join(60)
    assert sizes == [1, 3]
    assert client.get("/health").json()["model_calls"] == 2
    monkeypatch.undo()
    for j, body in enumerate(bodies):
        want = f32_ranker.rank(body["history"], body["k"], body.get("candidates"))
        assert [it["item_id"] for it in answers[j]["items"]] == [r["item_id"] for r in want]
        assert [it["score"] for it in answers[j]["items"]] == pytest.approx(
            [r["score"] for r in want], abs=1e-5
        )
    app.state.batcher.close()


def test_sorted_evaluation_gives_the_unsorted_ranks(f32_ranker: Ranker, monkeypatch) -> None:
    model, split = f32_ranker.model, f32_ranker.data.test
    order = prompt_order(model, split)
    # each row's real prompt length in tokens, one prompt at a time (no padding)
    rows = [[i for i in row if i] for row in split.history.tolist()]
    build = model.prompt.build
    lengths = [int(build([[model.titles[i] for i in r]], [[]]).attention_mask.sum()) for r in rows]
    assert [lengths[i] for i in order.tolist()] == sorted(lengths) and order.tolist() != sorted(
        order.tolist()
    )
    bars: list[dict] = []

    class Bar:  # records what the evaluator tells its progress bar
        def __init__(self, **kwargs) -> None:
            bars.append({**kwargs, "updates": []})

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            pass

        def update(self, n: int) -> None:
            bars[-1]["updates"].append(n)

    monkeypatch.setattr(evaluate_module, "tqdm", Bar)
    unsorted = evaluate_ranks(model, split, batch_size=4)
    fast = evaluate(model, split, EVAL_BATCH_ITEM_TOKEN, order=order, return_ranks=True)["ranks"]
    assert torch.equal(fast, unsorted)
    n = len(split)
    assert bars[0]["unit"] == "user" and bars[0]["total"] == n and sum(bars[0]["updates"]) == n
    assert bars[1]["updates"] == [
        min(EVAL_BATCH_ITEM_TOKEN, n - s) for s in range(0, n, EVAL_BATCH_ITEM_TOKEN)
    ]
    with pytest.raises(ValueError, match="permutation"):
        evaluate_ranks(model, split, order=torch.zeros(n, dtype=torch.long))


def test_the_order_counts_only_the_items_the_prompt_reads(f32_ranker: Ranker, monkeypatch) -> None:
    """Data prepared with a longer history than the prompt reads: the rows are sorted by the prompt that is
    built (its last max_len items), not by the whole stored history."""
    model, split = f32_ranker.model, f32_ranker.data.test
    monkeypatch.setattr(model, "max_len", 2)
    rows = [[i for i in row if i][-2:] for row in split.history.tolist()]
    build = model.prompt.build
    lengths = [int(build([[model.titles[i] for i in r]], [[]]).attention_mask.sum()) for r in rows]
    order = prompt_order(model, split).tolist()
    assert [lengths[i] for i in order] == sorted(lengths)
    whole = [int(build([[model.titles[i] for i in row if i]], [[]]).attention_mask.sum()) for row in
             split.history.tolist()]  # fmt: skip
    assert [whole[i] for i in order] != sorted(whole)  # the stored history would sort them otherwise


def test_an_order_puts_ranks_back_in_place(tiny_prepared: Path) -> None:
    """A model whose score depends on the row's own data only: any order gives the same ranks."""
    data = PreparedData.load(tiny_prepared)

    class ByIndex:
        name = "by_index"

        def score(self, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
            return (candidates * 7 + history[:, -1:]) % 11 * 1.0  # (B, C)

    reverse = torch.arange(len(data.valid) - 1, -1, -1)
    assert torch.equal(
        evaluate_ranks(ByIndex(), data.valid, 5, order=reverse), evaluate_ranks(ByIndex(), data.valid, 3)
    )
