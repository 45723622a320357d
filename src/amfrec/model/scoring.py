"""Title-head scoring: the log-likelihood of each candidate title after the prompt ("tree attention").

The prompt is run once into a key/value cache; the C continuations of an example are then packed into one
sequence that attends to that cache through a 4D mask (each continuation sees the prompt and itself only), so
no cache is copied. ``model`` is an :class:`amfrec.model.model.AMFRecModel` with ``answer: title``.
"""

from __future__ import annotations

from enum import StrEnum

import torch
from torch import nn
from torch.nn import functional as F

from amfrec.llm.prompt import IGNORE_INDEX, position_ids


class ScoreReduction(StrEnum):
    SUM = "sum"  # sum of the title's token log-probs (+ eos)
    MEAN = "mean"  # divided by the number of tokens


def title_loss(model, history: torch.Tensor, candidates: torch.Tensor, target: torch.Tensor):
    """The title head's loss (LLaRA): cross-entropy of the target title + eos, logits at the answer tokens
    only. history (B, L), candidates (B, C), target (B,) -> AMFRecOutput."""
    from amfrec.model.adapter import AMFRecOutput

    answers = [model.titles[t] for t in target.tolist()]
    batch, embeds, aux, weights = model.embed_prompt(history, candidates, answers)
    mask = batch.attention_mask
    hidden = model.backbone.decode(embeds, mask, position_ids(mask))  # (B, T, d)
    targets = batch.labels[:, 1:]  # (B, T-1): token t+1 is predicted at t
    sel = targets != IGNORE_INDEX  # (B, T-1)
    logits = model.lm.get_output_embeddings()(hidden[:, :-1][sel]).float()  # (N, V), answer positions only
    lm_loss = F.cross_entropy(logits, targets[sel])
    return AMFRecOutput.of(lm_loss, model.aux_weight, aux, weights, int(sel.sum()), int(mask.sum()))


