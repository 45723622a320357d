"""`amfrec features`: build every requested modality of a prepared data directory, cached.

Each modality's cache key = hash(encoder info + input content hash + code version) (store.cache_key). When
the feature directory already holds a modality with the same key (and its files are valid), it is reused and
nothing is encoded ("cached" in the log); a changed input or encoder re-encodes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from amfrec.data.dataset import PreparedData
from amfrec.data.images import IMAGE_SUFFIXES
from amfrec.errors import AmfrecError
from amfrec.features.store import (
    cache_key,
    check_values,
    import_npy,
    load_features,
    read_ids,
    read_manifest,
    sha256_json,
    write_manifest,
    write_modality,
)
from amfrec.io import file_sha256

log = logging.getLogger(__name__)

BUILT_IN = ("id", "text", "image")
CHUNK = 512  # items per encoder call (one progress-bar step); results stream into the memmapped output


def default_posters_dir(data: PreparedData) -> Path | None:
    """`<folder of D's input item file>/posters`, if D's manifest names its input and that folder exists."""
    item_path = (data.manifest.get("inputs") or {}).get("item", {}).get("path")
    if not item_path:
        return None
    posters = Path(item_path).parent / "posters"
    return posters if posters.is_dir() else None


def default_vectors(data: PreparedData, names: list[str]) -> dict[str, dict]:
    """Import specs of precomputed vectors shipped with the raw data: for each modality NAME in `names`,
    `<folder of D's input item file>/image/NAME.npy` (float32 (R, d)) with `image/NAME_items.txt` (one item
    id per line; row r = line r), when both exist. E.g. amazon-scientific's `image/image.npy` -> `image`."""
    item_path = (data.manifest.get("inputs") or {}).get("item", {}).get("path")
    if not item_path:
        return {}
    folder = Path(item_path).parent / "image"
    found = {}
    for name in names:
        matrix, ids = folder / f"{name}.npy", folder / f"{name}_items.txt"
        if matrix.is_file() and ids.is_file():
            found[name] = {"matrix": matrix, "ids": ids}
            log.info("%s: importing %s (found beside the raw data)", name, matrix)
    return found


def poster_paths(posters: Path, item_ids: list[str]) -> list[Path | None]:
    """`posters/<item_id>.jpg` (or .jpeg/.png) per item; None where no file exists."""
    names = {p.name: p for p in posters.iterdir()}
    out: list[Path | None] = []
    for item_id in item_ids:
        out.append(next((names[f"{item_id}{s}"] for s in IMAGE_SUFFIXES if f"{item_id}{s}" in names), None))
    return out


def _chunks(n: int, desc: str) -> Iterator[tuple[np.ndarray, tqdm]]:
    bar = tqdm(total=n, desc=desc, unit="item")
    for start in range(0, n, CHUNK):
        yield np.arange(start, min(start + CHUNK, n)), bar
    bar.close()


# --------------------------------------------------------------------------------------------- per modality
class _Job:
    """One modality to build: its encoder info, input hash, and how to produce values lazily."""

    def __init__(self, name: str, encoder_info: dict, input_sha256: str, produce: Callable) -> None:
        self.name, self.encoder_info, self.input_sha256 = name, encoder_info, input_sha256
        self.produce = produce  # () -> (values ndarray | iterable of (rows, batch), present, dim)
        self.key = cache_key(encoder_info, input_sha256)


def _text_job(data: PreparedData, text_encoder: str | None, batch_size: int) -> _Job:
    from amfrec.features.text import TextEncoder

    texts = [it.text() for it in data.items[1:]]  # row k = item index k (k >= 1)
    enc = TextEncoder(text_encoder)

    def produce():
        dim = enc.dim()
        present = np.ones(data.n_items + 1, dtype=np.bool_)

        def batches():
            for idx, bar in _chunks(len(texts), "text"):
                vals = enc.encode([texts[i] for i in idx], batch_size=batch_size, progress=False)
                bar.update(len(idx))
                yield idx + 1, vals

        return batches(), present, dim

    return _Job("text", enc.info(), sha256_json(texts), produce)


