"""A faster forward of a frozen Llama-family decoder (Llama, SmolLM2, Qwen2): the same function as the
transformers decoder, with less work around the matrix products.

Profiled on a 2-core AMX CPU (bfloat16, SmolLM2-135M, batch 8 x 256, forward + input-gradient backward),
the transformers forward spends most of a step outside its matrix products: its RMSNorm casts every
activation to float32 and back, rotary embedding builds `cat((-x2, x1))` per query and key, and CPU flash
attention's bfloat16 backward took 5-8x its forward. Here, one function per layer (`_layer`) does:

- RMSNorm without a float32 copy of the activations (`x * rsqrt(mean(x^2) + eps)`, the mean accumulated
  in float32);
- rotary embedding as `x * cos + swap_halves(x) * sin_signed` (one `cat`, one `addcmul`);
- the decoder's own weights, read in place (no copy: fusing q/k/v and gate/up into single products was
  only 2% faster here and would double the weights' memory);
- attention, in a bfloat16 training step (prompts up to `PRODUCTS_MAX_LEN` tokens), as two batched
  products around a softmax (its backward is 2x faster than flash attention's here; grouped query heads
  stacked, not key/value heads copied: 1.2x faster steps); `scaled_dot_product_attention` (flash attention)
  without gradients (its forward is the faster one; evaluation as fast as transformers' then), in
  float32 (1.05-1.25x faster than the products there) and for longer prompts;
- and, with `compile=True`, `torch.compile` of that function for static shapes: the element-wise work
  around the products fused into a few loops (`amfrec bench`'s bfloat16 step 1.7x faster here, after
  ~10 s of compilation per shape; one graph serves every layer). Prompts are left-padded to a multiple of
  `PAD_MULTIPLE` tokens so that few shapes occur (dynamic shapes compiled to code 2.4x slower than eager
  here).

Padding: rows are left-padded (`attention_mask` (B, T), 1 = token). A padding query attends to itself only,
so no row of the softmax is empty (its output is never read). Position ids come from the caller.
Only a plain 2-D mask without a KV cache takes this path (`Backbone.decode` falls back to transformers for
cached or custom-masked decoding), and only on CPU, where it was measured: on a GPU (none was at hand)
transformers' forward and its fused kernels stay.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SUPPORTED_LAYERS = ("LlamaDecoderLayer", "Qwen2DecoderLayer")
PAD_MULTIPLE = 32  # compiled: sequence lengths rounded up to this (each new shape compiles once)
# Longer prompts take flash attention in bfloat16 too: the products keep (B, H, T, T) scores per layer for the
# backward pass (16 prompts of 512 tokens: 75 MB a layer), flash attention does not.
PRODUCTS_MAX_LEN = 512


def unsupported_reason(decoder: nn.Module) -> str | None:
    """Why `decoder` (a transformers base model) cannot take the fast path, or None when it can."""
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        return "no decoder layer list"
    kinds = {type(layer).__name__ for layer in layers}
    if not kinds <= set(SUPPORTED_LAYERS):
        return f"layer type {sorted(kinds)} (fast path: {list(SUPPORTED_LAYERS)})"
    config = decoder.config
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r}"
    if getattr(config, "mlp_bias", False) or getattr(config, "use_sliding_window", False):
        return "an MLP bias or sliding-window attention"
    if not hasattr(decoder, "rotary_emb") or not hasattr(decoder, "norm"):
        return "no rotary embedding or final norm module"
    return None


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of (..., d) in x's dtype; the mean of squares accumulated in float32 (no float32 copy of x)."""
    scale = torch.rsqrt(x.pow(2).mean(-1, keepdim=True, dtype=torch.float32) + eps).to(x.dtype)
    return x * scale * weight


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x (B, T, H, hd): x * cos + (x2, x1) * (-sin, sin), cos/sin (B, T, 1, hd)."""
    half = x.shape[-1] // 2
    return torch.addcmul(x * cos, torch.cat((x[..., half:], x[..., :half]), -1), sin_signed)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float):
    """q (B, H, T, hd), k/v (B, Hkv, T, hd), bias (B, 1, T, T) additive -> (B, H, T, hd).

    `grouped_attention` when gradients flow back through it in bfloat16, up to PRODUCTS_MAX_LEN keys (CPU
    flash attention's bfloat16 backward is the slow one; its forward is 2-5x faster than the products'), else
    `scaled_dot_product_attention`."""
    training = torch.is_grad_enabled() and q.requires_grad
    if q.dtype == torch.float32 or not training or k.shape[2] > PRODUCTS_MAX_LEN:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale, enable_gqa=True)
    return grouped_attention(q, k, v, bias, scale)


def grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float):
    """Attention as two batched products around a softmax, the query heads that share a key/value head
    stacked into one product (no copies of k and v): head h reads key/value head h // (H / Hkv), as
    transformers' `repeat_kv` has it. q (B, H, Tq, hd), k/v (B, Hkv, Tk, hd), bias (B, 1, Tq, Tk)."""
    B, H, Tq, hd = q.shape
    kv_heads, rep, Tk = k.shape[1], H // k.shape[1], k.shape[2]
    scores = torch.matmul(q.reshape(B, kv_heads, rep * Tq, hd), k.transpose(-1, -2))  # (B, Hkv, rep * Tq, Tk)
    scores = scores.view(B, kv_heads, rep, Tq, Tk) * scale + bias[:, :, None]  # (B, Hkv, rep, Tq, Tk)
    return torch.matmul(scores.softmax(-1).view(B, kv_heads, rep * Tq, Tk), v).view(B, H, Tq, hd)


