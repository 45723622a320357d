"""A run's live catalogue: items added or updated after training, and items withdrawn, kept beside the run in
one file, `RUN/catalogue.npz`, that every ranking path (`amfrec serve`, `amfrec recommend`) applies on load.

- Adding an item computes its modality vectors with the run's own encoders (`amfrec.features.live`), the
  id absent, and writes them into the loaded model as rows of an item with no training interaction
  (`amfrec.model.live_items`): it is ranked exactly as if it had been in the data from the start, untrained.
- Withdrawing an item keeps it (its rows, its history entries) but never recommends it.
- A change is written to a temporary file, flushed to disk and renamed over the old one before it is applied
  or acknowledged: a crash leaves the previous or the new catalogue, whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from amfrec.data.dataset import ItemInfo
from amfrec.errors import AmfrecError
from amfrec.io import atomic_path

if TYPE_CHECKING:
    from amfrec.runs.ranker import Ranker

CATALOGUE_FILE = "catalogue.npz"
IMAGES_DIR = "catalogue-images"  # images given to added items, for the page (name = sha256 of the id)


@dataclass
class LiveItem:
    """An added or updated item: what the data would hold, its modality vectors (present ones only) and its
    image file beside the run (or None)."""

    info: ItemInfo
    vectors: dict[str, np.ndarray] = field(default_factory=dict)  # modality -> (d,) float32
    image: str | None = None

    def record(self) -> dict:
        it = self.info
        return {"item_id": it.item_id, "title": it.title, "year": it.year, "genres": list(it.genres),
                "fields": [list(f) for f in it.fields], "image": self.image}  # fmt: skip


@dataclass
class Catalogue:
    """The live state of a run's catalogue: `items` by id (first addition first), `withdrawn` ids."""

    items: dict[str, LiveItem] = field(default_factory=dict)
    withdrawn: set[str] = field(default_factory=set)

    @classmethod
    def load(cls, run: Path) -> Catalogue:
        """RUN/catalogue.npz, or an empty catalogue when there is none."""
        path = Path(run) / CATALOGUE_FILE
        if not path.is_file():
            return cls()
        try:
            with np.load(path, allow_pickle=False) as z:
                state = json.loads(str(z["state"]))
                arrays = {k: z[k] for k in z.files if k != "state"}
            items = {}
            for k, rec in enumerate(state["items"]):
                info = ItemInfo(str(rec["item_id"]), str(rec["title"]), rec.get("year"), tuple(rec["genres"]),
                                tuple((str(n), str(v)) for n, v in rec["fields"]))  # fmt: skip
                vectors = {m: arrays[f"vec.{m}"][k] for m in state["modalities"] if arrays[f"has.{m}"][k]}
                items[info.item_id] = LiveItem(info, vectors, rec.get("image"))
            return cls(items=items, withdrawn=set(state["withdrawn"]))
        except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
            raise AmfrecError(f"{path}: not a readable catalogue ({type(e).__name__}: {e})") from None

    def save(self, run: Path) -> None:
        """Write RUN/catalogue.npz atomically: temporary file, fsync, rename, fsync of the folder."""
        path = Path(run) / CATALOGUE_FILE
        items = list(self.items.values())
        dims = {m: v.shape[0] for it in items for m, v in it.vectors.items()}
        arrays = {}
        for m, d in sorted(dims.items()):
            arrays[f"vec.{m}"] = np.zeros((len(items), d), np.float32)
            arrays[f"has.{m}"] = np.zeros(len(items), np.bool_)
            for k, it in enumerate(items):
                if m in it.vectors:
                    arrays[f"vec.{m}"][k], arrays[f"has.{m}"][k] = it.vectors[m], True
        state = {"format": "amfrec-catalogue/1", "items": [it.record() for it in items],
                 "withdrawn": sorted(self.withdrawn), "modalities": sorted(dims)}  # fmt: skip
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, state=np.array(json.dumps(state)), **arrays)
            f.flush()
            os.fsync(f.fileno())
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def apply(ranker: Ranker, items: list[LiveItem]) -> list[int]:
    """Write `items` into the loaded ranker (its data and model); returns their item indices. Only AMFRec
    runs take new or changed items: their scores come from content; a baseline's come from training."""
    if not items:
        return []
    if not ranker.is_amfrec:
        raise AmfrecError(
            f"items: a {ranker.info['model']} run ranks only the items it was trained on; live items need an "
            "AMFRec run (withdrawing items works for every run)"
        )
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


@dataclass
class ItemSpec:
    """One item as a user gives it (`POST /items`, `amfrec items add`): id, text, an optional image file and
    optional vectors by modality."""

    item_id: str
    title: str
    year: str | None = None
    genres: tuple[str, ...] = ()
    fields: dict[str, str] = field(default_factory=dict)
    image: Path | None = None
    vectors: dict[str, list[float]] = field(default_factory=dict)


