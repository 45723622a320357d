"""Benchmark AMFRec candidate scoring: old repeat-cache path vs the packed "tree attention" path.

Loads the default backbone (SmolLM2-135M), builds an AMFRecModel with a small random item encoder, prepares
ml-100k (real titles, real test histories and candidates) into a temporary directory, and times
``AMFRecModel.score`` (packed continuations over one shared cache) against a copy of the previous
implementation (the prompt cache repeated C times along the batch, continuations right-padded). Both run in
the same process on the same inputs; each timing is repeated and the best and median are reported. Prints a
markdown table.

    python -m amfrec.bench.scoring [--data /work/shared/data/ml-100k] [--dtypes bfloat16 float32]
        [--batch-sizes 1 4] [--examples 8] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="/work/shared/data/ml-100k")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], help="float32 first: reference")
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 4])
    ap.add_argument("--examples", type=int, default=8, help="test examples scored per timing")
    ap.add_argument("--repeats", type=int, default=3, help="timings per method, old and new interleaved")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        prepare(Path(args.data), Path(tmp) / "prep", seed=1)
        data = PreparedData.load(Path(tmp) / "prep")
    history = data.test.history[: args.examples]
    candidates = data.test.candidates[: args.examples]

    rows, reference = [], None  # reference: float32 scores of the new method (exact to ~1e-5)
    for dtype in args.dtypes:
        bb = load_backbone("smollm2-135m", dtype=dtype, device="cpu")
        model = AMFRecModel(bb, RandomItemEncoder(data.n_items, bb.hidden_size), data.titles, answer="title")
        model = model.eval()
        prompts = model.prompt.build(model._titles(history), model._titles(candidates))
        conts = model.prompt.encode_answers([data.titles[i] for i in candidates.reshape(-1).tolist()])
        print(
            f"{dtype}: {len(history)} examples, prompt {prompts.prompt_lengths.float().mean():.0f} tokens on "
            f"average, continuations {sum(map(len, conts)) / len(conts):.1f} tokens "
            f"(max {max(map(len, conts))})",
            flush=True,
        )
        methods = {
            "old repeat-cache": lambda h, c, m=model: old_score(m, h, c),
            "new packed tree": model.score,
        }
        for bs in args.batch_sizes:
            times: dict[str, list[float]] = {name: [] for name in methods}
            scores: dict[str, torch.Tensor] = {}
            for fn in methods.values():  # warm-up
                fn(history[:bs], candidates[:bs])
            for _ in range(args.repeats):
                for name, fn in methods.items():
                    t, scores[name] = run_split(fn, history, candidates, bs)
                    times[name].append(t)
            if reference is None:
                reference = scores["new packed tree"]
            diff = float((scores["old repeat-cache"] - scores["new packed tree"]).abs().max())
            for name, t in times.items():
                ref_diff = float((scores[name] - reference).abs().max())
                rows.append((name, dtype, bs, min(t), statistics.median(t), diff, ref_diff))
                print("  " + _row(*rows[-1]), flush=True)

    print(
        "\n| method | dtype | batch | s/example best | s/example median | max abs diff old vs new "
        "| max abs diff vs float32 new |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(_row(*row))


def _row(name: str, dtype: str, bs: int, best: float, med: float, diff: float, ref_diff: float) -> str:
    return f"| {name} | {dtype} | {bs} | {best:.3f} | {med:.3f} | {diff:.1e} | {ref_diff:.1e} |"


if __name__ == "__main__":
    main()
