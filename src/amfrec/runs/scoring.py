"""Scoring a split with a trained AMFRec: rows in prompt-length order, batch sizes, and the score term by
term (``--protocol parts``; the stacking weight of ``train.blend_examples``)."""

from __future__ import annotations

import logging
import math

import torch

from amfrec.data.dataset import Split
from amfrec.evaluate import score_metrics
from amfrec.model.adapter import ScoreParts
from amfrec.model.model import AMFRecModel

log = logging.getLogger(__name__)

EVAL_BATCH = 8  # title head: prompts per scoring batch (each expands to 20 continuations)
EVAL_BATCH_ITEM_TOKEN = 32  # item_token head: prompts per backbone pass (one pass scores every candidate)


def item_prompt_lengths(model: AMFRecModel) -> torch.Tensor:
    """(n_items + 1,) long: each item's share of a prompt's length in backbone tokens (its rendered text, soft
    tokens and separator, tokenised once; 0 for padding). A prompt's length is the sum over its items plus the
    template's, so rows sorted by the sum pad little in a batch."""
    prompt = model.prompt
    texts = [prompt.render_item(t) + prompt.template.item_separator for t in model.titles]
    ids = prompt.tokenizer(texts, add_special_tokens=False)["input_ids"]
    per_item = torch.tensor([len(x) for x in ids], dtype=torch.long)
    per_item[0] = 0
    return per_item


def prompt_order(model: AMFRecModel, split: Split) -> torch.Tensor:
    """(N,) the rows of `split` by their prompt's length in tokens (``item_prompt_lengths``), stable: batches
    of neighbours pad little. Only the items the prompt reads count (the last ``model.max_len``)."""
    shown = split.history if model.max_len is None else split.history[:, -model.max_len :]  # (N, <= L)
    if model.prompt.template.has_candidates and split.candidates is not None:
        shown = torch.cat([shown, split.candidates], 1)  # (N, L + C)
    return torch.sort(item_prompt_lengths(model)[shown].sum(1), stable=True).indices  # (N,)


def part_scores(model: AMFRecModel, split: Split, batch_size: int = EVAL_BATCH_ITEM_TOKEN) -> ScoreParts:
    """The item_token score's terms for every candidate of `split` (``AMFRecModel.score_parts``), each (N, C)
    on the CPU or None; batched as the evaluator batches (rows in ``prompt_order``), so that their sum is
    exactly the score `amfrec evaluate` ranks by, in either dtype."""
    from tqdm import tqdm

    order = prompt_order(model, split)  # (N,)
    found: dict[str, list[torch.Tensor]] = {"content": [], "collab": [], "similar": [], "order": []}
    for start in tqdm(range(0, len(split), batch_size), desc="parts", unit="batch", disable=None):
        rows = order[start : start + batch_size]
        parts = model.score_parts(split.history[rows], split.candidates[rows])
        for name, terms in found.items():
            terms += [] if getattr(parts, name) is None else [getattr(parts, name).cpu()]
    back = torch.argsort(order)  # (N,) split order again
    terms = {name: torch.cat(terms)[back] if terms else None for name, terms in found.items()}
    return ScoreParts(**terms)


def parts_metrics(model: AMFRecModel, split: Split, batch_size: int = EVAL_BATCH_ITEM_TOKEN) -> dict:
    """Metrics of the item_token score's terms on their own and together: {"content": ..., "collab": ...,
    "similar": ..., "full": ...} ("collab" with the collaborative score, "similar" with the content
    similarity, "full" with either), each with its spread (``amfrec.evaluate.score_metrics``). Shows which
    term ranks: the LM's content, the collaborative net or the content similarity."""
    parts = part_scores(model, split, batch_size)
    out = {"content": score_metrics(parts.content, split)}
    for name in ("collab", "similar"):
        if getattr(parts, name) is not None:
            out[name] = score_metrics(getattr(parts, name), split)
    if len(out) > 1:
        out["full"] = score_metrics(parts.total, split)
    return out


BLEND_GRID = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0)  # the content term's weight against the collaborative one


def blend_on_valid(model: AMFRecModel, split: Split, grid: tuple[float, ...] = BLEND_GRID) -> float:
    """Stacking: the weight lam of the content term (score = lam * content + the others) with the best ndcg@10
    on `split` (validation; ties keep the weight nearest 1), folded into the cosine scale s; returns lam."""
    lam = choose_blend(model, split, grid)
    fold_blend(model, lam)
    return lam


def choose_blend(model: AMFRecModel, split: Split, grid: tuple[float, ...] = BLEND_GRID) -> float:
    """``blend_on_valid``'s choice alone: the content term's weight lam with the best ndcg@10 on `split`."""
    parts = part_scores(model, split)  # (N, C) each
    rest = parts.total - parts.content  # (N, C) the collaborative term (and the similarity)
    found = {lam: score_metrics(lam * parts.content + rest, split)["ndcg@10"] for lam in grid}
    best = max(found, key=lambda lam: (found[lam], -abs(math.log(lam))))
    log.info("content weight on %d validation users: %s -> %g", len(split),
             ", ".join(f"{lam:g}: {v:.4f}" for lam, v in found.items()), best)  # fmt: skip
    return best


def fold_blend(model: AMFRecModel, lam: float) -> None:
    """Multiply the content term by lam: its log cosine scale(s) grow by log(lam)."""
    with torch.no_grad():
        for scale in (model.adapter.log_scale, model.adapter.new_log_scale):
            if scale is not None:  # new_item_control: the control's content term is scaled alike
                scale.add_(math.log(lam))