class LiveCatalogue:
    """The live catalogue of a loaded ranker: `add` / `remove` persist the change, then apply it."""

    def __init__(self, ranker: Ranker) -> None:
        self.ranker = ranker
        self.state = Catalogue.load(ranker.run)
        self._vectors = None  # ItemVectors of the run's feature folder, made on first use
        self.version = 0  # counts the changes applied (readers cache what they derive from the items)

    def add(self, specs: list[ItemSpec]) -> dict[str, list[str]]:
        """Add or replace items (a replaced item's content is what `specs` says; a trained id is kept);
        each becomes available. Returns {"added": ids, "updated": ids}. AmfrecError naming the item and field
        on bad input, before anything is written."""
        ranker = self.ranker
        if not ranker.is_amfrec:
            apply(ranker, [LiveItem(ItemInfo("", ""))])  # raises: only AMFRec runs take live items
        infos = [self._check(spec) for spec in self._unique(specs)]
        vectors = self._item_vectors()
        for spec in specs:
            vectors.check_given(spec.item_id, spec.vectors, spec.image is not None)
        rows = vectors.rows(infos, [s.image for s in specs], [s.vectors for s in specs])
        live = []
        for k, (spec, info) in enumerate(zip(specs, infos, strict=True)):
            own = {m: values[k] for m, (values, present) in rows.items() if present[k]}
            if spec.image is not None and "image" in vectors.entries and "image" not in own:
                raise AmfrecError(f"{spec.item_id}: image: {spec.image} is not a readable image")
            live.append(LiveItem(info, own, self._keep_image(spec)))
        added = [it.info.item_id for it in live if it.info.item_id not in ranker.data.index]
        state = Catalogue(items=dict(self.state.items), withdrawn=set(self.state.withdrawn))
        for it in live:
            state.items[it.info.item_id] = it
            state.withdrawn.discard(it.info.item_id)
        state.save(ranker.run)  # durable before it is applied or acknowledged
        with ranker.lock:
            apply(ranker, live)
            ranker.withdrawn = set(state.withdrawn)
        self.state = state
        self.version += 1
        return {"added": added, "updated": [it.info.item_id for it in live if it.info.item_id not in added]}

    def remove(self, ids: list[str]) -> list[str]:
        """Withdraw items (kept, never recommended); unknown ids raise AmfrecError. Returns the ids."""
        unknown = [i for i in ids if i not in self.ranker.data.index]
        if unknown:
            raise AmfrecError(f"item_id: unknown item id(s) {', '.join(unknown[:5])}")
        state = Catalogue(items=dict(self.state.items), withdrawn=self.state.withdrawn | set(ids))
        state.save(self.ranker.run)
        with self.ranker.lock:
            self.ranker.withdrawn = set(state.withdrawn)
        self.state = state
        self.version += 1
        return list(ids)

    def poster(self, item_id: str) -> Path | None:
        """The image file given to a live item, if any."""
        it = self.state.items.get(item_id)
        return None if it is None or it.image is None else self.ranker.run / it.image

    # ------------------------------------------------------------------------------------------- helpers
    def _unique(self, specs: list[ItemSpec]) -> list[ItemSpec]:
        if not specs:
            raise AmfrecError("items: give at least one item")
        seen = set()
        for spec in specs:
            if spec.item_id in seen:
                raise AmfrecError(f"{spec.item_id}: item_id: given twice")
            seen.add(spec.item_id)
        return specs

    def _check(self, spec: ItemSpec) -> ItemInfo:
        """The ItemInfo the data would hold for `spec`; AmfrecError naming the item and field."""
        iid = spec.item_id
        if not iid.strip() or iid != iid.strip() or re.search(r"[\t\r\n,]", iid) or len(iid) > 200:
            raise AmfrecError(f"{iid!r}: item_id: 1-200 characters, no tab, newline, comma or edge spaces")
        if not spec.title.strip():
            raise AmfrecError(f"{iid}: title: empty")
        order = self._field_names()
        unknown = [n for n in spec.fields if n not in order]
        if unknown:
            known = ", ".join(order) or "none"
            raise AmfrecError(
                f"{iid}: fields.{unknown[0]}: not a text field of this data (it has: {known}; year and "
                "genres are keys of their own)"
            )
        if spec.image is not None and not Path(spec.image).is_file():
            raise AmfrecError(f"{iid}: image: {spec.image} is not a file")
        fields = tuple((n, str(spec.fields.get(n, ""))) for n in order)
        return ItemInfo(iid, spec.title.strip(), spec.year or None, tuple(spec.genres), fields)

    def _field_names(self) -> list[str]:
        """The data's text fields beyond title, year and genres, in its order."""
        first = next((it for it in self.ranker.data.items[1:] if it.fields), None)
        return [n for n, _ in first.fields] if first else []

    def _item_vectors(self):
        from amfrec.features.live import ItemVectors

        if self._vectors is None:
            self._vectors = ItemVectors(self.ranker.features, list(self.ranker.model.item_encoder.modalities))
        return self._vectors

    def _keep_image(self, spec: ItemSpec) -> str | None:
        """Copy the item's image beside the run (for the page); its path relative to the run."""
        if spec.image is None:
            return None
        name = hashlib.sha256(spec.item_id.encode()).hexdigest()[:32] + Path(spec.image).suffix.lower()
        dest = self.ranker.run / IMAGES_DIR / name
        dest.parent.mkdir(exist_ok=True)
        with atomic_path(dest) as tmp:
            shutil.copyfile(spec.image, tmp)
        return f"{IMAGES_DIR}/{name}"
