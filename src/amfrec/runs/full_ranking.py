"""`amfrec evaluate --run RUN --protocol full`: any run (baseline or AMFRec) ranks the whole catalogue.

The protocol is `amfrec.evaluate_full`; this module reloads the run, takes the split's seen items and slices
from its prepared data, and writes RUN/<split>_full_metrics.json (the standard metrics-file record plus
hr@20, ndcg@20, recall@k, "protocol": "full" and "n_items").
"""

from __future__ import annotations

import time
from pathlib import Path

from amfrec.baselines import BASELINES
from amfrec.data.dataset import PreparedData
from amfrec.errors import AmfrecError
from amfrec.evaluate import candidate_metrics
from amfrec.evaluate_full import evaluate_full
from amfrec.io import write_json
from amfrec.recommender import Recommender
from amfrec.runs.ranks import inference_terms, ranks_path, ranks_record, write_ranks
from amfrec.runs.rundir import metrics_record, run_info
from amfrec.runs.scoring import EVAL_BATCH_ITEM_TOKEN, prompt_order

BASELINE_BATCH = 256  # rows per scoring call: (256, n_items) scores


def _load(run: Path) -> tuple[Recommender, PreparedData, int, str, int]:
    """(model, data, seed, model name, batch size) of a run folder."""
    info = run_info(run)
    name = info["model"]
    if name in BASELINES:
        from amfrec.runs.baseline_run import LOADERS

        data = PreparedData.load(info["data"])
        return LOADERS[name](run, data), data, int(info["seed"]), name, BASELINE_BATCH
    from amfrec.config.options import AnswerHead
    from amfrec.runs.amfrec_run import load_run

    model, data, run_cfg = load_run(run)
    if model.answer is not AnswerHead.ITEM_TOKEN or model.prompt.template.has_candidates:
        raise AmfrecError(
            f"{run}: --protocol full needs the item_token head with no candidates in the prompt "
            "(title heads and listed candidates score a fixed candidate set only)"
        )
    return model, data, int(run_cfg["run"]["seed"]), "amfrec", EVAL_BATCH_ITEM_TOKEN


def evaluate_full_run(
    run: Path,
    split: str = "test",
    limit: int | None = None,
    corrupt: str | None = None,
    with_score: bool = False,
) -> tuple[dict, dict | None]:
    """Rank the whole catalogue minus each user's seen items for `split`'s (first `limit`) examples; write
    and return RUN/<split>_full_metrics.json's record. (`corrupt` is refused: full ranking is clean only.)

    with_score: also write what `--protocol score` writes (RUN/<split>_score_metrics.json and its ranks),
    read off the same scores at the split's candidates: both protocols for the price of one pass. Returns
    (the full record, the score record or None)."""
    if corrupt:
        raise AmfrecError("--corrupt: not with --protocol full (use --protocol score)")
    t0 = time.perf_counter()
    run = Path(run)
    model, data, seed, name, batch = _load(run)
    part = (data.valid if split == "valid" else data.test).head(limit)
    if with_score and part.candidates is None:
        raise AmfrecError(f"{run}: --protocol full+score: the {split} split has no candidate sets (use full)")
    rows, items = data.seen_items(split)
    keep = rows < len(part)  # (P,) the pairs of the first `limit` rows
    slices = data.slices(part)
    order = prompt_order(model, part) if name == "amfrec" else None  # AMFRec: batches of equal prompt lengths
    metrics = evaluate_full(
        model,
        part,
        (rows[keep], items[keep]),
        data.n_items,
        batch_size=batch,
        slices=slices,
        desc=f"{name} {split} full",
        order=order,
        candidates=with_score,
    )
    seconds = time.perf_counter() - t0
    rec = metrics_record(metrics, split, seed, name, seconds)
    ranks = metrics.pop("ranks")  # (N,) for the paired comparisons (`amfrec compare --protocol full`)
    among = metrics.pop("candidate_ranks", None)  # (N,) | None
    rec.update({k: v for k, v in metrics.items() if k not in rec})  # @20, recall@k, protocol, n_items
    write_json(run / f"{split}_full_metrics.json", rec)
    terms = inference_terms(model) if name == "amfrec" else None
    record = ranks_record(
        ranks, part, slices, data, split, seed, name, n_candidates=data.n_items, terms=terms
    )
    write_ranks(ranks_path(run, split, "full"), record)
    score = None
    if among is not None:
        score = metrics_record(candidate_metrics(among, seconds, slices), split, seed, name, seconds)
        score["from"] = "full"  # read off the full ranking's scores
        write_json(run / f"{split}_score_metrics.json", score)
        score_ranks = ranks_record(among, part, slices, data, split, seed, name, terms=terms)
        write_ranks(ranks_path(run, split, "score"), score_ranks)
    return rec, score
