"""Build an AMFRecModel from its configuration: backbone, item encoder, prompt template, heads."""

from __future__ import annotations

import torch
from torch import nn

from amfrec.config.options import ItemText
from amfrec.data.dataset import ItemInfo
from amfrec.llm.backbone import Backbone, checkpoint_layers, load_backbone, set_fast_decoder, truncate_layers
from amfrec.llm.prompt import PromptTemplate
from amfrec.model.item_encoder import ItemEncoder
from amfrec.model.model import AMFRecModel


def build_amfrec(
    cfg,
    features: dict,
    titles: list[str],
    device: str | None = None,
    backbone: Backbone | None = None,
    collab: nn.Module | None = None,
    loss_items: str = "catalogue",
    train_items: torch.Tensor | None = None,
) -> AMFRecModel:
    """An AMFRecModel from a ``ModelConfig`` (``amfrec.config.model``), loaded features and item titles.

    features: name -> Modality (``values (n_items + 1, d_m)``, ``present (n_items + 1,)``). backbone: an
    already loaded one to reuse (else ``load_backbone(cfg.backbone, cfg.dtype, device)``). collab: the frozen
    ``CollaborativeNet`` that ``cfg.user_token`` / ``cfg.collab_score`` need. loss_items: the training
    softmax of the item_token head (``TrainConfig.loss_items``).
    """
    if backbone is None:
        backbone = load_backbone(cfg.backbone, dtype=str(cfg.dtype), device=device)
    truncate_layers(backbone, cfg.lm_layers)
    set_fast_decoder(backbone, cfg.fast_decoder, cfg.compile)
    if cfg.gradient_checkpointing:
        checkpoint_layers(backbone)
    noun = cfg.noun or "item"  # a run's config carries the data card's noun (amfrec_run); else "item"
    template = PromptTemplate(text=cfg.template, noun=noun, noun_plural=cfg.noun_plural)
    encoder = ItemEncoder(features, backbone.hidden_size, cfg, token_norm=backbone.embed_norm)
    if backbone.dtype in (torch.bfloat16, torch.float16):  # the projectors' matmuls in the LM's precision
        encoder.compute_dtype = backbone.dtype
    model = AMFRecModel(
        backbone,
        encoder,
        titles,
        template=template,
        tokens_per_item=encoder.tokens_per_item if cfg.soft_tokens else 0,
        aux_weight=cfg.projector.aux_weight,
        answer=cfg.answer,
        collab=collab,
        user_token=cfg.user_token is not None,
        collab_score=cfg.collab_score,
        no_llm=cfg.no_llm,
        query_head=cfg.query_head,
        score_scale=cfg.score_scale,
        content_loss=cfg.content_loss,
        llm_residual=cfg.llm_residual,
        new_item_control=cfg.new_item_control,
        new_item_collab=cfg.new_item_collab,
        new_item_offset=cfg.new_item_offset,
        content_similarity=cfg.content_similarity,
        new_item_order=cfg.new_item_order,
        loss_items=loss_items,
        train_items=train_items,
        positions=cfg.positions,
        max_len=cfg.max_len,
    )
    return model.to(backbone.device)


def prompt_texts(items: list[ItemInfo], item_text: ItemText, max_tokens: int | None, tokenizer) -> list[str]:
    """What the prompt shows of each item (index 0 = padding ""): its title or its full text
    (``ItemInfo.text()``), cut to at most ``max_tokens`` tokens of ``tokenizer`` (None = uncut)."""
    texts = [it.title if item_text is ItemText.TITLE else it.text() for it in items[1:]]
    if max_tokens is not None and texts:
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        cut = [k for k, row in enumerate(ids) if len(row) > max_tokens]
        decoded = tokenizer.batch_decode([ids[k][:max_tokens] for k in cut], skip_special_tokens=True)
        for k, text in zip(cut, decoded, strict=True):
            texts[k] = text.strip()
    return ["", *texts]