def _image_job(data: PreparedData, posters: Path, image_encoder: str | None, batch_size: int) -> _Job:
    from amfrec.features.image import ImageEncoder

    item_ids = [it.item_id for it in data.items[1:]]
    paths = poster_paths(posters, item_ids)
    n_files = sum(p is not None for p in paths)
    log.info("image: %d of %d items have a picture in %s", n_files, len(paths), posters)
    content = [(i, None if p is None else file_sha256(p)) for i, p in zip(item_ids, paths, strict=True)]
    enc = ImageEncoder(image_encoder, batch_size=min(batch_size, 32))

    def produce():
        present = np.zeros(data.n_items + 1, dtype=np.bool_)  # filled by the generator as images are read

        def batches():
            unreadable = 0
            for idx, bar in _chunks(len(paths), "image"):
                vals, ok = enc.encode([paths[i] for i in idx], progress=False)  # (b, d), (b,)
                bar.update(len(idx))
                unreadable += enc.last_counts["unreadable"]
                present[idx[ok] + 1] = True
                yield idx[ok] + 1, vals[ok]
            log.info(
                "image: %d present, %d without a picture, %d unreadable (absent)",
                int(present.sum()),
                len(paths) - n_files,
                unreadable,
            )

        return batches(), present, enc.dim()

    return _Job("image", enc.info(), sha256_json(content), produce)


def _id_job(data: PreparedData, id_from: Path | None) -> _Job:
    """The id modality: the item-embedding table of a trained SASRec run (`id_from`)."""
    if id_from is None:
        raise AmfrecError(
            "id modality: needs id_from, a SASRec run folder with item_embeddings.npy "
            "(`amfrec features` trains one when --id-from is not given)"
        )
    path = Path(id_from) / "item_embeddings.npy"
    if not path.is_file():
        raise AmfrecError(f"{path}: file not found (--id-from must be a SASRec run directory)")
    file_sha = file_sha256(path)
    untrained = _untrained(data)

    def produce():
        arr = np.load(path, allow_pickle=False)
        check_values(path, arr, data.n_items + 1, None)
        present = np.ones(data.n_items + 1, dtype=np.bool_)
        values = np.asarray(arr, dtype=np.float32)  # copied with the untrained rows zeroed
        return (*_absent_untrained(values, present, untrained, data.n_items), arr.shape[1])

    info = {"name": "sasrec item embeddings", "version": str(path.resolve()), "file_sha256": file_sha}
    return _Job("id", info, sha256_json([file_sha, np.flatnonzero(untrained).tolist()]), produce)


def _untrained(data: PreparedData) -> np.ndarray:
    """(n_items + 1,) bool: the items no training window holds (e.g. the new items of the new-item protocol;
    row 0, the padding, False)."""
    untrained = (data.item_train_counts == 0).numpy()
    untrained[0] = False
    return untrained


def _absent_untrained(
    values: np.ndarray, present: np.ndarray, untrained: np.ndarray, n_items: int
) -> tuple[np.ndarray, np.ndarray]:
    """An id table's rows of untrained items made absent (mask False, row zero): nothing in the training
    data can have taught them, so a value there came from elsewhere (a leak) or is noise."""
    present, values = present & ~untrained, values.copy()
    values[untrained] = 0.0
    log.info("id: %d of %d items have no training interaction: absent", int(untrained.sum()), n_items)
    return values, present


def _import_job(name: str, spec: dict, data: PreparedData) -> _Job:
    if "matrix" not in spec or "ids" not in spec:
        raise AmfrecError(f"import of modality {name!r}: needs 'matrix' and 'ids'")
    matrix = Path(spec["matrix"])
    if not matrix.is_file():
        raise AmfrecError(f"{matrix}: file not found")
    ids = spec["ids"]
    # an imported id table is masked as a built one is: the rows of items without training interactions absent
    untrained = _untrained(data) if name == "id" else None
    key = read_ids(ids) if untrained is None else [read_ids(ids), np.flatnonzero(untrained).tolist()]
    ids_sha = sha256_json(key)

    def produce():
        values, present = import_npy(matrix, ids, data, dim=spec.get("dim"))
        if untrained is not None:
            values, present = _absent_untrained(values, present, untrained, data.n_items)
        return values, present, values.shape[1]

    info = {"name": f"import {matrix.name}", "version": "npy", "file_sha256": file_sha256(matrix)}
    return _Job(name, info, ids_sha, produce)


