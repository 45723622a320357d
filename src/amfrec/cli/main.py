"""Command line: `amfrec <command>`. The only place that reads argv; everything else takes arguments."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from amfrec import __version__
from amfrec.baselines import BASELINES
from amfrec.cli.args import csv_list as _csv
from amfrec.cli.args import int_list as _ints
from amfrec.cli.bench import add_bench_parser
from amfrec.cli.compare import add_compare_parser
from amfrec.cli.data import add_import_parser
from amfrec.cli.items import add_items_parser
from amfrec.cli.scale import add_bench_scale_parser
from amfrec.cli.tune import add_tune_parser
from amfrec.errors import AmfrecError
from amfrec.serve.batcher import MAX_WAIT_MS

log = logging.getLogger("amfrec")

MODELS = (*BASELINES, "amfrec")


def _overrides(pairs: list[str] | None) -> dict[str, object]:
    """`--set train.max_steps=8` pairs -> {"train.max_steps": 8} (values parsed as YAML)."""
    from amfrec.io import parse_overrides

    return parse_overrides(pairs or [])


# ---------------------------------------------------------------- commands


def cmd_data_prepare(a: argparse.Namespace) -> None:
    from amfrec.data.prepare import prepare

    kw = {} if a.cold_threshold is None else {"cold_threshold": a.cold_threshold}
    kw.update(kcore=a.kcore, new_items=a.new_items, negatives=a.negatives)
    m = prepare(a.data, a.out, a.seed, a.max_len, **kw)
    c = m["counts"]
    print(
        f"prepared {a.out}: {c['users']} users, {c['items']} items, {c['interactions']} interactions; "
        f"train {c['train']}, valid {c['valid']}, test {c['test']}"
    )


def cmd_features(a: argparse.Namespace) -> None:
    from amfrec.features.build import build_features, parse_import_spec
    from amfrec.runs.baseline_run import ensure_sasrec_run

    out = a.out or Path(a.data) / "features"
    id_from = a.id_from
    if "id" in _csv(a.modalities) and id_from is None:  # train the SASRec whose item table is `id`
        id_from = ensure_sasrec_run(Path(a.data), a.seed, Path(out) / "sasrec")
    imports = dict(parse_import_spec(spec) for spec in a.import_npy or [])
    m = build_features(
        Path(a.data),
        Path(out),
        modalities=_csv(a.modalities),
        posters=a.posters,
        id_from=id_from,
        text_encoder=a.text_encoder,
        image_encoder=a.image_encoder,
        import_specs=imports or None,
        batch_size=a.batch_size,
    )
    for name, info in m["modalities"].items():
        print(f"{name:>6}: dim {info['dim']}, present {info['present']}  ({info['encoder']['name']})")
    print(f"features in {out}")


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

    if a.protocol == "full":
        from amfrec.runs.full_ranking import evaluate_full_run

        m = evaluate_full_run(Path(a.run), split=a.split, limit=a.limit, corrupt=a.corrupt)
        return print(_metrics_line(m) + f", recall@10 {m['recall@10']:.4f}, ndcg@20 {m['ndcg@20']:.4f}")
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


def cmd_experiment(a: argparse.Namespace) -> None:
    from amfrec.experiments.experiment import run_experiment

    table = run_experiment(
        models=_csv(a.models),
        data=Path(a.data),
        features=Path(a.features) if a.features else None,
        config=a.config,
        seeds=a.seeds,
        out=Path(a.out),
        overrides=_overrides(a.set),
        limit=a.limit,
        new_items=a.new_items,
        negatives=a.negatives,
    )
    print(table)


def cmd_serve(a: argparse.Namespace) -> None:
    from amfrec.serve.app import serve

    serve(Path(a.run), a.host, a.port, a.max_queue, a.max_batch, a.max_wait_ms)


def cmd_report(a: argparse.Namespace) -> None:
    from amfrec.reports.report import write_report

    path = write_report(Path(a.exp), Path(a.out) if a.out else None)
    print(f"report: {path}")


def cmd_quickstart(a: argparse.Namespace) -> None:
    from amfrec.experiments.quickstart import quickstart

    print(quickstart(data=Path(a.data) if a.data else None, out=Path(a.out), seed=a.seed))


def _metrics_line(m: dict) -> str:
    keys = ["hr@1", "hr@5", "hr@10", "ndcg@10", "mrr", "gen_hr@1", "valid_ratio", "spread"]
    parts = [f"{k} {m[k]:.4f}" for k in keys if k in m]
    return f"{m.get('model', '?')} [{m.get('split', '?')}, n={m.get('n', '?')}]: " + ", ".join(parts)


# ---------------------------------------------------------------- parser


def _add_protocol_args(p: argparse.ArgumentParser) -> None:
    """The protocol of `data prepare` and `experiment` (amfrec.data.protocol)."""
    p.add_argument("--negatives", type=int, default=19, help="valid/test negatives per target (default 19)")
    p.add_argument("--n-candidates", type=lambda v: int(v) - 1, dest="negatives", help="= --negatives N-1")
    p.add_argument("--new-items", type=float, default=0.0, help="fraction of items kept out of training")


def _add_data_parsers(sub) -> None:
    """`amfrec data prepare` (`amfrec data import` is in cli_data)."""
    d = sub.add_parser("data", help="import tables; prepare a data set: splits and fixed candidate sets")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    dp = dsub.add_parser("prepare", help="RecBole atomic files -> splits, candidates, manifest")
    dp.add_argument("--data", type=Path, default=None, help="*.inter + *.item folder (default: ml-100k)")
    dp.add_argument("--out", type=Path, required=True, help="output folder")
    dp.add_argument("--seed", type=int, default=1, help="seed of the validation/test candidate sets")
    dp.add_argument("--max-len", type=int, default=10, help="history length L")
    _add_protocol_args(dp)
    dp.add_argument("--kcore", type=int, default=0, help="iterative k-core filter (0 = off)")
    dp.add_argument("--cold-threshold", type=int, default=None, help="K of the slice train<=K (default 5)")
    dp.set_defaults(func=cmd_data_prepare)
    add_import_parser(dsub)


def _add_features_parser(sub) -> None:
    """`amfrec features`."""
    f = sub.add_parser("features", help="per-item modality vectors (id, text, image), cached")
    f.add_argument("--data", type=Path, required=True, help="prepared data folder")
    f.add_argument("--out", type=Path, default=None, help="feature folder (default: DATA/features)")
    f.add_argument("--modalities", default="id,text,image", help="comma-separated modalities")
    f.add_argument("--posters", type=Path, default=None, help="image folder named by item id")
    f.add_argument("--id-from", type=Path, default=None, help="SASRec run folder (default: train one)")
    f.add_argument("--text-encoder", default=None, help="HF encoder path or hub id (default: MiniLM-L6)")
    f.add_argument(
        "--image-encoder", default=None, help="HF vision model path or hub id (default: ResNet-50)"
    )
    f.add_argument(
        "--import",
        dest="import_npy",
        action="append",
        metavar="NAME=MATRIX.npy:IDS",
        help="import a precomputed matrix as modality NAME (repeatable)",
    )
    f.add_argument("--batch-size", type=int, default=64)
    f.add_argument(
        "--seed", type=int, default=1, help="seed of the SASRec trained for id (without --id-from)"
    )
    f.set_defaults(func=cmd_features)


def _add_run_parsers(sub) -> None:
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
    parts = "parts: rank by the content term, the collaborative term, both (item_token); full: the catalogue"
    e.add_argument("--protocol", choices=("score", "generate", "parts", "full"), default="score", help=parts)
    e.add_argument("--limit", type=int, default=None, help="first N examples only")
    e.add_argument(
        "--corrupt",
        default=None,
        metavar="MODALITY=HOW",
        help="replace one modality's features at test time: noise | zero | shuffle (e.g. image=noise)",
    )
    e.set_defaults(func=cmd_evaluate)

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


def _add_experiment_parsers(sub) -> None:
    """`amfrec experiment, report`."""
    x = sub.add_parser("experiment", help="several models x seeds on the same candidates -> mean/std table")
    x.add_argument(
        "--models",
        default="popularity,sasrec,gru4rec,amfrec",
        help="comma-separated: popularity, sasrec, gru4rec, bert4rec, sasrec_content, content_knn, amfrec, "
        "amfrec:VARIANT (an ablation, e.g. amfrec:no_llm; see amfrec.experiments.experiment.VARIANTS)",
    )
    x.add_argument("--data", type=Path, required=True, help="raw data folder (prepared once per seed)")
    x.add_argument("--features", type=Path, default=None)
    x.add_argument("--config", default=None)
    x.add_argument("--seeds", type=_ints, default=[1, 2, 3])
    x.add_argument("--out", type=Path, required=True)
    x.add_argument("--set", action="append", metavar="KEY=VALUE")
    x.add_argument("--limit", type=int, default=None)
    _add_protocol_args(x)
    x.set_defaults(func=cmd_experiment)

    rp = sub.add_parser(
        "report", help="report.md + PNG plots (metrics, curves, gate, robustness) of an experiment"
    )
    rp.add_argument("--exp", type=Path, required=True, help="experiment folder (amfrec experiment --out)")
    rp.add_argument("--out", type=Path, default=None, help="output folder (default: EXP/report)")
    rp.set_defaults(func=cmd_report)


def _add_tool_parsers(sub) -> None:
    """`amfrec quickstart` (`amfrec bench` is in cli_bench)."""
    q = sub.add_parser("quickstart", help="the whole pipeline on ml-100k, sized for a laptop CPU")
    q.add_argument("--data", type=Path, default=None, help="ml-100k folder (default: download it)")
    q.add_argument("--out", type=Path, default=Path("quickstart"))
    q.add_argument("--seed", type=int, default=1)
    q.set_defaults(func=cmd_quickstart)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="amfrec",
        description="AMFRec: a frozen LLM recommends the next item from multimodal soft tokens.",
    )
    p.add_argument("--version", action="version", version=f"amfrec {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings only")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_data_parsers(sub)
    _add_features_parser(sub)
    _add_run_parsers(sub)
    add_items_parser(sub)
    _add_experiment_parsers(sub)
    add_compare_parser(sub)
    add_tune_parser(sub)
    add_bench_parser(sub)
    _add_tool_parsers(sub)
    add_bench_scale_parser(sub, "bench-scale")
    return p


def _check_counts(args: argparse.Namespace) -> None:
    """Counts given on the command line must be positive (a zero --limit would evaluate nothing)."""
    for name in ("limit", "top", "steps", "batch_size", "seq_len", "negatives", "max_len", "max_batch"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise AmfrecError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    import torch

    from amfrec.hardware import use_all_cores

    threads = torch.get_num_threads()
    log.debug("torch threads: %d (the CPUs this process may use)", use_all_cores())
    try:
        _check_counts(args)
        args.func(args)
    except AmfrecError as e:
        print(f"amfrec: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("amfrec: interrupted", file=sys.stderr)
        return 130
    finally:
        torch.set_num_threads(threads)  # callers in the same process (tests) get their setting back
    return 0


if __name__ == "__main__":
    sys.exit(main())
