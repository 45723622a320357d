"""`amfrec train`, `evaluate`, `recommend`, `serve`: arguments and commands (part of the command line; the
work is `amfrec.runs` and `amfrec.serve`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from amfrec.baselines import BASELINES
from amfrec.cli.args import _overrides
from amfrec.cli.args import csv_list as _csv
from amfrec.errors import AmfrecError
from amfrec.serve.batcher import MAX_WAIT_MS

MODELS = (*BASELINES, "amfrec")


def cmd_train(a: argparse.Namespace) -> None:
    if a.model == "amfrec":
        from amfrec.runs.amfrec_run import train_amfrec

        if a.features is None:
            raise AmfrecError("--features is required for --model amfrec (build it with `amfrec features`)")
        result = train_amfrec(
            Path(a.data),
            Path(a.features),
            a.config,
            a.seed,
            Path(a.out),
            _overrides(a.set),
            limit=a.limit,
            resume=a.resume,
        )
    else:
        from amfrec.runs.baseline_run import train_baseline

        args = (a.model, Path(a.data), a.seed, Path(a.out), _overrides(a.set))
        result = train_baseline(*args, limit=a.limit, config=a.config, features=a.features)
    if result["test"] is not None:  # (None on the other ranks under torchrun)
        print(_metrics_line(result["test"]))
        print(f"run directory: {a.out}")


def cmd_evaluate(a: argparse.Namespace) -> None:
    from amfrec.runs.rundir import run_info

    if a.protocol in ("full", "full+score"):
        from amfrec.runs.full_ranking import evaluate_full_run

        both = a.protocol == "full+score"
        m, score = evaluate_full_run(Path(a.run), a.split, a.limit, a.corrupt, with_score=both)
        print(_metrics_line(m) + f", recall@10 {m['recall@10']:.4f}, ndcg@20 {m['ndcg@20']:.4f}")
        if score is not None:
            print(_metrics_line(score) + " (candidates)")
        return
    if run_info(a.run)["model"] in BASELINES:
        from amfrec.runs.baseline_run import evaluate_baseline_run

        if a.protocol != "score":
            raise AmfrecError(f"--protocol {a.protocol}: baselines are evaluated by scoring only")
        if a.corrupt:
            raise AmfrecError("--corrupt: AMFRec runs only (baselines are evaluated on their own features)")
        metrics = evaluate_baseline_run(Path(a.run), split=a.split, limit=a.limit)
    else:
        from amfrec.runs.amfrec_run import evaluate_run

        metrics = evaluate_run(
            Path(a.run), split=a.split, protocol=a.protocol, limit=a.limit, corrupt=a.corrupt
        )
    terms = [t for t in ("content", "collab", "full") if t in metrics] if a.protocol == "parts" else [None]
    for t in terms:  # parts: one line per term of the item_token score
        print(_metrics_line(metrics if t is None else {**metrics, **metrics[t], "model": f"amfrec {t}"}))


def cmd_recommend(a: argparse.Namespace) -> None:
    from amfrec.runs.ranker import Ranker

    if (a.history is None) == (a.users is None):
        raise AmfrecError("recommend: give either --history (one list) or --users all|FILE (a batch)")
    if a.users is not None:
        from amfrec.runs.batch_recommend import write_recommendations

        if a.out is None:
            raise AmfrecError("recommend: --users needs --out FILE.jsonl|FILE.parquet")
        n = write_recommendations(Path(a.run), a.users, a.top, Path(a.out))
        print(f"{n} users' top {a.top} -> {a.out}")
        return
    rows = Ranker.load(Path(a.run)).rank(
        _csv(a.history), k=a.top, candidates=_csv(a.candidates) if a.candidates else None
    )
    print(f"{'rank':>4}  {'item id':>8}  {'score':>9}  title  [gate weights]")
    for rank, row in enumerate(rows, 1):
        weights = "  ".join(f"{m}={w:.2f}" for m, w in row.get("gate", {}).items())
        print(f"{rank:>3}. {row['item_id']:>8}  {row['score']:9.3f}  {row['title']}  {weights}")


def cmd_serve(a: argparse.Namespace) -> None:
    from amfrec.serve.app import serve

    serve(Path(a.run), a.host, a.port, a.max_queue, a.max_batch, a.max_wait_ms)


def _metrics_line(m: dict) -> str:
    keys = ["hr@1", "hr@5", "hr@10", "ndcg@10", "mrr", "gen_hr@1", "valid_ratio", "spread"]
    parts = [f"{k} {m[k]:.4f}" for k in keys if k in m]
    return f"{m.get('model', '?')} [{m.get('split', '?')}, n={m.get('n', '?')}]: " + ", ".join(parts)


def cmd_calibrate(a: argparse.Namespace) -> None:
    from amfrec.config.model import AnswerHead
    from amfrec.runs.amfrec_run import load_run
    from amfrec.runs.calibrate import calibrate, write_calibration
    from amfrec.training.distributed import from_env

    model, data, run_cfg = load_run(Path(a.run))
    if model.answer is not AnswerHead.ITEM_TOKEN:
        raise AmfrecError(
            f"{a.run}: calibrate needs the item_token head (this run's answer is {model.answer})"
        )
    chosen = calibrate(model, data, a.examples)  # under torchrun: every rank scores its share of the users
    if not from_env().is_main:
        return
    write_calibration(Path(a.run), model, run_cfg, chosen)
    values = ", ".join(f"model.{k} = {v:+.4f}" for k, v in chosen.items())
    print(
        f"{a.run}: {values}. Its metrics and ranks files are from before: re-run `amfrec evaluate --run "
        f"{a.run} --protocol full+score` and compare with `--protocol score` or `--protocol full`"
    )


def add_run_parsers(sub) -> None:
    """`amfrec train, evaluate, recommend`."""
    t = sub.add_parser("train", help="train a model and evaluate it on the fixed candidates")
    t.add_argument("--model", choices=MODELS, required=True)
    t.add_argument("--data", type=Path, required=True, help="prepared data folder")
    t.add_argument("--features", type=Path, help="feature folder (amfrec, sasrec_content, content_knn)")
    t.add_argument("--config", default=None, help="YAML config or packaged name (default configs/MODEL.yaml)")
    t.add_argument("--seed", type=int, default=1)
    t.add_argument("--out", type=Path, required=True, help="run folder")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override, e.g. train.lr=1e-3")
    t.add_argument("--limit", type=int, default=None, help="evaluate on the first N valid/test examples only")
    t.add_argument("--resume", action="store_true", help="amfrec: continue from RUN's last checkpoint")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="evaluate a trained run again on its fixed candidates")
    e.add_argument("--run", type=Path, required=True)
    e.add_argument("--split", choices=("valid", "test"), default="test")
    parts = (
        "parts: rank by the content term, the collaborative term, both (item_token); full: the catalogue; "
        "full+score: the catalogue and the candidates, from one scoring pass"
    )
    protocols = ("score", "generate", "parts", "full", "full+score")
    e.add_argument("--protocol", choices=protocols, default="score", help=parts)
    e.add_argument("--limit", type=int, default=None, help="first N examples only")
    e.add_argument(
        "--corrupt",
        default=None,
        metavar="MODALITY=HOW",
        help="replace one modality's features at test time: noise | zero | shuffle (e.g. image=noise)",
    )
    e.set_defaults(func=cmd_evaluate)

    c = sub.add_parser(
        "calibrate", help="AMFRec: choose the content similarity and new items' offset on validation"
    )
    c.add_argument("--run", type=Path, required=True)
    c.add_argument(
        "--examples", type=int, default=10000, help="first N validation users (default 10000: all, here)"
    )
    c.set_defaults(func=cmd_calibrate)

    r = sub.add_parser(
        "recommend", help="top items for a history, or for every user into a file, from any run"
    )
    r.add_argument("--run", type=Path, required=True)
    r.add_argument("--history", default=None, help="comma-separated item ids, oldest first")
    r.add_argument("--users", default=None, help="all, or a file of user ids (one per line): a batch")
    r.add_argument(
        "--out", default=None, help="with --users: FILE.jsonl or FILE.parquet (user, items, scores)"
    )
    r.add_argument("--candidates", default=None, help="comma-separated item ids (default: every unseen item)")
    r.add_argument("--top", type=int, default=10)
    r.set_defaults(func=cmd_recommend)

    s = sub.add_parser(
        "serve", help="HTTP API + web page over a trained run (POST /recommend, GET /items, /)"
    )
    s.add_argument("--run", type=Path, required=True, help="run folder (AMFRec or a baseline)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--max-queue", type=int, default=32, help="requests that may wait; the next gets 503")
    s.add_argument("--max-batch", type=int, default=16, help="requests scored in one model call (at most)")
    s.add_argument(
        "--max-wait-ms", type=float, default=MAX_WAIT_MS, help="how long a request waits for a batch"
    )
    s.set_defaults(func=cmd_serve)
