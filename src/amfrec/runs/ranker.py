"""Recommendations from any run folder (AMFRec or a baseline), loaded once: the one ranking path that
`amfrec recommend` and `amfrec serve` share, so both give the same ranking for the same input.

Item ids are the data's own (strings). `query` checks a request's ids (raising `UnknownItems`) and turns it
into a `Query` of item indices; `rank_batch` ranks a batch of queries with one model call:

- Models whose score of an item does not depend on the other candidates (every baseline, AMFRec's item_token
  head without candidates in the prompt) score the whole catalogue once per row, (B, n_items + 1); a query
  with its own `candidates` picks those columns, a catalogue query masks its history (`exclude_seen`) to
  -inf. So requests with and without candidates share one backbone pass.
- The others (the title head, `model.prompt_candidates`) score each row's candidate list in the prompt: rows
  with as many candidates go in one call. Without candidates the catalogue minus the history is ranked; the
  title head gets the data's candidate count of those items drawn with a seed.

Top-k is `stable_topk` on the score tensor (ties: the lower position first, i.e. the lower item index or the
earlier listed candidate); no work grows with the catalogue in Python. AMFRec rows carry the gate's weight
per modality, read from the model's cached item table.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence

from amfrec.data.dataset import ItemInfo, PreparedData
from amfrec.errors import AmfrecError
from amfrec.io import read_json
from amfrec.recommender import Recommender
from amfrec.runs import catalogue
from amfrec.runs.catalogue import LiveItem
from amfrec.runs.rundir import run_info


class UnknownItems(AmfrecError):
    """Item ids that the run's data does not hold; `field` names the input they came from."""

    def __init__(self, field: str, ids: list[str], where: Path) -> None:
        self.field, self.ids = field, ids
        super().__init__(f"{field}: unknown item id(s) {', '.join(ids[:5])} (not in {where})")


@dataclass(frozen=True)
class Query:
    """One checked request in item indices: history (oldest first, the last max_len kept), candidates (None =
    the catalogue), k (None = all), exclude_seen (drop the given history's items from the catalogue)."""

    history: tuple[int, ...]
    candidates: tuple[int, ...] | None = None
    k: int | None = None
    exclude_seen: bool = True
    seen: tuple[int, ...] = ()  # every history item given (also those before the last max_len)