@torch.inference_mode()
def score_titles(model, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Log-likelihood of each candidate's title + eos after the prompt: (B, L), (B, C) -> (B, C) float32.

    Two backbone passes per batch, no copy of the prompt's key/value cache ("tree attention"):

    1. the prompt (B, P), left-padded, filling the cache; its last position predicts every candidate's
       first token;
    2. the C continuations of an example packed one after another into one row (B, Q) (Q = the longest
       example's sum over its candidates of title tokens + eos - 1; shorter rows are padded), with a 4D
       boolean mask over [cache | packed]: a continuation token sees the example's prompt and the earlier
       tokens of its own continuation only, and its position ids restart after the prompt for each
       continuation. Each continuation thus sees exactly what it would see appended to the prompt alone.

    ``model.score_chunk_rows`` bounds the continuation rows (examples * C) per packed pass; the peak memory
    of a pass is its packed tokens' activations plus one cache (not C copies).
    """
    from transformers import DynamicCache

    bsz, n_cand = candidates.shape
    batch, embeds, _, _ = model.embed_prompt(history, candidates, None)
    mask = batch.attention_mask  # (B, P)
    cache = DynamicCache(config=model.lm.config)
    hidden = model.backbone.decode(embeds, mask, position_ids(mask), cache=cache)  # (B, P, d)
    pmask = mask.bool()  # (B, P)

    # Continuations: (B*C, K) right-padded, row b * C + c = candidate c of example b.
    cont_list = model.prompt.encode_answers([model.titles[i] for i in candidates.reshape(-1).tolist()])
    lengths = torch.tensor([len(c) for c in cont_list], device=model.device)  # (B*C,)
    cont = nn.utils.rnn.pad_sequence(
        [torch.tensor(c, dtype=torch.long) for c in cont_list],
        batch_first=True,
        padding_value=model.prompt.pad_id,
    ).to(model.device)  # (B*C, K)
    cols = torch.arange(cont.shape[1], device=model.device)[None, :]  # (1, K)
    cmask = cols < lengths[:, None]  # (B*C, K) real tokens

    # Token 1 is predicted at the prompt's last position; tokens 2..K by the packed pass.
    token_logp = torch.zeros(cont.shape, dtype=torch.float32, device=model.device)  # (B*C, K)
    first_logp = model.lm.get_output_embeddings()(hidden[:, -1]).float().log_softmax(-1)  # (B, V)
    token_logp[:, 0] = first_logp.repeat_interleave(n_cand, dim=0).gather(1, cont[:, :1]).squeeze(1)
    if cont.shape[1] > 1:
        per = max(1, model.score_chunk_rows // n_cand)  # examples per packed pass
        if per >= bsz:
            token_logp[:, 1:] = _packed_logprobs(model, cache, pmask, cont, lengths, n_cand)
        else:
            layers = [(kv[0], kv[1]) for kv in cache]
            for s in range(0, bsz, per):
                e, rows = min(bsz, s + per), slice(s * n_cand, min(bsz, s + per) * n_cand)
                part = DynamicCache(
                    ddp_cache_data=[(k[s:e], v[s:e]) for k, v in layers], config=model.lm.config
                )  # views of the examples' rows, no copy
                token_logp[rows, 1:] = _packed_logprobs(
                    model, part, pmask[s:e], cont[rows], lengths[rows], n_cand
                )
    scores = (token_logp * cmask).sum(1)  # (B*C,)
    if model.score_reduction is ScoreReduction.MEAN:
        scores = scores / lengths
    return scores.reshape(bsz, n_cand)


def _packed_logprobs(
    model, cache, prompt_mask: torch.Tensor, cont: torch.Tensor, lengths: torch.Tensor, n_cand: int
) -> torch.Tensor:
    """Log-probs of tokens 2..K of each continuation (R, K-1), R = E * C rows of E examples.

    cache: the E prompts' cache (E, P); prompt_mask (E, P) bool; cont (R, K) right-padded; lengths (R,).
    The inputs cont[r, :lengths[r]-1] of an example's C rows are packed into one row of the (E, Q) packed
    sequence, in row order; padded positions of the result get 0.
    """
    n_ex, n_prompt = prompt_mask.shape
    dev = cont.device
    k_len = cont.shape[1]
    steps = lengths - 1  # (R,) inputs per continuation (its last token is only predicted)
    in_mask = torch.arange(k_len - 1, device=dev)[None, :] < steps[:, None]  # (R, K-1)
    per_ex = steps.view(n_ex, n_cand).sum(1)  # (E,) packed tokens per example
    q_len = max(1, int(per_ex.max()))
    packed = torch.arange(q_len, device=dev)[None, :] < per_ex[:, None]  # (E, Q) real packed slots
    # Row-major order of in_mask (example, candidate, step) = row-major order of packed: scatter by masks.
    ids = torch.full((n_ex, q_len), model.prompt.pad_id, dtype=torch.long, device=dev)  # (E, Q)
    ids[packed] = cont[:, :-1][in_mask]
    seg = torch.full((n_ex, q_len), -1, dtype=torch.long, device=dev)  # (E, Q) candidate; -1 = pad
    seg[packed] = torch.arange(n_cand, device=dev).repeat(n_ex)[:, None].expand_as(in_mask)[in_mask]
    step = torch.zeros((n_ex, q_len), dtype=torch.long, device=dev)  # (E, Q) index in continuation
    step[packed] = torch.arange(k_len - 1, device=dev)[None, :].expand_as(in_mask)[in_mask]

    # Query i sees key j of the packed row iff same candidate and j at or before i (pads see pads).
    same = seg[:, :, None] == seg[:, None, :]  # (E, Q, Q)
    causal = torch.ones(q_len, q_len, dtype=torch.bool, device=dev).tril()  # (Q, Q)
    sees_prompt = prompt_mask[:, None, :].expand(n_ex, q_len, n_prompt)  # (E, Q, P)
    mask = torch.cat([sees_prompt, same & causal], dim=-1)  # (E, Q, P + Q) bool, True = attend
    pos = prompt_mask.sum(1, keepdim=True) + step  # (E, Q) positions restart after the prompt
    embeds = model.lm.get_input_embeddings()(ids)  # (E, Q, d)
    hidden = model.backbone.decode(embeds, _custom_mask(model, mask[:, None]), pos, cache=cache)  # (E, Q, d)

    logits = model.lm.get_output_embeddings()(hidden[packed]).float()  # (N, V), real slots only
    targets = cont[:, 1:][in_mask]  # (N,) the token each packed input predicts
    picked = logits.gather(1, targets[:, None]).squeeze(1) - logits.logsumexp(-1)  # (N,)
    out = torch.zeros(in_mask.shape, dtype=torch.float32, device=dev)  # (R, K-1)
    out[in_mask] = picked
    return out


def _custom_mask(model, mask: torch.Tensor) -> torch.Tensor:
    """A 4D bool mask (B, 1, Q, KV), True = attend, in the form the backbone's attention takes as-is.

    "sdpa": bool; "eager": additive float (0 / dtype min) in the backbone's dtype. Other implementations
    (flash attention, ...) do not take an arbitrary 4D mask: ValueError.
    """
    impl = getattr(model.lm.config, "_attn_implementation", None) or "eager"
    if impl == "sdpa":
        return mask
    if impl == "eager":
        dtype = model.lm.get_input_embeddings().weight.dtype
        zeros = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
        return zeros.masked_fill(~mask, torch.finfo(dtype).min)
    raise ValueError(
        f"candidate scoring needs attn_implementation 'sdpa' or 'eager' (custom 4D mask), got {impl!r}"
    )


@torch.inference_mode()
def generate_titles(
    model, history: torch.Tensor, candidates: torch.Tensor, max_new_tokens: int = 64
) -> list[str]:
    """Greedy answers of an AMFRecModel (first line, stripped), one string per example (answer: title).

    history (B, L), candidates (B, C) item indices."""
    if model.answer != "title":
        raise ValueError("generation needs answer 'title' (the item_token head names no title)")
    batch, embeds, _, _ = model.embed_prompt(history, candidates, None)
    out = model.lm.generate(
        inputs_embeds=embeds,
        attention_mask=batch.attention_mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=model.prompt.pad_id,
        eos_token_id=model.prompt.eos_id,
    )  # (B, new) — with inputs_embeds only, the output holds only the new tokens
    texts = model.prompt.tokenizer.batch_decode(out, skip_special_tokens=True)
    return [(t.strip().splitlines() or [""])[0].strip() for t in texts]
