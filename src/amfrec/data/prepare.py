"""Turn RecBole atomic files into the prepared data directory of docs/ARCHITECTURE.md.

Steps (the protocol of docs/ARCHITECTURE.md, "Prepared data directory"):
1. read `<name>.inter` (user_id, item_id, timestamp) and `<name>.item` (item_id, a title field);
2. optional iterative k-core filter; users with fewer than 3 interactions are always dropped
   (`MIN_USER_INTERACTIONS`): the validation and the test target each need at least one preceding item.
   A user with exactly 3 interactions has no training window (the first item has no predecessor);
3. sort each user's interactions by (timestamp, item index); item index = position of the item id in the
   sorted list of kept item ids (numeric order when every id is an integer, else lexicographic);
4. leave-one-out: the last interaction is the test target, the one before it the validation target, every
   earlier position with at least one preceding item a training window of at most `max_len` items; under
   the new-item protocol (`new_items` > 0, amfrec.data.protocol) the windows are cut from the training part
   with the new items removed, while validation/test keep the real sequence;
5. validation and test candidates: the target plus `n_candidates - 1` negatives drawn uniformly without
   replacement from the items the user never interacted with (any of the user's kept interactions),
   drawn once with `numpy.random.default_rng(seed)` and shuffled with it;
6. write items.jsonl, train/valid/test.jsonl, sequences.jsonl (every user's whole kept sequence, for the
   full-ranking protocol's seen items), new_items.json (new-item protocol only) and manifest.json into `out`
   atomically.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

import amfrec
from amfrec.data.atomic import AtomicTable, read_atomic
from amfrec.data.card import read_card
from amfrec.data.dataset import DEFAULT_COLD_THRESHOLD, SEQUENCES_FILE
from amfrec.data.protocol import DEFAULT_NEGATIVES, NEW_ITEMS_FILE, check_new_items_fraction, draw_new_items
from amfrec.errors import AmfrecError
from amfrec.io import atomic_dir, file_sha256, write_json, write_jsonl

log = logging.getLogger(__name__)

FORMAT = "amfrec-prepared/1"
MIN_USER_INTERACTIONS = 3  # first item (history only) + validation target + test target
INTER_FIELDS = {"user_id": "token", "item_id": "token", "timestamp": "float"}
TITLE_FIELDS = ("movie_title", "title", "name")
YEAR_FIELDS = ("release_year", "year")
GENRE_FIELDS = ("class", "genre", "genres")


def find_atomic_files(data_dir: Path) -> tuple[Path, Path]:
    """Return the one `*.inter` and the one `*.item` file in `data_dir` (AmfrecError otherwise)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise AmfrecError(f"{data_dir}: data directory not found")
    found = []
    for ext, why in ((".inter", "interactions"), (".item", "item titles, needed for the prompts")):
        files = sorted(data_dir.glob(f"*{ext}"))
        if len(files) != 1:
            names = ", ".join(p.name for p in files) or "none"
            raise AmfrecError(
                f"{data_dir}: expected exactly one *{ext} file ({why}), found {len(files)}: {names}"
            )
        found.append(files[0])
    return found[0], found[1]


def id_order(ids: list[str]) -> list[str]:
    """Sort ids numerically when every id is an integer, else lexicographically."""
    if all(re.fullmatch(r"[+-]?\d+", s) for s in ids):
        return sorted(ids, key=lambda s: (int(s), s))
    return sorted(ids)


def _first_field(table: AtomicTable, candidates: tuple[str, ...]) -> str | None:
    return next((f for f in candidates if f in table), None)


def _as_text(value: object) -> str:
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else str(value)
    return str(value).strip()


