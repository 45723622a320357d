"""Benchmark AMFRec candidate scoring: old repeat-cache path vs the packed "tree attention" path.

Loads the default backbone (SmolLM2-135M), builds an AMFRecModel with a small random item encoder, prepares
ml-100k (real titles, real test histories and candidates) into a temporary directory, and times
``AMFRecModel.score`` (packed continuations over one shared cache) against a copy of the previous
implementation (the prompt cache repeated C times along the batch, continuations right-padded). Both run in
the same process on the same inputs; each timing is repeated and the best and median are reported. Prints a
markdown table.

    amfrec bench scoring [--data ../shared/data/ml-100k] [--dtypes float32,bfloat16] [--batch-sizes 1,4]
        [--examples 8] [--repeats 3]
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from amfrec.data.dataset import PreparedData
from amfrec.data.prepare import prepare
from amfrec.llm.backbone import load_backbone
from amfrec.llm.prompt import position_ids
from amfrec.model.model import AMFRecModel

log = logging.getLogger(__name__)


class RandomItemEncoderOutput:
    def __init__(self, tokens: torch.Tensor, aux_loss: torch.Tensor, weights: torch.Tensor | None) -> None:
        self.tokens, self.aux_loss, self.weights = tokens, aux_loss, weights


class RandomItemEncoder(nn.Module):
    """Stand-in item encoder: Embedding -> Linear to one soft token of size d_llm per item."""

    tokens_per_item = 1

    def __init__(self, n_items: int, d_llm: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(n_items + 1, 16)
        self.proj = nn.Linear(16, d_llm)

    def forward(self, items: torch.Tensor, history: torch.Tensor) -> RandomItemEncoderOutput:
        tokens = self.proj(self.emb(items))[:, :, None] * 0.05  # (B, S, 1, d), about embedding scale
        return RandomItemEncoderOutput(tokens=tokens, aux_loss=tokens.new_zeros(()), weights=None)


@torch.inference_mode()
def old_score(model: AMFRecModel, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """The previous ``AMFRecModel.score``: prompt cache repeated C times, continuations right-padded."""
    from transformers import DynamicCache

    bsz, n_cand = candidates.shape
    batch, embeds, _, _ = model.embed_prompt(history, candidates, None)
    mask = batch.attention_mask  # (B, P)
    cache = DynamicCache(config=model.lm.config)
    hidden = model.backbone.decode(embeds, mask, position_ids(mask), cache=cache)  # (B, P, d)
    cont_list = model.prompt.encode_answers([model.titles[i] for i in candidates.reshape(-1).tolist()])
    cont = nn.utils.rnn.pad_sequence(
        [torch.tensor(c, dtype=torch.long) for c in cont_list],
        batch_first=True,
        padding_value=model.prompt.pad_id,
    ).to(model.device)  # (B*C, K)
    lengths = torch.tensor([len(c) for c in cont_list], device=model.device)  # (B*C,)
    cmask = torch.arange(cont.shape[1], device=model.device)[None, :] < lengths[:, None]  # (B*C, K)
    token_logp = torch.zeros(cont.shape, dtype=torch.float32, device=model.device)  # (B*C, K)
    first_logp = model.lm.get_output_embeddings()(hidden[:, -1]).float().log_softmax(-1)  # (B, V)
    token_logp[:, 0] = first_logp.repeat_interleave(n_cand, dim=0).gather(1, cont[:, :1]).squeeze(1)
    if cont.shape[1] > 1:
        per = max(1, model.score_chunk_rows // n_cand)
        if per >= bsz:
            cache.batch_repeat_interleave(n_cand)
            token_logp[:, 1:] = _old_continuation(model, cache, mask, cont, cmask, n_cand)
        else:
            layers = [(kv[0], kv[1]) for kv in cache]
            for s in range(0, bsz, per):
                e, rows = min(bsz, s + per), slice(s * n_cand, min(bsz, s + per) * n_cand)
                part = DynamicCache(
                    ddp_cache_data=[
                        (k[s:e].repeat_interleave(n_cand, 0), v[s:e].repeat_interleave(n_cand, 0))
                        for k, v in layers
                    ],
                    config=model.lm.config,
                )
                token_logp[rows, 1:] = _old_continuation(
                    model, part, mask[s:e], cont[rows], cmask[rows], n_cand
                )
    scores = (token_logp * cmask).sum(1)  # (B*C,)
    if model.score_reduction.value == "mean":
        scores = scores / lengths
    return scores.reshape(bsz, n_cand)


def _old_continuation(model, cache, prompt_mask, cont, cmask, n_cand) -> torch.Tensor:
    steps = cont[:, :-1]  # (R, K-1)
    full_mask = torch.cat([prompt_mask.repeat_interleave(n_cand, dim=0), cmask[:, :-1].long()], dim=1)
    start = prompt_mask.sum(1).repeat_interleave(n_cand)  # (R,)
    pos = start[:, None] + torch.arange(steps.shape[1], device=cont.device)[None, :]  # (R, K-1)
    hidden = model.backbone.decode(model.lm.get_input_embeddings()(steps), full_mask, pos, cache=cache)
    need = cmask[:, 1:]  # (R, K-1)
    logits = model.lm.get_output_embeddings()(hidden[need]).float()  # (N, V)
    picked = logits.gather(1, cont[:, 1:][need][:, None]).squeeze(1) - logits.logsumexp(-1)
    out = torch.zeros(need.shape, dtype=torch.float32, device=cont.device)
    out[need] = picked
    return out


def run_split(fn, history, candidates, batch_size: int) -> tuple[float, torch.Tensor]:
    """Seconds per example to score the whole (small) split in batches, and the scores (N, C)."""
    start = time.perf_counter()
    parts = [
        fn(history[s : s + batch_size], candidates[s : s + batch_size])
        for s in range(0, len(history), batch_size)
    ]
    return (time.perf_counter() - start) / len(history), torch.cat(parts)


def bench_scoring(
    data_dir: Path, dtypes: list[str], batch_sizes: list[int], examples: int = 8, repeats: int = 3
) -> str:
    """The markdown table of both methods' seconds per example (best, median) per dtype and batch size, with
    their largest score differences (old vs new, and vs the first dtype's new scores)."""
    with tempfile.TemporaryDirectory() as tmp:
        prepare(Path(data_dir), Path(tmp) / "prep", seed=1)
        data = PreparedData.load(Path(tmp) / "prep")
    history = data.test.history[:examples]
    candidates = data.test.candidates[:examples]

    rows, reference = [], None  # reference: float32 scores of the new method (exact to ~1e-5)
    for dtype in dtypes:
        bb = load_backbone("smollm2-135m", dtype=dtype, device="cpu")
        model = AMFRecModel(bb, RandomItemEncoder(data.n_items, bb.hidden_size), data.titles, answer="title")
        model = model.eval()
        prompts = model.prompt.build(model._titles(history), model._titles(candidates))
        conts = model.prompt.encode_answers([data.titles[i] for i in candidates.reshape(-1).tolist()])
        log.info(
            "%s: %d examples, prompt %.0f tokens on average, continuations %.1f tokens (max %d)",
            dtype,
            len(history),
            prompts.prompt_lengths.float().mean(),
            sum(map(len, conts)) / len(conts),
            max(map(len, conts)),
        )
        methods = {
            "old repeat-cache": lambda h, c, m=model: old_score(m, h, c),
            "new packed tree": model.score,
        }
        for bs in batch_sizes:
            times: dict[str, list[float]] = {name: [] for name in methods}
            scores: dict[str, torch.Tensor] = {}
            for fn in methods.values():  # warm-up
                fn(history[:bs], candidates[:bs])
            for _ in range(repeats):
                for name, fn in methods.items():
                    t, scores[name] = run_split(fn, history, candidates, bs)
                    times[name].append(t)
            if reference is None:
                reference = scores["new packed tree"]
            diff = float((scores["old repeat-cache"] - scores["new packed tree"]).abs().max())
            for name, t in times.items():
                ref_diff = float((scores[name] - reference).abs().max())
                rows.append((name, dtype, bs, min(t), statistics.median(t), diff, ref_diff))
                log.info("%s", _row(*rows[-1]))
    head = ("| method | dtype | batch | s/example best | s/example median | max abs diff old vs new "
            "| max abs diff vs the first dtype's new |\n|---|---|---|---|---|---|---|")  # fmt: skip
    return "\n".join([head, *(_row(*row) for row in rows)])


def _row(name: str, dtype: str, bs: int, best: float, med: float, diff: float, ref_diff: float) -> str:
    return f"| {name} | {dtype} | {bs} | {best:.3f} | {med:.3f} | {diff:.1e} | {ref_diff:.1e} |"
