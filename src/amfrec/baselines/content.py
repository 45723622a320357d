"""Content baselines: models that read the frozen item vectors (text, image) of a feature folder.

- `sasrec_content`: SASRec whose item table is a learned ID embedding plus a learned linear projection of
  each content modality (MoRec/UniSRec family, frozen encoders), for the input sequence and for scoring
  alike. An item with no training interactions has its ID part masked to zero, so its embedding is
  content-only and it can be scored although it was never trained on.
- `content_knn`: no training; a candidate's score is the cosine between its content vector and the
  recency-weighted mean of the history's content vectors (the floor any content model must beat).

Content vectors: each modality's rows L2-normalised and zeroed where the modality is absent (presence mask).
`content_knn` concatenates them and L2-normalises the concatenation (an item without any content is the
zero vector and scores 0). The `id` modality is never content.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from amfrec.baselines.nets import SASRecConfig, SASRecNet
from amfrec.baselines.sequential import SequentialRecommender
from amfrec.data.dataset import PreparedData, grown_rows
from amfrec.errors import AmfrecError
from amfrec.features.store import Modality, load_features, read_manifest
from amfrec.io import read_json, write_json
from amfrec.recommender import Recommender

log = logging.getLogger(__name__)

DEFAULT_MODALITIES = ("text", "image")


def _check_modalities(owner: str, modalities: object) -> list[str]:
    """A non-empty list of distinct modality names, `id` excluded; ValueError naming `owner`."""
    if isinstance(modalities, str) or not isinstance(modalities, list | tuple) or not modalities:
        raise ValueError(f"{owner}.modalities must be a non-empty list of names, got {modalities!r}")
    names = [str(m) for m in modalities]
    if "id" in names:
        raise ValueError(f"{owner}.modalities: 'id' is not content (a content model learns its own ids)")
    if len(set(names)) != len(names):
        raise ValueError(f"{owner}.modalities has duplicates: {names}")
    return names


@dataclass
class SASRecContentConfig(SASRecConfig):
    """SASRec's fields plus the content modalities (those the feature folder holds are used) and whether
    items without training interactions are negatives of the training softmax (default: they are not;
    nothing in the training data speaks about them)."""

    modalities: list[str] = field(default_factory=lambda: list(DEFAULT_MODALITIES))
    unseen_negatives: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        self.modalities = _check_modalities("SASRecContentConfig", self.modalities)
        if not isinstance(self.unseen_negatives, bool):
            raise ValueError(
                f"SASRecContentConfig.unseen_negatives must be true/false, got {self.unseen_negatives!r}"
            )


@dataclass
class ContentKNNConfig:
    """decay: weight of a history item `s` steps back from the most recent is decay ** s (1 = plain mean)."""

    decay: float = 0.8
    modalities: list[str] = field(default_factory=lambda: list(DEFAULT_MODALITIES))

    def __post_init__(self) -> None:
        d = self.decay
        if (
            isinstance(d, bool)
            or not isinstance(d, int | float)
            or not math.isfinite(d)
            or not 0.0 < d <= 1.0
        ):
            raise ValueError(f"ContentKNNConfig.decay must be a number in (0, 1], got {d!r}")
        self.decay = float(d)
        self.modalities = _check_modalities("ContentKNNConfig", self.modalities)


def load_content(features: str | Path, n_items: int, modalities: list[str]) -> dict[str, Modality]:
    """The modalities of `modalities` that feature folder `features` holds, loaded and validated (in that
    order). AmfrecError naming the manifest when it holds none of them."""
    features = Path(features)
    available = read_manifest(features)["modalities"]
    names = [m for m in modalities if m in available]
    if not names:
        raise AmfrecError(
            f"{features / 'manifest.json'}: none of the content modalities {modalities} "
            f"(available: {', '.join(sorted(available)) or 'none'})"
        )
    skipped = [m for m in modalities if m not in available]
    if skipped:
        log.info("content modalities %s (not in %s: %s)", names, features, skipped)
    return load_features(features, n_items, names)


def unit_rows(modality: Modality) -> torch.Tensor:
    """(n_items + 1, d) float32: the rows L2-normalised, absent rows (and zero rows) zero."""
    return F.normalize(modality.values.float(), dim=1) * modality.present.unsqueeze(1)


def content_vectors(features: Mapping[str, Modality]) -> torch.Tensor:
    """(n_items + 1, sum of dims): per-modality unit rows (absent = 0) concatenated, then L2-normalised."""
    return F.normalize(torch.cat([unit_rows(m) for m in features.values()], dim=1), dim=1)


def history_cosines(table: torch.Tensor, history: torch.Tensor, decay: float) -> torch.Tensor:
    """table (n_items + 1, D) unit or zero rows (``content_vectors``), history (B, L) left-padded -> (B,
    n_items + 1) float32: each item's cosine with the history's mean row, the item `s` steps back from the
    most recent weighted decay ** s; 0 where the history or the item has no content."""
    table = table.float()
    real = history != 0  # (B, L)
    steps = real.flip(1).cumsum(1).flip(1) - real.long()  # (B, L) real items after each position
    weights = (decay ** steps.double()).float() * real  # (B, L)
    user = F.normalize(torch.einsum("bl,bld->bd", weights, table[history]), dim=1)  # (B, D)
    return user @ table.T  # (B, n_items + 1)


# ----------------------------------------------------------------------------------------------
# sasrec_content


class ContentEmbedding(nn.Module):
    """Stands in for SASRec's nn.Embedding: item table = seen * ID row + sum_m Linear_m(unit row of m).

    `weight` is the (n_items + 1, H) table (recomputed on every access, so gradients reach the projections);
    calling the module with indices (...) gives (..., H). `seen` (n_items + 1,) bool masks the ID part
    (False for padding and for items without training interactions, whose rows are content-only). The
    content rows are frozen, non-persistent buffers: they come from the feature folder, not the weights.
    """

    def __init__(self, ids: nn.Embedding, features: Mapping[str, Modality], seen: torch.Tensor) -> None:
        super().__init__()
        self.ids = ids
        self.embedding_dim = ids.embedding_dim
        self.modalities = list(features)
        self.proj = nn.ModuleDict(
            {m: nn.Linear(f.dim, ids.embedding_dim, bias=False) for m, f in features.items()}
        )
        self.register_buffer("seen", seen.bool().clone())  # (n_items + 1,)
        self.set_features(features)

    def set_features(self, features: Mapping[str, Modality]) -> None:
        """Replace the frozen content rows (same modalities, dims and item count as at construction)."""
        rows = self.ids.num_embeddings
        if list(features) != self.modalities:
            raise AmfrecError(
                f"content modalities {list(features)}, the model was built on {self.modalities}"
            )
        for i, (name, mod) in enumerate(features.items()):
            if tuple(mod.values.shape) != (rows, self.proj[name].in_features):
                raise AmfrecError(
                    f"modality {name!r}: features of shape {tuple(mod.values.shape)}, the model needs "
                    f"({rows}, {self.proj[name].in_features})"
                )
            rows_m = unit_rows(mod).to(self.ids.weight.device)  # (n_items + 1, d)
            self.register_buffer(f"content{i}", rows_m, persistent=False)

    def set_items(self, index: torch.Tensor, rows: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Write item rows after training (a live catalogue): index (A,) long, existing items or the next
        new indices (``grown_rows``); rows: modality -> (values (A, d), present (A,)), unit-normalised here;
        a modality not in `rows` keeps an existing item's row. A new item has no ID part (unseen)."""
        n_rows = grown_rows(index, self.ids.num_embeddings - 1)
        grow = n_rows - self.ids.num_embeddings
        weight = self.ids.weight.detach()
        self.ids.weight = nn.Parameter(torch.cat([weight, weight.new_zeros(grow, weight.shape[1])]), False)
        self.ids.num_embeddings = n_rows
        self.seen = torch.cat([self.seen, self.seen.new_zeros(grow)])  # (n_rows,)
        for i, name in enumerate(self.modalities):
            content = getattr(self, f"content{i}")
            content = torch.cat([content, content.new_zeros(grow, content.shape[1])])  # (n_rows, d)
            if name in rows:
                values, present = rows[name]
                unit = F.normalize(values.float(), dim=1) * present.bool()[:, None]  # (A, d), absent = 0
                content[index.to(content.device)] = unit.to(content)
            setattr(self, f"content{i}", content)

    @property
    def weight(self) -> torch.Tensor:
        """(n_items + 1, H) the item table."""
        ids = self.ids.weight * self.seen.unsqueeze(1).to(self.ids.weight.dtype)  # (n_items + 1, H)
        return ids + self.content_weight()

    def content_weight(self) -> torch.Tensor:
        """(n_items + 1, H) the table without its ID part: every item as an unseen one is scored."""
        table = torch.zeros_like(self.ids.weight)
        for i, name in enumerate(self.modalities):
            table = table + self.proj[name](getattr(self, f"content{i}"))  # absent rows project to 0
        return table

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        """index (...) long -> (..., H)."""
        return self.weight[index]


