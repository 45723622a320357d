"""AMFRec checkpoints: only the trainable weights, the resolved config and the backbone's identity.

A checkpoint folder holds trainable.safetensors (the adapter's state_dict), config.yaml (resolved),
backbone.json (the frozen backbone's identity), optionally state.pt (optimizer, step, best metric: tensors
and plain containers only, loaded with weights_only=True) and manifest.json (format + sha256 of each file).
Loading verifies every file against the manifest, so a truncated or altered file is refused by name.
Folders written before the manifest existed (format amfrec-checkpoint/1) load with a warning.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from amfrec.config.model import AMFRecConfig
from amfrec.errors import AmfrecError
from amfrec.io import atomic_dir, file_sha256, read_json, read_text, read_yaml_mapping, write_json

log = logging.getLogger(__name__)

CHECKPOINT_DIR, LAST_DIR = "checkpoint", "last"
TRAINABLE_FILE, CONFIG_FILE, BACKBONE_FILE, STATE_FILE, MANIFEST_FILE = (
    "trainable.safetensors",
    "config.yaml",
    "backbone.json",
    "state.pt",
    "manifest.json",
)
FORMAT = "amfrec-checkpoint/2"
# What a model key added after the item_token head (2026-11-28) meant in a checkpoint written before the
# key existed (the defaults then, before the recipe became the defaults): filled in, so an old run loads as
# it was trained.
LEGACY_MODEL_DEFAULTS = {
    "new_item_control": False,
    "item_text": "title",
    "item_tokens": 32,
    "modality_dropout": {},
}


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's state_dict (the feature buffers are non-persistent, so: the trainable weights)."""
    return {k: v.detach().cpu().contiguous() for k, v in model.adapter.state_dict().items()}


def backbone_identity(model: nn.Module) -> dict:
    """The backbone's identity dict (model.backbone.identity, as amfrec.llm.backbone.Backbone has it)."""
    ident = getattr(getattr(model, "backbone", None), "identity", None)
    if ident is None:
        ident = getattr(model, "backbone_identity", None)
        ident = ident() if callable(ident) else ident
    return dict(ident or {})


def save_checkpoint(
    model: nn.Module, cfg: AMFRecConfig | None, directory: str | Path, state: dict | None = None
) -> Path:
    """Write `directory` atomically: trainable.safetensors, config.yaml, backbone.json (+ state.pt) and
    manifest.json with the sha256 of each."""
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        save_file(trainable_state(model), str(tmp / TRAINABLE_FILE), metadata={"format": FORMAT})
        (tmp / CONFIG_FILE).write_text(cfg.to_yaml() if cfg is not None else "{}\n", encoding="utf-8")
        write_json(tmp / BACKBONE_FILE, backbone_identity(model))
        if state is not None:
            torch.save(state, tmp / STATE_FILE)
        files = sorted(p.name for p in tmp.iterdir())
        write_json(
            tmp / MANIFEST_FILE, {"format": FORMAT, "sha256": {f: file_sha256(tmp / f) for f in files}}
        )
    return directory


def verify_checkpoint(directory: Path) -> None:
    """Check every file against manifest.json; raise AmfrecError naming the first missing or altered one."""
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.is_file():
        if (directory / TRAINABLE_FILE).is_file():
            log.warning("%s: no manifest (format amfrec-checkpoint/1); files not verified", directory)
            return
        raise AmfrecError(f"{directory}: not an AMFRec checkpoint (no {MANIFEST_FILE})")
    manifest = read_json(manifest_path)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else None
        raise AmfrecError(f"{manifest_path}: checkpoint format {got!r}, this amfrec reads {FORMAT!r}")
    for name, digest in sorted(manifest.get("sha256", {}).items()):
        path = directory / name
        if not path.is_file():
            raise AmfrecError(f"{path}: file not found (listed in {MANIFEST_FILE})")
        if file_sha256(path) != digest:
            raise AmfrecError(f"{path}: sha256 differs from {MANIFEST_FILE} (truncated or altered file)")


def load_checkpoint(directory: str | Path) -> tuple[dict[str, torch.Tensor], AMFRecConfig, dict]:
    """-> (adapter state_dict, resolved config, backbone identity). Missing or altered files raise
    AmfrecError naming the file."""
    directory = Path(directory)
    verify_checkpoint(directory)
    for name in (TRAINABLE_FILE, CONFIG_FILE, BACKBONE_FILE):
        if not (directory / name).is_file():
            raise AmfrecError(f"{directory / name}: file not found (not an AMFRec checkpoint)")
    state = load_file(str(directory / TRAINABLE_FILE))
    raw, text = read_yaml_mapping(directory / CONFIG_FILE), read_text(directory / CONFIG_FILE)
    identity = read_json(directory / BACKBONE_FILE)
    model = raw.get("model")
    older = {
        f"model.{k}": v
        for k, v in LEGACY_MODEL_DEFAULTS.items()
        if isinstance(model, dict) and k not in model
    }
    config = AMFRecConfig.from_mapping(raw, older, where=str(directory / CONFIG_FILE), text=text)
    return state, config, identity


def load_train_state(directory: str | Path) -> dict:
    """The optimizer and loop state saved beside the weights (for `--resume`)."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise AmfrecError(f"{path}: file not found (cannot resume)")
    return torch.load(path, map_location="cpu", weights_only=True)
