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

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from amfrec.data.dataset import ItemInfo
from amfrec.errors import AmfrecError
from amfrec.io import atomic_path

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