class SASRecContent(SequentialRecommender):
    """SASRec over ID + projected frozen content embeddings (shared trainer and network of sequential.py).

    Call `use_features({name: Modality})` (see `load_content`) before `fit`; `load` takes the feature folder.
    """

    name = "sasrec_content"
    config_cls = SASRecContentConfig
    net_cls = SASRecNet
    weights_file = "sasrec_content.safetensors"

    def __init__(self, config: SASRecContentConfig | None = None) -> None:
        super().__init__(config)
        self.features: dict[str, Modality] | None = None
        self.seen: torch.Tensor | None = None  # (n_items + 1,) bool, set by fit

    def use_features(self, features: Mapping[str, Modality]) -> None:
        """Set the frozen content rows (before fit; after fit/load: swap them, same modalities and dims)."""
        self.features = dict(features)
        if self.net is not None:
            self.net.item_emb.set_features(self.features)

    def _build(self, n_items: int, max_len: int) -> nn.Module:
        if self.features is None:
            raise RuntimeError("SASRecContent needs use_features(...) before fit/load")
        net = super()._build(n_items, max_len)
        seen = self.seen if self.seen is not None else torch.ones(n_items + 1, dtype=torch.bool)
        net.item_emb = ContentEmbedding(net.item_emb, self.features, seen)
        return net

    def fit(self, data: PreparedData, seed: int) -> dict:
        """SASRec's training; items with no training interactions get no ID part (and, unless
        `unseen_negatives`, are no class of the training softmax)."""
        self.seen = data.item_train_counts > 0  # (n_items + 1,)
        self.seen[0] = False
        info = super().fit(data, seed)
        return {**info, "modalities": list(self.features or {}), "items_unseen": int((~self.seen[1:]).sum())}

    def _train_logits(self, reps: torch.Tensor) -> torch.Tensor:
        """reps (M, H) -> (M, n_items); unseen items at -inf unless config.unseen_negatives."""
        logits = super()._train_logits(reps)  # (M, n_items)
        if self.config.unseen_negatives or self.seen is None:
            return logits
        return logits.masked_fill(~self.seen[1:].to(logits.device), float("-inf"))

    @classmethod
    def load(
        cls, run_dir: str | Path, data: PreparedData | None = None, features: str | Path | None = None
    ) -> SASRecContent:
        """Rebuild from RUN/sasrec_content.safetensors and the feature folder `features` (required)."""
        config, n_items, max_len, state = cls._read_weights(run_dir, data)
        if features is None:
            raise AmfrecError(f"{run_dir}: sasrec_content needs its feature folder to load")
        model = cls(config)
        model.use_features(load_content(features, n_items, config.modalities))
        try:
            model._restore(n_items, max_len, state)
        except RuntimeError as e:  # projection shapes or modality names differ from the weights
            first = str(e).strip().splitlines()[0]
            raise AmfrecError(
                f"{Path(run_dir) / cls.weights_file}: does not fit features {features} ({first})"
            ) from None
        model.seen = model._require_net().item_emb.seen.clone()
        return model


