"""Items written into a trained AMFRec model without training: the live catalogue's model side.

A new item gets the rows an item of the data with no training interaction has: its modality vectors (the
id absent), its prompt text, no trained id (so ``new_item_control`` scores it by the control's query) and,
in the frozen collaborative net, a content-only row (sasrec_content) or the user's mean logit. Updating an
item of the data replaces the rows given and keeps the others (its trained id among them).
"""

from __future__ import annotations

import torch

from amfrec.model.model import AMFRecModel


@torch.no_grad()
def set_items(
    model: AMFRecModel,
    index: torch.Tensor,
    texts: list[str],
    rows: dict[str, tuple[torch.Tensor, torch.Tensor]],
) -> None:
    """Write items into `model`: index (A,) long, existing items or the next n_items + 1, ... in turn;
    texts: their prompt texts (A strings, as ``amfrec.model.build.prompt_texts`` cuts them); rows: modality
    -> (values (A, d_m), present (A,) bool), for the item encoder and the collaborative net's content rows."""
    if len(texts) != index.numel():
        raise ValueError(f"{index.numel()} item indices, {len(texts)} texts")
    device = model.device
    index = index.to(device)
    rows = {name: (v.to(device), p.to(device)) for name, (v, p) in rows.items()}
    model.item_encoder.set_items(index, rows)
    if model.collab is not None:
        model.collab.set_items(index, rows)
    n_rows = model.item_encoder.n_items + 1
    grow = n_rows - len(model.titles)
    model.titles.extend([""] * grow)
    for k, text in zip(index.tolist(), texts, strict=True):
        model.titles[k] = text
    if model.train_items is not None:  # a new item has no training interaction
        model.train_items = torch.cat([model.train_items, model.train_items.new_zeros(grow)])
    model._table_cache = None  # the item table is encoded again on the next call
