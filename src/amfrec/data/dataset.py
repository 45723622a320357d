"""Load a prepared data directory (see docs/ARCHITECTURE.md) into index tensors."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from amfrec.errors import AmfrecError
from amfrec.io import read_json, read_text

# A valid/test example is "cold" when its target has at most this many training interactions (the slice
# where text and images should matter most); prepared data may set its own (manifest "cold_threshold").
DEFAULT_COLD_THRESHOLD = 5


@dataclass(frozen=True)
class ItemInfo:
    item_id: str
    title: str
    year: str | None = None
    genres: tuple[str, ...] = ()

    def text(self) -> str:
        """Title, year and genres as one string (the text modality's input)."""
        parts = [self.title + (f" ({self.year})" if self.year else "")]
        if self.genres:
            parts.append("Genres: " + ", ".join(self.genres))
        return ". ".join(parts)


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
    def cold_threshold(self) -> int:
        return int(self.manifest.get("cold_threshold", DEFAULT_COLD_THRESHOLD))

    @functools.cached_property
    def item_train_counts(self) -> torch.Tensor:
        """(n_items + 1,) long: each item's interactions in the training part of the sequences.

        Every training window's target, plus each user's first item (which is only ever a history item: it
        is the whole history of the user's first window).
        """
        n = self.n_items + 1
        first = self.train.history[(self.train.history > 0).sum(dim=1) == 1, -1]  # (U,)
        return torch.bincount(self.train.target, minlength=n) + torch.bincount(first, minlength=n)

    def slices(self, split: Split) -> dict[str, torch.Tensor]:
        """Named (N,) bool masks over `split`'s examples that metrics are also reported on.

        cold: the target has <= `cold_threshold` training interactions.
        """
        return {"cold": self.item_train_counts[split.target] <= self.cold_threshold}

    @functools.cached_property
    def index(self) -> dict[str, int]:
        """Item id -> item index (built once)."""
        return _index(self.items)

    @classmethod
    def load(cls, path: str | Path) -> PreparedData:
        path = Path(path)
        manifest = read_json(path / "manifest.json")
        items = [ItemInfo(item_id="", title="")]
        for lineno, row in _read_jsonl(path / "items.jsonl"):
            _require(row, ("item_id", "title"), path / "items.jsonl", lineno)
            items.append(
                ItemInfo(
                    item_id=str(row["item_id"]),
                    title=str(row["title"]),
                    year=row.get("year"),
                    genres=tuple(row.get("genres") or ()),
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


def _read_jsonl(path: Path):
    if not path.is_file():
        raise AmfrecError(f"{path}: file not found (run `amfrec data prepare` first)")
    for lineno, line in enumerate(read_text(path).splitlines(), 1):
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            raise AmfrecError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None


def _require(row: object, fields: tuple[str, ...], path: Path, lineno: int) -> None:
    if not isinstance(row, dict):
        raise AmfrecError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
    for field in fields:
        if field not in row:
            raise AmfrecError(f"{path}:{lineno}: missing field '{field}'")


def _load_split(path: Path, index: dict[str, int], max_len: int, with_candidates: bool) -> Split:
    users, hist_rows, targets, cands = [], [], [], []

    def lookup(item: str, lineno: int, field: str) -> int:
        try:
            return index[str(item)]
        except KeyError:
            raise AmfrecError(f"{path}:{lineno}: unknown item id {item!r} in field '{field}'") from None

    fields = ("user", "history", "target", "candidates") if with_candidates else ("user", "history", "target")
    for lineno, row in _read_jsonl(path):
        _require(row, fields, path, lineno)
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