def layer_weights(layer: nn.Module) -> tuple:
    """The tensors `_layer` reads from a transformers decoder layer (biases may be None), in its order."""
    a, m = layer.self_attn, layer.mlp
    return (
        layer.input_layernorm.weight,
        a.q_proj.weight, a.q_proj.bias, a.k_proj.weight, a.k_proj.bias, a.v_proj.weight, a.v_proj.bias,
        a.o_proj.weight, a.o_proj.bias,
        layer.post_attention_layernorm.weight,
        m.gate_proj.weight, m.up_proj.weight, m.down_proj.weight,
    )  # fmt: skip


def _layer(
    x: torch.Tensor,
    w: tuple,
    eps: float,
    scale: float,
    cos: torch.Tensor,
    sin: torch.Tensor,
    bias: torch.Tensor,
    last: bool = False,
) -> torch.Tensor:
    """One decoder layer: x (B, T, d) -> (B, T, d), as the transformers layer computes it; with `last`, only
    the last position's output (B, 1, d) (keys and values still from every position).

    w = layer_weights(layer): the weights come in as arguments (not the module), so one compiled graph serves
    every layer."""
    g1, wq, bq, wk, bk, wv, bv, wo, bo, g2, wg, wu, wd = w
    B, T, _ = x.shape
    Tq = 1 if last else T  # query positions
    hd = cos.shape[-1]
    h = _rms(x, g1, eps)
    # 2-D rows: a strided (B, 1, d) slice made F.linear a batched product over a copy of the weight per row
    q = F.linear(h[:, -Tq:].reshape(B * Tq, -1), wq, bq).view(B, Tq, -1, hd)
    q = _rotate(q, cos[:, -Tq:], sin[:, -Tq:]).transpose(1, 2)  # (B, H, Tq, hd)
    k = _rotate(F.linear(h, wk, bk).view(B, T, -1, hd), cos, sin).transpose(1, 2)  # (B, Hkv, T, hd)
    v = F.linear(h, wv, bv).view(B, T, -1, hd).transpose(1, 2)  # (B, Hkv, T, hd)
    o = _attention(q, k, v, bias[:, :, -Tq:], scale).transpose(1, 2).reshape(B, Tq, -1)  # (B, Tq, H * hd)
    x = x[:, -Tq:] + F.linear(o, wo, bo)
    h = _rms(x, g2, eps)
    return x + F.linear(F.silu(F.linear(h, wg)) * F.linear(h, wu), wd)


def attention_bias(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) 1/0 mask of left-padded rows -> (B, 1, T, T) additive bias: 0 where query i may see key j
    (j <= i and j is a token, or j == i), the dtype's minimum elsewhere."""
    T = attention_mask.shape[1]
    idx = torch.arange(T, device=attention_mask.device)
    causal = idx[None, :] <= idx[:, None]  # (T, T)
    allowed = (causal & attention_mask.bool()[:, None, :]) | torch.eye(T, dtype=torch.bool, device=idx.device)
    zero = torch.zeros((), dtype=dtype, device=idx.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)[:, None]  # (B, 1, T, T)


class FastDecoder:
    """Runs a frozen transformers decoder layer by layer on the decoder's own weights (see the module doc).

    Holds no weights of its own: `decoder.layers` is read at every call (so truncated layers count).
    checkpoint: recompute each layer in the backward pass (gradient checkpointing) while gradients are on.
    """

    def __init__(self, decoder: nn.Module, compile: bool = False, checkpoint: bool = False) -> None:
        reason = unsupported_reason(decoder)
        if reason is not None:
            raise ValueError(f"fast decoder: unsupported model ({reason})")
        self.decoder, self.checkpoint = decoder, checkpoint
        self.compiled = compile
        self.layer_fn = torch.compile(_layer, dynamic=False) if compile else _layer

    def __call__(
        self,
        embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        last_only: bool = False,
    ) -> torch.Tensor:
        """embeds (B, T, d), attention_mask (B, T), position_ids (B, T) -> last hidden states (B, T, d), or
        with `last_only` the last position's (B, 1, d): the last layer then computes that position alone
        (its query, output projection and MLP; about a tenth of a 10-layer decoder's products)."""
        from torch.utils.checkpoint import checkpoint

        T = embeds.shape[1]
        pad = (-T) % PAD_MULTIPLE if self.compiled else 0
        if pad:  # more left padding: masked out, positions unchanged
            embeds = F.pad(embeds, (0, 0, pad, 0))
            attention_mask, position_ids = F.pad(attention_mask, (pad, 0)), F.pad(position_ids, (pad, 0))
        x = embeds
        cos, sin = self.decoder.rotary_emb(x, position_ids)  # (B, T, hd) each, in x's dtype
        half = cos.shape[-1] // 2
        sin = torch.cat((-sin[..., :half], sin[..., half:]), -1)  # signed for the swapped halves
        cos, sin = cos[:, :, None], sin[:, :, None]  # (B, T, 1, hd)
        bias = attention_bias(attention_mask, x.dtype)  # (B, 1, T, T)
        recompute = self.checkpoint and torch.is_grad_enabled()
        layers = self.decoder.layers
        for i, layer in enumerate(layers):
            args = (layer_weights(layer), layer.input_layernorm.variance_epsilon, layer.self_attn.scaling)
            last = last_only and i == len(layers) - 1
            if recompute:
                x = checkpoint(self.layer_fn, x, *args, cos, sin, bias, last, use_reentrant=False)
            else:
                x = self.layer_fn(x, *args, cos, sin, bias, last)
        return self.decoder.norm(x[:, -1:] if last_only else x[:, pad:])
