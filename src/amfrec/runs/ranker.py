"""Recommendations from any run folder (AMFRec or a baseline), loaded once: the one ranking path that
`amfrec recommend` and `amfrec serve` share, so both give the same ranking for the same input.

Item ids are the data's own (strings). Without candidates, every item is ranked (minus the history with
`exclude_seen`); AMFRec's title head, whose prompt must list its candidates, gets the data's candidate count
of unseen items drawn with a seed. AMFRec rows carry the gate's weight per modality.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from amfrec.data.dataset import PreparedData
from amfrec.errors import AmfrecError
from amfrec.io import read_json
from amfrec.recommender import Recommender
from amfrec.runs.rundir import run_info


class UnknownItems(AmfrecError):
    """Item ids that the run's data does not hold; `field` names the input they came from."""

    def __init__(self, field: str, ids: list[str], where: Path) -> None:
        self.field, self.ids = field, ids
        super().__init__(f"{field}: unknown item id(s) {', '.join(ids[:5])} (not in {where})")


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

    @classmethod
    def load(cls, run: str | Path) -> Ranker:
        run = Path(run)
        info = run_info(run)
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
        return cls(model=model, data=data, run=run, info=info, features=features, metrics=metrics)

    @property
    def is_amfrec(self) -> bool:
        return self.info["model"] == "amfrec"

    def indices(self, ids: list[str], field_name: str) -> list[int]:
        """Item ids -> item indices; raises UnknownItems naming the field."""
        unknown = [str(i) for i in ids if str(i) not in self.data.index]
        if unknown:
            raise UnknownItems(field_name, unknown, self.data.path)
        return [self.data.index[str(i)] for i in ids]

    def candidates(self, history: list[int], exclude_seen: bool) -> list[int]:
        """Every item (minus the history when exclude_seen); a seeded draw of C for the title head."""
        seen = set(history) if exclude_seen else set()
        pool = [i for i in range(1, self.data.n_items + 1) if i not in seen]
        if self.is_amfrec and getattr(self.model, "answer", None) == "title":
            g = torch.Generator().manual_seed(self.title_seed)
            n = self.data.valid.candidates.shape[1]
            pool = [pool[j] for j in torch.randperm(len(pool), generator=g)[:n].tolist()]
        return pool

    @torch.inference_mode()
    def rank(
        self,
        history: list[str],
        k: int | None = None,
        candidates: list[str] | None = None,
        exclude_seen: bool = True,
    ) -> list[dict[str, Any]]:
        """The top `k` (None = all) of the candidates for a history (ids oldest first); see the module doc."""
        hist = self.indices(history, "history")[-self.data.max_len :]
        if not hist:
            raise AmfrecError("history: give at least one item id")
        cand = self.indices(candidates, "candidates") if candidates else self.candidates(hist, exclude_seen)
        if not cand:
            raise AmfrecError("candidates: nothing left to rank")
        device = getattr(self.model, "device", torch.device("cpu"))
        h = torch.tensor([[0] * (self.data.max_len - len(hist)) + hist], device=device)  # (1, L)
        c = torch.tensor([cand], device=device)  # (1, C)
        scores = self.model.score(h, c)[0].float().cpu()  # (C,)
        order = torch.argsort(scores, descending=True, stable=True)[: k or len(cand)].tolist()
        top = [cand[j] for j in order]
        gates = self.gate_weights(top)
        rows = []
        for j, item in zip(order, top, strict=True):
            row = {"item_id": self.data.items[item].item_id, "title": self.data.titles[item]}
            row["score"] = float(scores[j])
            if gates is not None:
                row["gate"] = gates[item]
            rows.append(row)
        return rows

    @torch.inference_mode()
    def gate_weights(self, items: list[int]) -> dict[int, dict[str, float]] | None:
        """AMFRec: {item index: {modality: weight}} (the gate's, or mean fusion's equal shares); else None."""
        encoder = getattr(self.model, "item_encoder", None)
        if not self.is_amfrec or encoder is None or not items:
            return None
        out = encoder(torch.tensor([items], device=self.model.device), None)
        if out.weights is None:
            return None
        weights = out.weights[0].float().cpu().tolist()  # (S, M)
        mods = list(encoder.modalities)
        return {i: dict(zip(mods, w, strict=True)) for i, w in zip(items, weights, strict=True)}

    def modalities_present(self, item: int) -> dict[str, bool]:
        """AMFRec: which modalities the item has (from the item encoder's masks); baselines: {}."""
        encoder = getattr(self.model, "item_encoder", None)
        if not self.is_amfrec or encoder is None:
            return {}
        return {m: bool(getattr(encoder, f"mask{i}")[item]) for i, m in enumerate(encoder.modalities)}
