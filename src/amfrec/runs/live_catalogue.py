"""A loaded run's live catalogue: items added or replaced (`amfrec items add`, POST /items) and withdrawn
(`amfrec items remove`, DELETE /items/{id}), each change persisted in `RUN/catalogue.npz`
(`amfrec.runs.catalogue`) before it is applied to the ranker (`amfrec.runs.ranker.apply`)."""

from __future__ import annotations

import hashlib
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from amfrec.data.dataset import ItemInfo, PreparedData
from amfrec.errors import AmfrecError
from amfrec.features.build import default_posters_dir, poster_paths
from amfrec.io import atomic_path
from amfrec.runs.catalogue import IMAGES_DIR, Catalogue, LiveItem
from amfrec.runs.ranker import Ranker, apply, require_live_items


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
        self._posters = _prepared_posters(ranker.data)  # the prepared items' poster files, by item id
        self._vectors = None  # ItemVectors of the run's feature folder, made on first use
        self.version = 0  # counts the changes applied (readers cache what they derive from the items)

    def add(self, specs: list[ItemSpec]) -> dict[str, list[str]]:
        """Add or replace items (a replaced item's content is what `specs` says; a trained id is kept);
        each becomes available. Returns {"added": ids, "updated": ids}. AmfrecError naming the item and field
        on bad input, before anything is written."""
        ranker = self.ranker
        require_live_items(ranker)
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
        """The item's image file: the one given to a live item, else the prepared data's poster (if any)."""
        it = self.state.items.get(item_id)
        if it is not None and it.image is not None:
            return self.ranker.run / it.image
        return self._posters.get(item_id)

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


def _prepared_posters(data: PreparedData) -> dict[str, Path]:
    """Item id -> poster file of the prepared items (`posters/` beside the data's input item file)."""
    posters_dir = default_posters_dir(data)
    if posters_dir is None:
        return {}
    ids = [it.item_id for it in data.items[1:]]
    return {i: p for i, p in zip(ids, poster_paths(posters_dir, ids), strict=True) if p is not None}