def _read_items(path: Path, text_fields: tuple[str, ...] | None = None) -> dict[str, dict]:
    """item_id -> {"item_id", "title", "year", "genres"[, "fields"]} (year null unless all digits).

    "fields": every other text (token / token_seq) field of the header, in header order, as one string each
    (token_seq joined by spaces; "" where empty); the key is left out when the file has no such field, so
    files with only title/year/genres give the same items.jsonl as before. text_fields (the dataset card's):
    the only fields besides the title that are kept (None = all).
    """
    table = read_atomic(path, {"item_id": "token"})
    title_f = _first_field(table, TITLE_FIELDS)
    if title_f is None:
        raise AmfrecError(
            f"{path}:1: header has no title field (one of {', '.join(TITLE_FIELDS)}); titles are required"
        )
    if text_fields is not None and set(text_fields) - set(table.types):
        missing = ", ".join(sorted(set(text_fields) - set(table.types)))
        raise AmfrecError(f"{path}:1: the dataset card's text_fields name {missing}, not in this header")
    year_f = _first_field(table, YEAR_FIELDS)
    genre_f = _first_field(table, GENRE_FIELDS)
    skip = {"item_id", title_f, year_f, genre_f}
    other = [f for f, typ in table.types.items() if typ in ("token", "token_seq") and f not in skip]
    if text_fields is not None:  # the card's fields only
        year_f, genre_f = (f if f in text_fields else None for f in (year_f, genre_f))
        other = [f for f in other if f in text_fields]
    items: dict[str, dict] = {}
    lines: dict[str, int] = {}
    for r, item_id in enumerate(table["item_id"]):
        if item_id in items:
            raise AmfrecError(f"{table.where(r)}: item id {item_id!r} already given on line {lines[item_id]}")
        title = _as_text(table[title_f][r])
        if not title:
            raise AmfrecError(f"{table.where(r)}: field '{title_f}' (the title) is empty")
        year = _as_text(table[year_f][r]) if year_f else ""
        genres = table[genre_f][r] if genre_f else []
        if isinstance(genres, str):
            genres = genres.split()
        items[item_id] = {
            "item_id": item_id,
            "title": title,
            "year": year if year.isdigit() else None,  # e.g. "unkonwn" in ml-100k -> null
            "genres": [str(g) for g in genres],
        }
        if other:
            items[item_id]["fields"] = {f: _as_text(table[f][r]) for f in other}
        lines[item_id] = table.lines[r]
    return items


def _filter(user: np.ndarray, item: np.ndarray, kcore: int) -> np.ndarray:
    """Boolean mask of kept interactions: iterate until every user has >= max(kcore, 3) and every item
    >= kcore interactions. user, item: (N,) int codes."""
    keep = np.ones(len(user), dtype=bool)
    min_user = max(kcore, MIN_USER_INTERACTIONS)
    while True:
        u_cnt = np.bincount(user[keep], minlength=user.max() + 1)
        i_cnt = np.bincount(item[keep], minlength=item.max() + 1)
        new = keep & (u_cnt[user] >= min_user) & (i_cnt[item] >= kcore)
        if new.sum() == keep.sum():
            return keep
        keep = new


def _sequences(
    inter: AtomicTable, items: dict, inter_path: Path, item_path: Path, kcore: int
) -> tuple[list[str], list[str], np.ndarray, np.ndarray, int]:
    """Interactions -> (user ids in order, item ids in index order (index = position + 1), every user's item
    indices oldest first concatenated (N,), user start offsets (U + 1,), interactions dropped by k-core)."""
    raw_items: list[str] = inter["item_id"]
    for r, item_id in enumerate(raw_items):
        if item_id not in items:
            raise AmfrecError(f"{inter.where(r)}: item id {item_id!r} is not in {item_path}")
    user_ids, user_code = np.unique(np.asarray(inter["user_id"], dtype=object), return_inverse=True)
    item_ids, item_code = np.unique(np.asarray(raw_items, dtype=object), return_inverse=True)
    timestamp = np.asarray(inter["timestamp"], dtype=np.float64)

    keep = _filter(user_code, item_code, kcore)
    n_dropped = int(len(keep) - keep.sum())
    user_code, item_code, timestamp = user_code[keep], item_code[keep], timestamp[keep]
    if len(user_code) == 0:
        raise AmfrecError(
            f"{inter_path}: no interactions left after filtering (users need >= "
            f"{max(kcore, MIN_USER_INTERACTIONS)}, items >= {kcore} interactions)"
        )

    # item index: 1..n_items in id order; user order: the same rule on user ids
    kept_items = id_order([str(item_ids[c]) for c in np.unique(item_code)])
    index = {item_id: k for k, item_id in enumerate(kept_items, 1)}
    code_to_index = np.zeros(len(item_ids), dtype=np.int64)
    for c, item_id in enumerate(item_ids):
        code_to_index[c] = index.get(item_id, 0)
    item_idx = code_to_index[item_code]  # (N,) 1..n_items
    users = id_order([str(user_ids[c]) for c in np.unique(user_code)])
    rank = {user_id: r for r, user_id in enumerate(users)}
    user_rank = np.array([rank.get(user_id, -1) for user_id in user_ids], dtype=np.int64)
    urank = user_rank[user_code]  # (N,) 0..U-1

    order = np.lexsort((item_idx, timestamp, urank))  # by user, then timestamp, then item index
    starts = np.searchsorted(urank[order], np.arange(len(users) + 1))  # (U + 1,)
    return users, kept_items, item_idx[order], starts, n_dropped


