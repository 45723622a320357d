"""`amfrec bench`: training throughput of the frozen backbone and its model-FLOP utilisation.

MFU = achieved FLOP/s / the matrix-multiply peak measured in the same process and dtype. Achieved FLOPs per
token: 2N forward + 2N backward (frozen weights: input gradients only), N = parameters of the linear layers a
token passes through; the output head counts only for the positions whose logits are computed. Attention
score/value products are not counted (small at these lengths), so MFU is slightly understated.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from torch import nn

from amfrec.hardware import cpu_flags, matmul_gflops, probe_matmul_gflops, resolve_dtype, sync
from amfrec.llm.backbone import TORCH_DTYPES, load_backbone
from amfrec.llm.config import DType

log = logging.getLogger(__name__)


@dataclass
class BenchRow:
    dtype: str
    logits: str
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
    model: nn.Module, batch_size: int, seq_len: int, answer_len: int | None, steps: int, device: str
) -> float:
    """Tokens/s of forward + backward w.r.t. inputs_embeds (the frozen-backbone training step).

    answer_len: logits only on the last `answer_len` positions (None = on every position, the naive way).
    """
    emb = model.get_input_embeddings()
    ids = torch.randint(0, emb.num_embeddings, (batch_size, seq_len), device=device)
    times = []
    for _ in range(steps + 1):  # first step is warm-up
        sync(device)
        t0 = time.perf_counter()
        x = emb(ids).detach().requires_grad_(True)  # (B, T, d): stands in for the soft-token path
        hidden = model.model(inputs_embeds=x).last_hidden_state  # (B, T, d)
        h = hidden if answer_len is None else hidden[:, -answer_len:]
        logits = model.lm_head(h).float()  # (B, A, V)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, -h.shape[1] :].flatten())
        loss.backward()
        sync(device)
        times.append(time.perf_counter() - t0)
    return batch_size * seq_len / (sum(times[1:]) / steps)


def flops_per_token(n_body: int, n_head: int, logit_positions: int, seq_len: int) -> float:
    """Training FLOPs per token of a frozen LM: 2N forward + 2N for the input-gradient backward (no weight
    gradients), N = the body's linear parameters plus the output head's share of the positions with logits."""
    return 4 * (n_body + n_head * logit_positions / seq_len)


def run_bench(
    backbone: str = "smollm2-135m",
    dtypes: list[str] | None = None,
    seq_len: int = 256,
    batch_size: int = 4,
    answer_len: int = 8,
    steps: int = 5,
) -> str:
    """Measure every dtype (answer-only logits, and all-position logits for comparison); return a table.

    dtypes: names among "auto", "float32", "bfloat16" (default ["auto"]: the dtype the probe picks). The
    table is preceded by the dtype probe's two numbers, the choice of "auto" and the CPU's SIMD flags.
    """
    rows: list[BenchRow] = []
    names = dtypes or ["auto"]
    for name in names:
        if name not in DType.__members__.values():
            raise ValueError(f"unknown dtype {name!r}; choose from {[d.value for d in DType]}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    auto_choice, auto_reason = resolve_dtype("auto", device)
    resolved = list(dict.fromkeys(auto_choice if n == "auto" else n for n in names))
    for name in resolved:
        bb = load_backbone(backbone, dtype=name)
        model, device = bb.model, str(bb.device)
        peak = matmul_peak_gflops(TORCH_DTYPES[DType(name)], device=device)
        n_body = linear_params(model.model)
        n_head = model.lm_head.weight.numel()
        for logits, a_len in (("answer", answer_len), ("all", None)):
            tps = train_step_tokens_per_s(model, batch_size, seq_len, a_len, steps, device)
            per_token = flops_per_token(n_body, n_head, a_len or seq_len, seq_len)
            rows.append(BenchRow(name, logits, tps, tps * per_token / 1e9, peak))
            log.info("%s logits=%s: %.0f tokens/s", name, logits, tps)
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
        "| dtype | logits | train tokens/s | achieved GFLOP/s | matmul peak GFLOP/s | MFU |\n"
        "|---|---|---:|---:|---:|---:|"
    )
    lines = [
        f"| {r.dtype} | {r.logits} | {r.tokens_per_s:.0f} | {r.achieved_gflops:.0f} | "
        f"{r.peak_gflops:.0f} | {r.mfu:.1%} |"
        for r in rows
    ]
    return "\n".join([header, *lines])