# ----------------------------------------------------------------------------------------------
# content_knn


class ContentKNN(Recommender):
    """Cosine between a candidate's content vector and the recency-weighted mean of the history's."""

    name = "content_knn"
    settings_file = "content_knn.json"

    def __init__(self, config: ContentKNNConfig | None = None) -> None:
        self.config = config if config is not None else ContentKNNConfig()
        self.table: torch.Tensor | None = None  # (n_items + 1, D) unit or zero rows
        self.dims: dict[str, int] = {}

    def use_features(self, features: Mapping[str, Modality]) -> None:
        self.table = content_vectors(features)
        self.dims = {name: m.dim for name, m in features.items()}

    def _require_table(self) -> torch.Tensor:
        if self.table is None:
            raise RuntimeError("ContentKNN used before use_features/load")
        return self.table

    def fit(self, data: PreparedData, seed: int) -> dict:
        """Nothing to learn (seed unused); checks the features cover the data's items."""
        table = self._require_table()
        if table.shape[0] != data.n_items + 1:
            raise AmfrecError(f"{data.path}: {data.n_items} items, the content covers {table.shape[0] - 1}")
        with_content = int((table[1:].abs().sum(dim=1) > 0).sum())
        log.info("content_knn: %d of %d items have content (%s)", with_content, data.n_items, list(self.dims))
        return {"items_with_content": with_content, "modalities": list(self.dims), "decay": self.config.decay}

    @torch.no_grad()
    def score(self, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """history (B, L) left-padded, candidates (B, C) -> (B, C) cosines in [-1, 1]; 0 where the history
        or the candidate has no content."""
        table = self._require_table().to(history.device)
        # (B, n_items + 1) cosines, then the candidates' columns: no (B, C, D) gather when C is the catalogue
        return history_cosines(table, history, self.config.decay).gather(1, candidates)  # (B, C)

    def save(self, out_dir: str | Path) -> None:
        """Write content_knn.json (config, item count, modality dims); the vectors stay in the features."""
        table = self._require_table()
        write_json(
            Path(out_dir) / self.settings_file,
            {
                "model": self.name,
                "config": dataclasses.asdict(self.config),
                "n_items": int(table.shape[0] - 1),
                "modalities": self.dims,
            },
        )

    @classmethod
    def load(cls, run_dir: str | Path, data: PreparedData, features: str | Path) -> ContentKNN:
        """Rebuild from RUN/content_knn.json and the feature folder `features`."""
        path = Path(run_dir) / cls.settings_file
        saved = read_json(path)
        try:
            config = ContentKNNConfig(**saved["config"])
            n_items, dims = int(saved["n_items"]), dict(saved["modalities"])
        except (KeyError, TypeError, ValueError) as e:
            raise AmfrecError(f"{path}: bad or missing fields ({e})") from None
        if n_items != data.n_items:
            raise AmfrecError(f"{path}: made for {n_items} items, the data has {data.n_items}")
        model = cls(config)
        names = [m for m in config.modalities if m in dims]  # the training order (JSON sorts keys)
        model.use_features(load_content(features, n_items, names))
        if model.dims != dims:
            raise AmfrecError(f"{path}: made with modalities {dims}, features {features} give {model.dims}")
        return model
