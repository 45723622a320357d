"""Load a prepared data directory (see docs/ARCHITECTURE.md) into index tensors."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from amfrec.data.protocol import NEW_ITEMS_FILE, protocol_of, round_half_up
from amfrec.errors import AmfrecError
from amfrec.io import read_json, read_jsonl
from amfrec.seeds import generator

# The "train<=K" slice: a valid/test example whose target has at most K training interactions (K = this
# default, or the prepared manifest's "cold_threshold").
DEFAULT_COLD_THRESHOLD = 5
# The "cold" / "warm" slices (A-LLMRec's definition): the target is among the bottom / top 35% of the items by
# training interactions (see PreparedData.slices).
POPULARITY_FRACTION = 0.35
SEQUENCES_FILE = "sequences.jsonl"  # {"user", "items": [every kept interaction's item id, oldest first]}


@dataclass(frozen=True)
class ItemInfo:
    item_id: str
    title: str
    year: str | None = None
    genres: tuple[str, ...] = ()
    fields: tuple[tuple[str, str], ...] = ()  # the item file's other text fields (name, value), header order

    def text(self) -> str:
        """Title, year, genres and the other text fields as one string (the text modality's input), e.g.
        "Kolya (1996). Genres: Comedy" or "Sanding Roll. Categories: Industrial & Scientific. Brand: 3M";
        empty fields are left out."""
        parts = [self.title + (f" ({self.year})" if self.year else "")]
        if self.genres:
            parts.append("Genres: " + ", ".join(self.genres))
        for name, value in self.fields:
            if value.strip():
                parts.append(f"{name.replace('_', ' ').capitalize()}: {value.strip()}")
        return ". ".join(parts)


def grown_rows(index: torch.Tensor, n_items: int) -> int:
    """The row count (n_items + 1, grown) after writing item rows `index` (A,) long: an index above n_items
    is a new item, and the new ones must be n_items + 1, n_items + 2, ... (ValueError otherwise)."""
    if index.numel() and int(index.min()) < 1:
        raise ValueError("item rows: index 0 is the padding")
    new = index[index > n_items].unique()  # sorted
    if new.numel() and not torch.equal(new.cpu(), torch.arange(n_items + 1, n_items + 1 + new.numel())):
        raise ValueError(f"item rows: new items take the indices {n_items + 1}, {n_items + 2}, ... in turn")
    return n_items + 1 + new.numel()


@dataclass
class Split:
    """A batch-able split. All ids are item *indices* (1..n_items; 0 = padding)."""

    users: list[str]
    history: torch.Tensor  # (N, L) long, left-padded with 0, most recent last
    target: torch.Tensor  # (N,) long
    candidates: torch.Tensor | None = None  # (N, C) long, prompt order

    def __len__(self) -> int:
        return len(self.users)

    def head(self, n: int | None) -> Split:
        """The first `n` examples (all when n is None or >= len)."""
        return self if n is None or n >= len(self) else self.subset(list(range(n)))

    def subset(self, idx: torch.Tensor | list[int]) -> Split:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return Split(
            users=[self.users[i] for i in idx.tolist()],
            history=self.history[idx],
            target=self.target[idx],
            candidates=None if self.candidates is None else self.candidates[idx],
        )

    def sample(self, k: int | None, seed: int) -> Split:
        """A fixed random subset of k windows in split order (all of them when k is None or >= len(self)):
        the same k, seed and split size give the same subset on every machine."""
        n = len(self)
        if k is None or k >= n:
            return self
        return self.subset(torch.randperm(n, generator=generator(seed, n, k))[:k].sort().values)


@dataclass
class PreparedData:
    path: Path
    manifest: dict
    items: list[ItemInfo]  # index 0 = padding placeholder
    train: Split
    valid: Split
    test: Split

    @property
    def n_items(self) -> int:
        return len(self.items) - 1

    @property
    def max_len(self) -> int:
        return int(self.manifest["max_len"])

    @property
    def titles(self) -> list[str]:
        return [it.title for it in self.items]

    @property
    def protocol(self) -> dict:
        """{"new_items": fraction, "n_negatives": N} (amfrec.data.protocol.protocol_of)."""
        return protocol_of(self.manifest)

    @property
    def cold_threshold(self) -> int:
        return int(self.manifest.get("cold_threshold", DEFAULT_COLD_THRESHOLD))

    @functools.cached_property
    def item_train_counts(self) -> torch.Tensor:
        """(n_items + 1,) long: each item's interactions in the training windows.

        Every training window's target, plus each user's first window's one history item (the first item of
        the user's training part, which is never a target). Under the new-item protocol the windows are cut
        with the new items removed, so a new item counts 0; so does the first item of a user without any
        window (no model ever trains on it).
        """
        n = self.n_items + 1
        users = np.asarray(self.train.users, dtype=object)  # (W,) rows of one user are consecutive
        first_row = torch.from_numpy(np.r_[True, users[1:] != users[:-1]][: len(users)].astype(bool))
        first = self.train.history[first_row, -1]  # (U',) the one history item of each user's first window
        return torch.bincount(self.train.target, minlength=n) + torch.bincount(first, minlength=n)

    @functools.cached_property
    def new_items(self) -> torch.Tensor:
        """(n_items + 1,) bool: the new items of the new-item protocol (all False under the standard one)."""
        mask = torch.zeros(self.n_items + 1, dtype=torch.bool)
        if protocol_of(self.manifest)["new_items"] > 0:
            listed = read_json(self.path / NEW_ITEMS_FILE)["items"]
            mask[torch.tensor([self.index[str(i)] for i in listed], dtype=torch.long)] = True
        return mask

    def popularity_groups(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(cold, warm), each (n_items + 1,) bool: the items ranked by (training count, item index) ascending
        -- ties in the count broken by the lower index first -- the first round(0.35 n) are cold, the last
        round(0.35 n) warm (n = n_items, halves rounded up). Index 0 (padding) is in neither."""
        n = self.n_items
        k = round_half_up(POPULARITY_FRACTION, n)
        order = torch.argsort(self.item_train_counts[1:], stable=True) + 1  # (n,) count asc., then index asc.
        cold = torch.zeros(n + 1, dtype=torch.bool)
        warm = torch.zeros(n + 1, dtype=torch.bool)
        cold[order[:k]] = True
        warm[order[n - k :]] = True
        return cold, warm

    def slices(self, split: Split) -> dict[str, torch.Tensor]:
        """Named (N,) bool masks over `split`'s examples that metrics are also reported on.

        train<=K: the target has <= K = `cold_threshold` training interactions.
        cold / warm: the target is among the bottom / top 35% of items by training interactions
        (`popularity_groups`, A-LLMRec's definition).
        new: the target is a new item (only under the new-item protocol).
        """
        cold, warm = self.popularity_groups()
        out = {
            f"train<={self.cold_threshold}": self.item_train_counts[split.target] <= self.cold_threshold,
            "cold": cold[split.target],
            "warm": warm[split.target],
        }
        if protocol_of(self.manifest)["new_items"] > 0:
            out["new"] = self.new_items[split.target]
        return out

    def seen_items(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's seen items in split "valid" or "test": every item the user interacted with before the
        row's target (the training part of the whole sequence; plus the validation target for test), as flat
        pairs (rows (P,), items (P,)) sorted by row (the full-ranking protocol excludes them).

        Read from sequences.jsonl; a prepared folder without it (older format, standard protocol only) is
        rebuilt from the training windows and the row's own history, which hold the same items.
        """
        if split not in ("valid", "test"):
            raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
        part = self.valid if split == "valid" else self.test
        row_of = {user: r for r, user in enumerate(part.users)}
        if (self.path / SEQUENCES_FILE).is_file():
            rows, items = [], []
            for _, rec in read_jsonl(self.path / SEQUENCES_FILE, ("user", "items")):
                keep = len(rec["items"]) - (2 if split == "valid" else 1)
                rows += [row_of[str(rec["user"])]] * keep
                items += [self.index[str(i)] for i in rec["items"][:keep]]
            row_t, item_t = torch.tensor(rows, dtype=torch.long), torch.tensor(items, dtype=torch.long)
        else:
            train_rows = torch.tensor([row_of[u] for u in self.train.users], dtype=torch.long)  # (W,)
            width = self.train.history.shape[1] + 1
            row_t = torch.cat(
                [
                    train_rows.repeat_interleave(width),
                    torch.arange(len(part)).repeat_interleave(part.history.shape[1]),
                ]
            )
            item_t = torch.cat(
                [
                    torch.cat([self.train.history, self.train.target[:, None]], 1).flatten(),
                    part.history.flatten(),
                ]
            )
            keep = item_t > 0
            row_t, item_t = row_t[keep], item_t[keep]
        order = torch.argsort(row_t, stable=True)
        return row_t[order], item_t[order]

    @functools.cached_property
    def index(self) -> dict[str, int]:
        """Item id -> item index (built once)."""
        return _index(self.items)

    def set_items(self, items: list[ItemInfo]) -> list[int]:
        """Add items after preparation (a live catalogue), or replace those whose id it holds; returns
        their indices (new ids take n_items + 1, n_items + 2, ... in order). The splits are unchanged."""
        out = []
        for it in items:
            k = self.index.get(it.item_id)
            if k is None:
                self.items.append(it)
                k = self.index[it.item_id] = len(self.items) - 1
            else:
                self.items[k] = it
            out.append(k)
        for name in ("item_train_counts", "new_items"):  # sized by the old catalogue: recomputed on use
            self.__dict__.pop(name, None)
        return out

    @classmethod
    def load(cls, path: str | Path) -> PreparedData:
        path = Path(path)
        for name in ("manifest.json", "items.jsonl", "train.jsonl", "valid.jsonl", "test.jsonl"):
            if not (path / name).is_file():
                raise AmfrecError(f"{path / name}: file not found (run `amfrec data prepare` first)")
        manifest = read_json(path / "manifest.json")
        items = [ItemInfo(item_id="", title="")]
        for _, row in read_jsonl(path / "items.jsonl", ("item_id", "title")):
            items.append(
                ItemInfo(
                    item_id=str(row["item_id"]),
                    title=str(row["title"]),
                    year=row.get("year"),
                    genres=tuple(row.get("genres") or ()),
                    fields=tuple((str(k), str(v)) for k, v in (row.get("fields") or {}).items()),
                )
            )
        index = _index(items)
        max_len = int(manifest["max_len"])
        return cls(
            path=path,
            manifest=manifest,
            items=items,
            train=_load_split(path / "train.jsonl", index, max_len, with_candidates=False),
            valid=_load_split(path / "valid.jsonl", index, max_len, with_candidates=True),
            test=_load_split(path / "test.jsonl", index, max_len, with_candidates=True),
        )


def _index(items: list[ItemInfo]) -> dict[str, int]:
    return {it.item_id: k for k, it in enumerate(items) if k > 0}


def _load_split(path: Path, index: dict[str, int], max_len: int, with_candidates: bool) -> Split:
    users, hist_rows, targets, cands = [], [], [], []

    def lookup(item: str, lineno: int, field: str) -> int:
        try:
            return index[str(item)]
        except KeyError:
            raise AmfrecError(f"{path}:{lineno}: unknown item id {item!r} in field '{field}'") from None

    fields = ("user", "history", "target", "candidates") if with_candidates else ("user", "history", "target")
    for lineno, row in read_jsonl(path, fields):
        hist = [lookup(i, lineno, "history") for i in row["history"]][-max_len:]
        users.append(str(row["user"]))
        hist_rows.append([0] * (max_len - len(hist)) + hist)
        targets.append(lookup(row["target"], lineno, "target"))
        if with_candidates:
            cands.append([lookup(i, lineno, "candidates") for i in row["candidates"]])
            if len(cands[-1]) != len(cands[0]):
                raise AmfrecError(
                    f"{path}:{lineno}: {len(cands[-1])} candidates, but line 1 has {len(cands[0])}"
                )
    return Split(
        users=users,
        history=torch.tensor(hist_rows, dtype=torch.long).reshape(len(users), max_len),
        target=torch.tensor(targets, dtype=torch.long),
        candidates=torch.tensor(cands, dtype=torch.long) if with_candidates else None,
    )