def _leave_one_out(
    users: list[str],
    names: list[str],
    seq_items: np.ndarray,
    starts: np.ndarray,
    max_len: int,
    is_new: np.ndarray,
) -> tuple[list[dict], list[dict], list[dict]]:
    """Per user: the last item is the test target, the one before the validation target; the training
    windows are cut from the rest (the training part) with the new items (`is_new`, (n_items + 1,) bool)
    removed: every position with >= 1 preceding item, at most `max_len` history items. Validation and test
    examples keep the real, unfiltered sequence."""
    train, valid, test = [], [], []

    def example(user: str, seq: list[str], t: int) -> dict:
        return {"user": user, "history": seq[max(0, t - max_len) : t], "target": seq[t]}

    for u, user in enumerate(users):
        idx = seq_items[starts[u] : starts[u + 1]]  # (n,) item indices, oldest first
        seq = [names[i] for i in idx.tolist()]
        n = len(seq)
        part = idx[: n - 2]
        kept = [names[i] for i in part[~is_new[part]].tolist()]  # the training part without new items
        train.extend(example(user, kept, t) for t in range(1, len(kept)))
        valid.append(example(user, seq, n - 2))
        test.append(example(user, seq, n - 1))
    return train, valid, test


def _seen_below(seq_items: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every user's distinct items, ascending, as `below` (D,): for the p-th (0-based) of them, s, the number
    of items under s the user never interacted with (s - p - 1); and their offsets per user (U + 1,).

    seq_items (N,) item indices grouped by user, starts (U + 1,). Sorting once replaces a per-user
    (n_items + 1,) mask: linear in the interactions, not users x items."""
    users = np.repeat(np.arange(len(starts) - 1), np.diff(starts))  # (N,)
    order = np.lexsort((seq_items, users))
    u, i = users[order], seq_items[order]
    first = np.ones(len(u), dtype=bool)
    first[1:] = (u[1:] != u[:-1]) | (i[1:] != i[:-1])
    u, i = u[first], i[first]  # (D,) distinct (user, item), by user then item
    offsets = np.searchsorted(u, np.arange(len(starts)))  # (U + 1,)
    return i - (np.arange(len(u)) - offsets[u]) - 1, offsets


def _draw_candidates(
    splits: tuple[list[dict], ...],
    names: list[str],
    seq_items: np.ndarray,
    starts: np.ndarray,
    n_candidates: int,
    seed: int,
    inter_path: Path,
) -> None:
    """Add "candidates" to every row (row u = user u): the target + n_candidates - 1 items the user never
    interacted with, drawn uniformly without replacement, in a random order (one rng over the splits).

    The draw picks ranks k among the user's A allowed items (`rng.choice(A, ...)`, the same stream as
    choosing from the ascending array of allowed items) and maps rank k to the item k + 1 + the number of
    seen items below it, so no (n_items + 1,) mask is built per user."""
    rng = np.random.default_rng(seed)
    n_items, n_neg = len(names) - 1, n_candidates - 1
    index = {item_id: k for k, item_id in enumerate(names) if k > 0}
    below, offsets = _seen_below(seq_items, starts)
    for split in splits:
        for u, row in enumerate(split):
            user_below = below[offsets[u] : offsets[u + 1]]  # (S,) nondecreasing
            n_allowed = n_items - len(user_below)
            if n_allowed < n_neg:
                raise AmfrecError(
                    f"{inter_path}: user {row['user']!r} interacted with {n_items - n_allowed} of "
                    f"{n_items} items; cannot draw {n_neg} negatives (lower n_candidates)"
                )
            ranks = rng.choice(n_allowed, size=n_neg, replace=False)  # (n_neg,) ranks among allowed items
            negatives = ranks + 1 + np.searchsorted(user_below, ranks, side="right")
            cands = np.append(negatives, index[row["target"]])[rng.permutation(n_candidates)]
            row["candidates"] = [names[i] for i in cands]


def _write(out: Path, manifest: dict, items, splits: dict, sequences, new_items: dict | None) -> None:
    """Write the prepared directory `out` atomically (the files of docs/ARCHITECTURE.md)."""
    with atomic_dir(out) as tmp:
        write_jsonl(tmp / "items.jsonl", items)
        for name, rows in splits.items():
            write_jsonl(tmp / f"{name}.jsonl", rows)
        write_jsonl(tmp / SEQUENCES_FILE, sequences)
        if new_items is not None:
            write_json(tmp / NEW_ITEMS_FILE, new_items)
        write_json(tmp / "manifest.json", manifest)


def _check_arguments(seed: int, max_len: int, n_candidates: int, kcore: int, cold_threshold: int) -> None:
    """Command-line values: a bad one is a user mistake (AmfrecError), not a programming error."""
    if seed < 0:
        raise AmfrecError(f"seed must be >= 0, got {seed}")
    if max_len < 1:
        raise AmfrecError(f"max_len must be >= 1, got {max_len}")
    if n_candidates < 2:
        raise AmfrecError(f"n_candidates must be >= 2 (negatives >= 1), got {n_candidates}")
    if kcore < 0:
        raise AmfrecError(f"kcore must be >= 0, got {kcore}")
    if cold_threshold < 0:
        raise AmfrecError(f"cold_threshold must be >= 0, got {cold_threshold}")


def prepare(
    data_dir: Path | None,
    out: Path,
    seed: int = 1,
    max_len: int = 10,
    n_candidates: int = DEFAULT_NEGATIVES + 1,
    kcore: int = 0,
    cold_threshold: int = DEFAULT_COLD_THRESHOLD,
    new_items: float = 0.0,
    negatives: int | None = None,
) -> dict:
    """Prepare `data_dir` (None: fetch ml-100k) into `out`; return the manifest (also out/manifest.json).

    cold_threshold: a valid/test example is in the "train<=K" slice (K = cold_threshold) when its target has
    at most K training interactions (every model on this data is reported on the same slice).
    new_items: the fraction of items held out of every training window (amfrec.data.protocol); 0 = the
    standard protocol (byte-identical output). negatives: validation/test negatives per example (given, it
    sets n_candidates = negatives + 1).
    """
    if negatives is not None:
        n_candidates = negatives + 1
    _check_arguments(seed, max_len, n_candidates, kcore, cold_threshold)
    new_items = check_new_items_fraction(new_items)
    if data_dir is None:
        from amfrec.data.fetch import fetch_ml100k

        data_dir = fetch_ml100k()
    inter_path, item_path = find_atomic_files(Path(data_dir))
    card = read_card(data_dir)
    items = _read_items(item_path, card.text_fields)
    inter = read_atomic(inter_path, INTER_FIELDS)
    log.info("read %d interactions from %s, %d items from %s", len(inter), inter_path, len(items), item_path)

    users, kept_items, seq_items, starts, n_dropped = _sequences(inter, items, inter_path, item_path, kcore)
    n_items = len(kept_items)
    names = ["<pad>", *kept_items]  # index -> item id
    is_new = draw_new_items(seq_items, n_items, new_items, seed)  # (n_items + 1,)
    train, valid, test = _leave_one_out(users, names, seq_items, starts, max_len, is_new)
    _draw_candidates((valid, test), names, seq_items, starts, n_candidates, seed, inter_path)
    if new_items:
        log.info("new-item protocol: %d of %d items never in a training window", int(is_new.sum()), n_items)

    manifest = {
        "format": FORMAT,
        "amfrec_version": amfrec.__version__,
        "seed": seed,
        "max_len": max_len,
        "n_candidates": n_candidates,
        "kcore": kcore,
        "cold_threshold": cold_threshold,
        "min_user_interactions": MIN_USER_INTERACTIONS,
        "card": card.to_dict(),
        "protocol": {
            "new_items": new_items,
            "n_negatives": n_candidates - 1,
            "n_new_items": int(is_new.sum()),
        },
        "inputs": {
            "inter": {"path": str(inter_path.resolve()), "sha256": file_sha256(inter_path)},
            "item": {"path": str(item_path.resolve()), "sha256": file_sha256(item_path)},
        },
        "counts": {
            "users": len(users),
            "items": n_items,
            "interactions": len(seq_items),
            "dropped_interactions": n_dropped,
            "train": len(train),
            "valid": len(valid),
            "test": len(test),
        },
    }
    sequences = (
        {"user": user, "items": [names[i] for i in seq_items[starts[u] : starts[u + 1]].tolist()]}
        for u, user in enumerate(users)
    )
    new = {"fraction": new_items, "items": [names[i] for i in np.flatnonzero(is_new)]} if new_items else None
    splits = {"train": train, "valid": valid, "test": test}
    _write(out, manifest, (items[i] for i in kept_items), splits, sequences, new)
    log.info("prepared %s: %s", out, manifest["counts"])
    return manifest
