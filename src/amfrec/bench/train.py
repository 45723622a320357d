"""`amfrec bench`: training throughput of the frozen backbone and its model-FLOP utilisation.

MFU = achieved FLOP/s / the matrix-multiply peak measured in the same process and dtype. Achieved FLOPs per
token: 2N forward + 2N backward (frozen weights: input gradients only), N = parameters of the linear layers a
token passes through (the output head only for the positions whose logits are computed), plus the attention
products: 4 T d_attn per layer forward (scores, weighted values) and 8 T d_attn backward (their gradients
with respect to queries, keys and values), T the sequence length: the full T x T scores, as the CPU fast
path computes them and as PaLM's MFU counts them.

Each dtype is timed through transformers' decoder forward and through the fast path
(`amfrec.llm.fast_decoder`, what training and serving use), and with `compile` also the compiled fast path.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from torch import nn

from amfrec.config.model import DType
from amfrec.hardware import cpu_flags, matmul_gflops, probe_matmul_gflops, resolve_dtype, sync
from amfrec.llm.backbone import TORCH_DTYPES, Backbone, load_backbone, set_fast_decoder
from amfrec.llm.prompt import position_ids

log = logging.getLogger(__name__)


@dataclass
class BenchRow:
    dtype: str
    decoder: str
    tokens_per_s: float
    achieved_gflops: float
    peak_gflops: float

    @property
    def mfu(self) -> float:
        return self.achieved_gflops / self.peak_gflops


def matmul_peak_gflops(
    dtype: torch.dtype, sizes: tuple[int, ...] = (512, 1024, 2048), repeats: int = 8, device: str = "cpu"
) -> float:
    """The MFU denominator: the best GFLOP/s of (n, n) @ (n, n) products in `dtype` over `sizes`.

    One size alone, measured right after loading a model, read 92 GFLOP/s where the same process reached 172
    a minute later (thread pools, page faults): the best over sizes and repeats is the stable figure.
    """
    return max(matmul_gflops(dtype, n=n, repeats=repeats, device=device) for n in sizes)


def linear_params(module: nn.Module) -> int:
    """Parameters of every nn.Linear weight inside `module` (the FLOP-carrying ones)."""
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))


def train_step_tokens_per_s(
    backbone: Backbone, batch_size: int, seq_len: int, answer_len: int | None, steps: int
) -> float:
    """Tokens/s of forward + backward w.r.t. inputs_embeds (the frozen-backbone training step), through
    `backbone.decode` (its fast path when set).

    answer_len: logits only on the last `answer_len` positions (None = on every position, the naive way).
    """
    model, device = backbone.model, backbone.device
    emb = model.get_input_embeddings()
    ids = torch.randint(0, emb.num_embeddings, (batch_size, seq_len), device=device)
    mask = torch.ones_like(ids)
    pos = position_ids(mask)
    times = []
    for _ in range(steps + 1):  # first step is warm-up (and compilation)
        sync(device)
        t0 = time.perf_counter()
        x = emb(ids).detach().requires_grad_(True)  # (B, T, d): stands in for the soft-token path
        hidden = backbone.decode(x, mask, pos)  # (B, T, d)
        h = hidden if answer_len is None else hidden[:, -answer_len:]
        logits = model.lm_head(h.reshape(-1, h.shape[-1])).float()  # (B * A, V): 2-D, one product
        loss = nn.functional.cross_entropy(logits, ids[:, -h.shape[1] :].flatten())
        loss.backward()
        sync(device)
        times.append(time.perf_counter() - t0)
    return batch_size * seq_len / (sum(times[1:]) / steps)


def flops_per_token(
    n_body: int, n_head: int, logit_positions: int, seq_len: int, n_layers: int = 0, d_attn: int = 0
) -> float:
    """Training FLOPs per token of a frozen LM: 2N forward + 2N for the input-gradient backward (no weight
    gradients), N = the body's linear parameters plus the output head's share of the positions with logits;
    plus 12 * seq_len * d_attn per layer for the attention products (see the module doc)."""
    return 4 * (n_body + n_head * logit_positions / seq_len) + 12 * seq_len * d_attn * n_layers


def run_bench(
    backbone: str = "smollm2-135m",
    dtypes: list[str] | None = None,
    seq_len: int = 256,
    batch_size: int = 8,
    answer_len: int = 8,
    steps: int = 5,
    compile: bool = False,
) -> str:
    """Measure every dtype through each decoder path (logits on the last `answer_len` positions, as AMFRec
    trains); return a table.

    dtypes: names among "auto", "float32", "bfloat16" (default ["auto"]: the dtype the probe picks). The
    table is preceded by the dtype probe's two numbers, the choice of "auto" and the CPU's SIMD flags.
    compile: also the compiled fast path (its first step, not timed, compiles).
    """
    rows: list[BenchRow] = []
    names = dtypes or ["auto"]
    for name in names:
        if name not in DType.__members__.values():
            raise ValueError(f"unknown dtype {name!r}; choose from {[d.value for d in DType]}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    auto_choice, auto_reason = resolve_dtype("auto", device)
    resolved = list(dict.fromkeys(auto_choice if n == "auto" else n for n in names))
    paths = [("transformers", False, False), ("fast", True, False)]  # (label, fast path, compiled)
    if compile:
        paths.append(("fast, compiled", True, True))
    for name in resolved:
        bb = load_backbone(backbone, dtype=name)
        model, device = bb.model, str(bb.device)
        peak = matmul_peak_gflops(TORCH_DTYPES[DType(name)], device=device)
        config = model.config.get_text_config()
        n_layers = len(model.base_model.layers)
        d_attn = config.num_attention_heads * (
            getattr(config, "head_dim", None) or bb.hidden_size // config.num_attention_heads
        )
        n_body, n_head = linear_params(model.base_model), model.lm_head.weight.numel()
        per_token = flops_per_token(n_body, n_head, answer_len, seq_len, n_layers, d_attn)
        for label, fast, compiled in paths:
            set_fast_decoder(bb, fast, compiled)
            if fast and bb.fast is None:
                continue  # not a Llama-family decoder: transformers' forward only
            tps = train_step_tokens_per_s(bb, batch_size, seq_len, answer_len, steps)
            rows.append(BenchRow(name, label, tps, tps * per_token / 1e9, peak))
            log.info("%s %s: %.0f tokens/s", name, label, tps)
        del bb, model
    probe = probe_matmul_gflops() if device == "cpu" else None
    probe_line = (
        f"dtype probe (CPU, 256x256 matmul): float32 {probe['float32']:.1f} GFLOP/s, "
        f"bfloat16 {probe['bfloat16']:.1f} GFLOP/s; {auto_reason}\n"
        if probe
        else f"{auto_reason}\n"
    )
    header = (
        probe_line + f"CPU flags: {cpu_flags() or 'unknown'}\n"
        f"backbone {backbone}, batch {batch_size} x {seq_len} tokens, {torch.get_num_threads()} threads\n"
        f"logits on the last {answer_len} positions; FLOPs counted with the attention products\n"
        "| dtype | decoder | train tokens/s | achieved GFLOP/s | matmul peak GFLOP/s | MFU |\n"
        "|---|---|---:|---:|---:|---:|"
    )
    lines = [
        f"| {r.dtype} | {r.decoder} | {r.tokens_per_s:.0f} | {r.achieved_gflops:.0f} | "
        f"{r.peak_gflops:.0f} | {r.mfu:.1%} |"
        for r in rows
    ]
    return "\n".join([header, *lines])