# --------------------------------------------------------------------------------------------- entry point
def _cached_entry(out: Path, manifest: dict | None, job: _Job, n_items: int) -> dict | None:
    """The existing manifest entry for `job` if its cache key matches and its files load and validate."""
    if manifest is None:
        return None
    entry = manifest["modalities"].get(job.name)
    if entry is None or entry.get("cache_key") != job.key:
        return None
    try:
        load_features(out, n_items, [job.name])
    except AmfrecError as e:
        log.warning("%s: cached files invalid (%s); re-encoding", job.name, e)
        return None
    return entry


def build_features(
    data_dir: Path,
    out: Path,
    modalities: list[str] | None = None,
    posters: Path | None = None,
    id_from: Path | None = None,
    text_encoder: str | None = None,
    image_encoder: str | None = None,
    import_specs: dict | None = None,
    batch_size: int = 64,
) -> dict:
    """Build (or reuse from cache) the requested modalities of prepared directory `data_dir` into `out`.

    modalities: names among id/text/image (default all three) plus any names in `import_specs`
    ({name: {"matrix": path.npy, "ids": path | list, "dim": optional int}}), which are imported, not encoded;
    so are the requested modalities (but id, and image when `posters` is given) that the raw data ships as
    vectors (`default_vectors`: image/NAME.npy + image/NAME_items.txt beside the item file). The id rows of
    items without a training interaction are absent.
    Returns the written manifest; its "timings_s" records the seconds spent per modality in this call.
    """
    data_dir, out = Path(data_dir), Path(out)
    modalities = list(BUILT_IN) if modalities is None else list(modalities)
    import_specs = dict(import_specs or {})
    modalities += [m for m in import_specs if m not in modalities]
    unknown = [m for m in modalities if m not in BUILT_IN and m not in import_specs]
    if unknown:
        raise AmfrecError(
            f"unknown modality {unknown[0]!r}: choose from {', '.join(BUILT_IN)} or give it an import spec"
        )
    data = PreparedData.load(data_dir)
    items_sha = file_sha256(data_dir / "items.jsonl")
    wanted = [m for m in modalities if m not in import_specs and m != "id" and not (m == "image" and posters)]
    import_specs.update(default_vectors(data, wanted))

    existing = None
    if (out / "manifest.json").is_file():
        existing = read_manifest(out)
        if existing.get("data", {}).get("items_sha256") != items_sha:
            log.info("%s: built for other items; rebuilding every modality", out)
            existing = None
    entries: dict = dict(existing["modalities"]) if existing else {}

    if "image" in modalities and "image" not in import_specs:
        posters = Path(posters) if posters is not None else default_posters_dir(data)
        if posters is None:
            raise AmfrecError(
                f"image modality: no picture folder (none given with --posters, no posters/ beside the input "
                f"of {data_dir / 'manifest.json'})"
            )
        if not posters.is_dir():
            raise AmfrecError(f"{posters}: picture folder not found")

    timings: dict[str, float] = {}
    for name in modalities:
        t0 = time.perf_counter()
        if name in import_specs:
            job = _import_job(name, import_specs[name], data)
        elif name == "text":
            job = _text_job(data, text_encoder, batch_size)
        elif name == "image":
            job = _image_job(data, posters, image_encoder, batch_size)
        else:
            job = _id_job(data, id_from)
        cached = _cached_entry(out, existing, job, data.n_items)
        if cached is not None:
            log.info("%s: cached (%s)", name, job.key[:12])
            entries[name] = cached
        else:
            values, present, dim = job.produce()
            entries[name] = write_modality(
                out, name, values, present, job.encoder_info, job.input_sha256, dim=dim
            )
            log.info("%s: %d of %d present, %d-d", name, entries[name]["present"], data.n_items, dim)
        timings[name] = round(time.perf_counter() - t0, 3)
        write_manifest(out, data_dir.resolve(), items_sha, entries)  # after each modality: progress survives
    manifest = write_manifest(out, data_dir.resolve(), items_sha, entries)
    manifest["timings_s"] = timings
    return manifest


def parse_import_spec(text: str) -> tuple[str, dict]:
    """`NAME=MATRIX.npy:IDS` (the CLI's --import) -> (name, {"matrix", "ids"})."""
    name, sep, rest = text.partition("=")
    matrix, sep2, ids = rest.partition(":")
    if not sep or not sep2 or not name or not matrix or not ids:
        raise AmfrecError(f"--import {text!r}: expected NAME=MATRIX.npy:IDS_FILE")
    return name, {"matrix": matrix, "ids": ids}
