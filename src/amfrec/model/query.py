"""The item_token head's query: the state that scores items, the LM's (or the no-LM control's).

positions "last": the LM's last hidden state after the template. positions "all": the state at each item's
boundary (``amfrec.model.positions``): at training every window of a chunk, at inference the last item's.
"""

from __future__ import annotations

import torch

from amfrec.config.model import Positions
from amfrec.llm.prompt import position_ids
from amfrec.model.head import control_state
from amfrec.model.positions import chunk_items, prefix_histories


def query(
    model,
    history: torch.Tensor,
    candidates: torch.Tensor,
    table: torch.Tensor,
    lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, int]:
    """(q (P, d) float32, the control's q (P, d) | None, the collaborative rep (P, H) | None, tokens).

    One query per history (P = B): after the template (positions "last") or at the last item's boundary
    ("all"); with lengths (B,) (training, "all"), one per window of B chunks (``amfrec.model.positions``).
    q: with the LM, its hidden state there (llm_residual: the control's state plus a zero-initialised map
    of it); no_llm: the control's state, the mean of the prompt's soft tokens (``control_state``). The
    control's q is returned for ``new_item_control`` only.
    """
    history, candidates = history.to(model.device), candidates.to(model.device)
    seen = history if model.max_len is None else history[:, -model.max_len :]  # (P, <= max_len)
    every, users = model.positions is Positions.ALL, None  # users: (N, d), one per prompt item ("all")
    if every and lengths is None and model.prompt.user_per_item:  # each item's state, as in training
        k = seen.shape[1]
        users, reps = model.user_vectors(prefix_histories(history, k).flatten(0, 1))  # (B * k, d), (B * k, H)
        user, rep = users.view(-1, k, users.shape[-1])[:, -1], reps.view(-1, k, reps.shape[-1])[:, -1]
        users = users.view(-1, k, users.shape[-1])[seen != 0]  # (N, d) in placeholder order
    else:
        user, rep = model.user_vectors(history)
        users = user if every else None
    mean = None
    if model.no_llm or model.adapter.residual is not None or model.adapter.new_query is not None:
        mean = control_state(table, seen, user)  # (P, d)
        if model.no_llm:
            return mean, None if model.adapter.new_query is None else mean, rep, 0
    if every:
        items = seen if lengths is None else chunk_items(seen, lengths)  # (B, K)
        q, n_tokens = item_queries(model, items, table, users, last_only=lengths is None)
    else:
        batch, embeds, _, _ = model.embed_prompt(seen, candidates, None, table, user)
        mask = batch.attention_mask
        q = model.backbone.decode(embeds, mask, position_ids(mask), last_only=True)[:, -1].float()  # (B, d)
        n_tokens = int(mask.sum())
    if model.adapter.residual is not None:  # the control's state + what the LM adds (0 at the start)
        q = mean + model.adapter.residual(q)
    return q, None if model.adapter.new_query is None else mean, rep, n_tokens


def item_queries(
    model, items: torch.Tensor, table: torch.Tensor, users: torch.Tensor | None, last_only: bool
) -> tuple[torch.Tensor, int]:
    """The LM's state at each item's boundary (positions "all"): items (B, K) left-padded, users (N, d) |
    None one per item. -> (N, d) float32 in item order (last_only: (B, d), the last item's), tokens."""
    titles = model._titles(items)
    batch = model.prompt.build(titles, [[]] * len(titles)).to(model.device)
    vectors = table[items[items != 0]].flatten(0, 1)  # (N * T, d) in placeholder order
    mask = batch.attention_mask
    embeds = model.inject(batch.input_ids, vectors, users)  # (B, T, d)
    ends = model.prompt.query_ends(batch.input_ids)  # (B, T) bool, one per item
    if int(ends.sum()) != int((items != 0).sum()) or not bool(ends[:, -1].all()):
        raise ValueError("the prompt must end with its last item (no template text after {history})")
    hidden = model.backbone.decode(embeds, mask, position_ids(mask), last_only=last_only)  # (B, T | 1, d)
    return (hidden[:, -1] if last_only else hidden[ends]).float(), int(mask.sum())
