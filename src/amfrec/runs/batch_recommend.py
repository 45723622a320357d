"""`amfrec recommend --run RUN --users all|FILE --top K --out FILE.jsonl|FILE.parquet`: every user's top K.

Each user's history is their whole known sequence (the prepared data's `sequences.jsonl`: training,
validation and test items); the ranking is over the whole catalogue minus that history, by the run's own
batched scorer (`Ranker.rank_batch`, one model call per batch). One row per user: `user`, `items` (best
first), `scores`. The file is written to a temporary name and renamed, so a crash leaves no half file.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from tqdm.auto import tqdm

from amfrec.data.dataset import SEQUENCES_FILE
from amfrec.errors import AmfrecError
from amfrec.io import atomic_path
from amfrec.runs.ranker import Ranker
from amfrec.runs.scoring import item_prompt_lengths

log = logging.getLogger(__name__)
FORMATS = (".jsonl", ".parquet")


def user_histories(ranker: Ranker) -> dict[str, list[str]]:
    """user id -> every item id of the user's kept sequence, oldest first (the run's prepared data)."""
    path = ranker.data.path / SEQUENCES_FILE
    if not path.is_file():
        raise AmfrecError(
            f"{path}: missing (prepare the data again with this version for batch recommendations)"
        )
    out = {}
    with path.open(encoding="utf-8") as f:
        for rec in map(json.loads, f):
            out[str(rec["user"])] = [str(i) for i in rec["items"]]
    return out


def read_users(spec: str, known: dict[str, list[str]]) -> list[str]:
    """ "all" -> every user of the data; else a file with one user id per line ('#' comments, blank lines
    skipped). An unknown user stops with the file and line."""
    if spec == "all":
        return list(known)
    path = Path(spec)
    if not path.is_file():
        raise AmfrecError(f"--users: {spec!r} is neither 'all' nor a file")
    users = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        user = line.strip()
        if not user or user.startswith("#"):
            continue
        if user not in known:
            raise AmfrecError(f"{path}:{lineno}: unknown user {user!r} (not in the run's data)")
        users.append(user)
    if not users:
        raise AmfrecError(f"{path}: no user ids in it")
    return users


def recommend_batch(
    ranker: Ranker, users: list[str], histories: dict[str, list[str]], top: int, batch_size: int = 32
) -> list[dict]:
    """Rows {"user", "items", "scores"} in `users`' order, ranked `batch_size` users per model call; the
    users are batched by their prompt's length (as the evaluation sorts them), so a batch pads little."""
    queries = [ranker.query(histories[u], k=top) for u in users]
    if ranker.is_amfrec:  # as the evaluation sorts its prompts
        per_item, keep = item_prompt_lengths(ranker.model).tolist(), ranker.model.max_len or 0
        order = sorted(range(len(users)), key=lambda k: sum(per_item[i] for i in queries[k].history[-keep:]))
    else:
        order = list(range(len(users)))
    rows: list[dict] = [{}] * len(users)
    bar = tqdm(total=len(users), desc="recommend", unit="user", dynamic_ncols=True)
    for start in range(0, len(users), batch_size):
        chunk = order[start : start + batch_size]
        for k, ranked in zip(chunk, ranker.rank_batch([queries[k] for k in chunk]), strict=True):
            rows[k] = {"user": users[k], "items": [r["item_id"] for r in ranked],
                       "scores": [r["score"] for r in ranked]}  # fmt: skip
        bar.update(len(chunk))
    bar.close()
    return rows


def write_recommendations(run: Path, users_spec: str, top: int, out: Path, batch_size: int = 32) -> int:
    """Rank every requested user's top `top` items and write them to `out` (.jsonl or .parquet); returns
    the number of users written."""
    out = Path(out)
    if out.suffix not in FORMATS:
        raise AmfrecError(f"--out: {out} must end with {' or '.join(FORMATS)}")
    if top < 1:
        raise AmfrecError(f"--top must be >= 1, got {top}")
    ranker = Ranker.load(run)
    histories = user_histories(ranker)
    users = read_users(users_spec, histories)
    t0 = time.perf_counter()
    rows = recommend_batch(ranker, users, histories, top, batch_size)
    wall = time.perf_counter() - t0
    log.info("%d users in %.1f s (%.1f users/s)", len(rows), wall, len(rows) / max(wall, 1e-9))
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        if out.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(rows), tmp)
        else:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return len(rows)