def stable_topk(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest of each row, best first, ties to the lower position: (values (B, k), positions (B, k)).

    values (B, W) float; k <= W. Deterministic (unlike `torch.topk`'s order among equal values): the k-th
    largest value is found with `torch.topk`, the positions above it are kept with the first of those equal
    to it, and the k kept are sorted stably. NaN counts as -inf.
    """
    if not 0 < k <= values.shape[1]:
        raise ValueError(f"k must be in 1..{values.shape[1]}, got {k}")
    values = values.nan_to_num(nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
    kth = values.topk(k, dim=1).values[:, -1:]  # (B, 1)
    above, tie = values > kth, values == kth  # (B, W)
    need = k - above.sum(1, keepdim=True)  # (B, 1)
    take = above | (tie & (tie.cumsum(1) <= need))  # (B, W), exactly k per row
    pos = take.nonzero()[:, 1].view(values.shape[0], k)  # (B, k) ascending positions
    kept = values.gather(1, pos)  # (B, k)
    order = torch.sort(kept, dim=1, descending=True, stable=True).indices  # (B, k)
    return kept.gather(1, order), pos.gather(1, order)


@dataclass
class Ranker:
    """A trained model with its data. `rank` -> rows {"item_id", "title", "score"[, "gate"]}, best first."""

    model: Recommender
    data: PreparedData
    run: Path
    info: dict  # RUN/config.yaml's run section (model, seed, data, ...)
    features: Path | None = None  # AMFRec's feature folder (modality presence, posters)
    title_seed: int = 0
    metrics: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)  # AMFRec: RUN/config.yaml (the prompt's item text settings)
    withdrawn: set[str] = field(default_factory=set)  # item ids never recommended (the live catalogue)
    lock: threading.RLock = field(default_factory=threading.RLock)  # ranking vs. catalogue changes

    @classmethod
    def load(cls, run: str | Path) -> Ranker:
        """The run's model and data, with its live catalogue (RUN/catalogue.npz) applied."""
        run = Path(run)
        info = run_info(run)
        run_cfg: dict = {}
        if info["model"] == "amfrec":
            from amfrec.runs.amfrec_run import load_run

            model, data, run_cfg = load_run(run)
            features = Path(run_cfg["run"]["features"])
        else:
            from amfrec.runs.baseline_run import LOADERS

            if info["model"] not in LOADERS:
                raise AmfrecError(f"{run / 'config.yaml'}: unknown model {info['model']!r}")
            data = PreparedData.load(info["data"])
            model, features = LOADERS[info["model"]](run, data), None
        metrics = read_json(run / "metrics.json") if (run / "metrics.json").is_file() else {}
        ranker = cls(model=model, data=data, run=run, info=info, features=features, metrics=metrics,
                     config=run_cfg)  # fmt: skip
        live = catalogue.Catalogue.load(run)
        apply(ranker, list(live.items.values()))
        ranker.withdrawn = set(live.withdrawn)
        return ranker

    @property
    def is_amfrec(self) -> bool:
        return self.info["model"] == "amfrec"

    @property
    def device(self) -> torch.device:
        return getattr(self.model, "device", torch.device("cpu"))

    @property
    def per_item(self) -> bool:
        """Whether an item's score is independent of the other candidates (then the catalogue is scored)."""
        if not self.is_amfrec:
            return True
        return self.model.answer == "item_token" and not self.model.prompt.template.has_candidates

    def indices(self, ids: list[str], field_name: str) -> list[int]:
        """Item ids -> item indices; raises UnknownItems naming the field."""
        unknown = [str(i) for i in ids if str(i) not in self.data.index]
        if unknown:
            raise UnknownItems(field_name, unknown, self.data.path)
        return [self.data.index[str(i)] for i in ids]

    def query(
        self,
        history: list[str],
        k: int | None = None,
        candidates: list[str] | None = None,
        exclude_seen: bool = True,
    ) -> Query:
        """Check a request's ids (UnknownItems, AmfrecError) -> a Query."""
        seen = self.indices(history, "history")
        if not seen:
            raise AmfrecError("history: give at least one item id")
        cand = tuple(self.indices(candidates, "candidates")) if candidates else None
        if cand is None and exclude_seen and len(set(seen)) >= self.data.n_items:
            raise AmfrecError("candidates: nothing left to rank (the history holds every item)")
        hist = tuple(seen[-self.data.max_len :])
        return Query(history=hist, candidates=cand, k=k, exclude_seen=exclude_seen, seen=tuple(seen))

    def rank(
        self,
        history: list[str],
        k: int | None = None,
        candidates: list[str] | None = None,
        exclude_seen: bool = True,
    ) -> list[dict[str, Any]]:
        """The top `k` (None = all) of the candidates for a history (ids oldest first); see the module doc."""
        return self.rank_batch([self.query(history, k, candidates, exclude_seen)])[0]

    @torch.inference_mode()
    def rank_batch(self, queries: list[Query]) -> list[list[dict[str, Any]]]:
        """Each query's rows, best first, from one model call (per candidate count for the title head)."""
        if not queries:
            return []
        with self.lock:
            return self._rank_batch(queries)

    def _rank_batch(self, queries: list[Query]) -> list[list[dict[str, Any]]]:
        if self.per_item:
            scores = self._catalogue_scores(queries)  # (B, n_items + 1), column 0 = -inf
            parts = [(list(range(len(queries))), *self._pick(queries, scores))]
        else:
            parts = self._score_lists(queries)
        out: list[list[dict[str, Any]]] = [[] for _ in queries]
        for rows, values, items in parts:  # values, items (R, W): the rows' scores and item indices
            ks = [min(queries[r].k or values.shape[1], values.shape[1]) for r in rows]
            top_v, top_p = stable_topk(values, max(ks))  # (R, k)
            top_i = items.gather(1, top_p)  # (R, k)
            for j, r in enumerate(rows):
                kept = torch.isfinite(top_v[j, : ks[j]])
                out[r] = self._rows(top_i[j, : ks[j]][kept].tolist(), top_v[j, : ks[j]][kept].tolist())
        return out

    def _histories(self, queries: list[Query]) -> torch.Tensor:
        """(B, L) left-padded item indices of the queries' histories."""
        rows = [torch.tensor(q.history, dtype=torch.long).flip(0) for q in queries]
        hist = pad_sequence(rows, batch_first=True).flip(1)  # (B, <= L), left-padded
        pad = self.data.max_len - hist.shape[1]
        return torch.nn.functional.pad(hist, (pad, 0)).to(self.device)  # (B, L)

    def _catalogue_scores(self, queries: list[Query]) -> torch.Tensor:
        """(B, n_items + 1) float32 scores of every item (column 0, the padding, is -inf)."""
        n = self.data.n_items
        hist = self._histories(queries)  # (B, L)
        catalogue = torch.arange(1, n + 1, device=self.device).expand(len(queries), n)  # (B, n_items)
        scores = self.model.score(hist, catalogue).float().cpu()  # (B, n_items)
        return torch.nn.functional.pad(scores, (1, 0), value=float("-inf"))  # (B, n_items + 1)

    def _seen_mask(self, queries: list[Query]) -> torch.Tensor:
        """(B, n_items + 1) bool: the padding column and, with exclude_seen, every given history item."""
        rows = [torch.full((len(q.seen),), r) for r, q in enumerate(queries) if q.exclude_seen]
        items = [torch.tensor(q.seen, dtype=torch.long) for q in queries if q.exclude_seen]
        mask = self.unavailable().expand(len(queries), -1).clone()  # (B, n_items + 1)
        if rows:
            mask[torch.cat(rows), torch.cat(items)] = True
        return mask

    def unavailable(self) -> torch.Tensor:
        """(n_items + 1,) bool: the padding and the withdrawn items, never ranked."""
        mask = torch.zeros(self.data.n_items + 1, dtype=torch.bool)
        mask[0] = True
        ids = [self.data.index[i] for i in self.withdrawn if i in self.data.index]
        mask[torch.tensor(ids, dtype=torch.long)] = True
        return mask

    def _pick(self, queries: list[Query], scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(values, items) (B, W) from catalogue scores (B, n_items + 1): a row with candidates keeps their
        columns in the given order (0-padded to the longest list, -inf); a catalogue row every item, -inf
        where excluded. W = n_items + 1 when a catalogue row is in the batch, else the longest list."""
        n1 = self.data.n_items + 1
        cat = [r for r, q in enumerate(queries) if q.candidates is None]
        lists = [r for r, q in enumerate(queries) if q.candidates is not None]
        width = max([n1] * bool(cat) + [len(queries[r].candidates) for r in lists])
        items = torch.zeros(len(queries), width, dtype=torch.long)  # (B, W); 0 = padding, scored -inf
        if lists:
            own = pad_sequence([torch.tensor(queries[r].candidates) for r in lists], batch_first=True)
            items[lists, : own.shape[1]] = own
        if cat:
            items[cat, :n1] = torch.arange(n1)  # a catalogue row: column = item index
        values = scores.gather(1, items).masked_fill(self.unavailable()[items], float("-inf"))  # (B, W)
        if cat:
            excluded = self._seen_mask([queries[r] for r in cat])  # (R, n_items + 1)
            values[cat, :n1] = values[cat, :n1].masked_fill(excluded, float("-inf"))
        return values, items

    def _score_lists(self, queries: list[Query]) -> list[tuple[list[int], torch.Tensor, torch.Tensor]]:
        """Models that read the candidates in the prompt: (rows, values (R, C), items (R, C)) per candidate
        count, one model call each."""
        lists = [self._own_candidates(q) for q in queries]  # (C,) each
        groups: dict[int, list[int]] = {}
        for r, c in enumerate(lists):
            groups.setdefault(len(c), []).append(r)
        parts = []
        for rows in groups.values():
            items = torch.stack([lists[r] for r in rows])  # (R, C)
            hist = self._histories([queries[r] for r in rows])  # (R, L)
            values = self.model.score(hist, items.to(self.device)).float().cpu()  # (R, C)
            parts.append((rows, values, items))
        return parts

    def _own_candidates(self, q: Query) -> torch.Tensor:
        """(C,) the query's candidates, or the catalogue minus its history (a seeded draw for the title
        head, the data's candidate count)."""
        if q.candidates is not None:
            own = torch.tensor(q.candidates, dtype=torch.long)
            return own[~self.unavailable()[own]]  # withdrawn items are never ranked
        pool = (~self._seen_mask([q])[0]).nonzero().flatten()  # (P,) ascending item indices
        if pool.numel() == 0:
            raise AmfrecError("candidates: nothing left to rank")
        if self.model.answer == "title":
            g = torch.Generator().manual_seed(self.title_seed)
            n = self.data.valid.candidates.shape[1]
            pool = pool[torch.randperm(len(pool), generator=g)[:n]]
        return pool

    def _rows(self, items: list[int], scores: list[float]) -> list[dict[str, Any]]:
        """Response rows of ranked item indices with their scores (and the gate's weights for AMFRec)."""
        gates = self.gate_weights(items)
        rows = []
        for item, score in zip(items, scores, strict=True):
            it = self.data.items[item]
            row = {"item_id": it.item_id, "title": it.title, "score": score}
            if gates is not None:
                row["gate"] = gates[item]
            rows.append(row)
        return rows

    @torch.inference_mode()
    def gate_weights(self, items: list[int]) -> dict[int, dict[str, float]] | None:
        """AMFRec: {item index: {modality: weight}} (the gate's, or mean fusion's equal shares), read from the
        model's cached item table; else None."""
        encoder = getattr(self.model, "item_encoder", None)
        if not self.is_amfrec or encoder is None or not items:
            return None
        _, _, weights = self.model.item_table()  # (n_items + 1, M) | None, cached while weights are unchanged
        if weights is None:
            return None
        rows = weights[torch.tensor(items, device=weights.device)].float().cpu().tolist()  # (S, M)
        mods = list(encoder.modalities)
        return {i: dict(zip(mods, w, strict=True)) for i, w in zip(items, rows, strict=True)}

    def modalities_present(self, item: int) -> dict[str, bool]:
        """AMFRec: which modalities the item has (from the item encoder's masks); baselines: {}."""
        encoder = getattr(self.model, "item_encoder", None)
        if not self.is_amfrec or encoder is None:
            return {}
        return {m: bool(getattr(encoder, f"mask{i}")[item]) for i, m in enumerate(encoder.modalities)}


def require_live_items(ranker: Ranker) -> None:
    """AmfrecError unless the run can take new or changed items (AMFRec: its scores come from content)."""
    if not ranker.is_amfrec:
        raise AmfrecError(
            f"items: a {ranker.info['model']} run ranks only the items it was trained on; live items need an "
            "AMFRec run (withdrawing items works for every run)"
        )


def apply(ranker: Ranker, items: list[LiveItem]) -> list[int]:
    """Write `items` into the loaded ranker (its data and model); returns their item indices. Only AMFRec
    runs take new or changed items: their scores come from content; a baseline's come from training."""
    if not items:
        return []
    require_live_items(ranker)
    from amfrec.config.options import ItemText
    from amfrec.model.build import prompt_texts
    from amfrec.model.live_items import set_items

    model, cfg = ranker.model, ranker.config["model"]
    index = torch.tensor(ranker.data.set_items([it.info for it in items]), dtype=torch.long)
    texts = prompt_texts([ItemInfo("", ""), *(it.info for it in items)], ItemText(cfg["item_text"]),
                         cfg["item_tokens"], model.backbone.tokenizer)[1:]  # fmt: skip
    names = sorted({m for it in items for m in it.vectors} | set(model.item_encoder.modalities) - {"id"})
    rows = {}
    for m in names:
        dim = next((it.vectors[m].shape[0] for it in items if m in it.vectors), None)
        if dim is None:
            dim = model.item_encoder.dims[model.item_encoder.modalities.index(m)]
        values = torch.zeros(len(items), dim)
        present = torch.zeros(len(items), dtype=torch.bool)
        for k, it in enumerate(items):
            if m in it.vectors:
                values[k], present[k] = torch.from_numpy(it.vectors[m]), True
        rows[m] = (values, present)
    set_items(model, index, texts, rows)
    return index.tolist()
