"""`amfrec bench recommend --run RUN`: batch recommendations against the evaluation, one run, one process.

Four ways through the same loaded model, users batched by prompt length as each path does it, timed after
one untimed warm-up batch each:

- evaluate, 1 + 19: the test split's fixed candidates (what training's test evaluation runs);
- evaluate, full: the test split against the whole catalogue (`amfrec evaluate --protocol full`);
- recommend, the evaluation's histories: `recommend_batch` over each test user's history before the test
  target, the very prompts of the two rows above;
- recommend, whole histories: what `amfrec recommend --users all` reads (one more item per user).

Users/s compares the paths; item tokens per prompt (the prompt's history items, rendered and tokenised, the
template excluded) says how much longer the whole histories are, and item tokens/s compares the work per
token. Nothing is written into the run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from amfrec.errors import AmfrecError
from amfrec.evaluate_full import full_ranks
from amfrec.hardware import cpu_flags
from amfrec.runs.amfrec_run import EVAL_BATCH_ITEM_TOKEN, _score
from amfrec.runs.batch_recommend import recommend_batch, user_histories
from amfrec.runs.ranker import Ranker
from amfrec.runs.scoring import item_prompt_lengths, prompt_order


@dataclass
class RecommendRow:
    path: str
    users: int
    seconds: float
    item_tokens: float  # mean over the users: the prompt's history items, in backbone tokens

    @property
    def users_per_s(self) -> float:
        return self.users / max(self.seconds, 1e-9)

    @property
    def tokens_per_s(self) -> float:
        return self.item_tokens * self.users_per_s


def _timed(fn, warm) -> float:
    """Seconds of fn() after one untimed call of warm()."""
    warm()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_recommend(run: Path, limit: int | None = None, top: int = 20) -> list[RecommendRow]:
    """The four rows of the module doc on the run's test users (the first `limit`, None = all)."""
    ranker = Ranker.load(run)
    if not ranker.is_amfrec:
        raise AmfrecError(f"{run}: bench recommend times AMFRec runs (a baseline scores in milliseconds)")
    model, data = ranker.model, ranker.data
    split = data.test.head(limit)
    per_item = item_prompt_lengths(model)  # (n_items + 1,)
    prompt_len = model.max_len or data.max_len

    def lengths(rows: list[list[int]]) -> torch.Tensor:  # (N,) item tokens of each prompt
        return torch.tensor([int(per_item[r[-prompt_len:]].sum()) for r in rows], dtype=torch.float)

    before = [[i for i in row if i] for row in split.history.tolist()]  # the evaluation's histories
    whole_ids = user_histories(ranker)
    ids = [it.item_id for it in data.items]
    before_ids = {u: [ids[i] for i in row] for u, row in zip(split.users, before, strict=True)}
    whole = [[data.index[i] for i in whole_ids[u]] for u in split.users]
    few = split.head(32)
    seen = data.seen_items("test")
    rows = []
    with torch.inference_mode():
        s = _timed(lambda: _score(model, split, "1 + 19"), lambda: _score(model, few, "warm-up"))
        rows.append(RecommendRow("evaluate, 1 + 19", len(split), s, float(lengths(before).mean())))
        order = prompt_order(model, split)  # (N,) as `amfrec evaluate --protocol full` orders the prompts
        s = _timed(
            lambda: full_ranks(model, split, seen, data.n_items, EVAL_BATCH_ITEM_TOKEN, order=order),
            lambda: full_ranks(model, few, None, data.n_items, EVAL_BATCH_ITEM_TOKEN),
        )
        rows.append(RecommendRow("evaluate, full", len(split), s, float(lengths(before).mean())))
        users = split.users
        for name, hist, hist_ids in (
            ("recommend, the evaluation's histories", before, before_ids),
            ("recommend, whole histories (--users all)", whole, whole_ids),
        ):
            s = _timed(
                lambda h=hist_ids: recommend_batch(ranker, users, h, top),
                lambda h=hist_ids: recommend_batch(ranker, users[:32], h, top),
            )
            rows.append(RecommendRow(name, len(users), s, float(lengths(hist).mean())))
    return rows


def format_recommend(rows: list[RecommendRow], run: Path) -> str:
    """Markdown table with each row's users/s and item tokens/s against the 1 + 19 evaluation's."""
    base = rows[0]
    lines = [
        f"Batch recommendations against the evaluation: {run}, threads {torch.get_num_threads()}, "
        f"CPU flags {cpu_flags() or 'unknown'}",
        "",
        "| path | users | s | users/s | vs 1 + 19 | item tokens / prompt | item tokens/s | vs 1 + 19 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.path} | {r.users} | {r.seconds:.1f} | {r.users_per_s:.1f} | "
            f"{r.users_per_s / base.users_per_s:.2f}x | {r.item_tokens:.1f} | {r.tokens_per_s:.0f} | "
            f"{r.tokens_per_s / base.tokens_per_s:.2f}x |"
        )
    return "\n".join(lines)
