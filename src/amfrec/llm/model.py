"""AMFRecModel: a frozen causal LM reading hybrid prompts whose ``<|item|>`` rows are item soft tokens.

- ``inject``: one vectorised ``masked_scatter`` of the item vectors into the placeholder rows of
  ``inputs_embeds``.
- ``forward``: causal-LM loss on the answer tokens only (target title + eos); the output head is applied only
  at the positions that predict an answer token (DESIGN.md §8), plus ``aux_weight * aux_loss`` of the item
  encoder.
- ``score``: log-likelihood of each candidate title (+ eos) after the prompt. The prompt is run once into a
  key/value cache; the C continuations of an example are then packed into one sequence that attends to that
  cache through a 4D "tree" mask (each continuation sees the prompt and itself only), so no cache is copied.
  Score = sum of the token log-probs (``score_reduction="mean"`` divides by the number of tokens).
- ``generate``: greedy decoding from ``inputs_embeds``, first line only (the LLaRA protocol).

The item encoder (``amfrec.llm.fusion``) is called as ``item_encoder(items (B, S), history (B, L))`` and
returns an object with ``tokens (B, S, T, d_llm)``, ``aux_loss`` (scalar) and ``weights (B, S, M) | None``;
``items`` holds per example the non-zero history items (oldest first) then the candidates, 0-padded to S.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from enum import StrEnum

import torch
from torch import nn
from torch.nn import functional as F

from amfrec.llm.backbone import Backbone
from amfrec.llm.prompt import IGNORE_INDEX, PromptBatch, PromptBuilder, PromptTemplate
from amfrec.models.base import Recommender


class ScoreReduction(StrEnum):
    SUM = "sum"
    MEAN = "mean"


@dataclass
class AMFRecOutput:
    loss: torch.Tensor  # scalar: lm_loss + aux_weight * aux_loss
    lm_loss: torch.Tensor  # scalar: mean cross-entropy over the answer tokens of the batch
    aux_loss: torch.Tensor  # scalar: the item encoder's auxiliary (load-balancing) loss
    weights: torch.Tensor | None  # (B, S, M) gate weights, or None
    n_answer_tokens: int
    n_tokens: int  # real (non-padding) prompt + answer tokens: the throughput unit


class AMFRecModel(nn.Module, Recommender):
    """Frozen backbone + prompt builder + trainable item encoder.

    titles: item titles by index (index 0 = padding, unused). tokens_per_item: placeholders per item (None =
    ``item_encoder.tokens_per_item``, else 1). aux_weight multiplies the encoder's aux loss. score_reduction:
    "sum" (default) or "mean" token log-prob per candidate. score_chunk_rows: continuation rows (examples *
    C) per packed scoring pass (memory bound). Only ``item_encoder`` is trainable; the backbone stays in eval
    mode under ``.train()``.
    """

    name = "amfrec"

    def __init__(
        self,
        backbone: Backbone,
        item_encoder: nn.Module,
        titles: list[str],
        template: PromptTemplate | None = None,
        tokens_per_item: int | None = None,
        aux_weight: float = 0.01,
        score_reduction: str = "sum",
        score_chunk_rows: int = 40,
    ) -> None:
        super().__init__()
        if aux_weight < 0:
            raise ValueError(f"aux_weight must be >= 0, got {aux_weight}")
        if score_chunk_rows < 1:
            raise ValueError(f"score_chunk_rows must be >= 1, got {score_chunk_rows}")
        if len(titles) < 2:
            raise ValueError(f"titles must hold padding + at least one item, got {len(titles)}")
        try:
            self.score_reduction = ScoreReduction(score_reduction)
        except ValueError:
            raise ValueError(
                f"score_reduction must be one of {[r.value for r in ScoreReduction]}, got {score_reduction!r}"
            ) from None
        self.backbone = backbone
        self.lm = backbone.model  # registered as a submodule so .to(device) moves it; frozen
        self.item_encoder = item_encoder
        self.titles = list(titles)
        if tokens_per_item is None:  # the item encoder knows its T (fusion "tokens": one per modality)
            tokens_per_item = int(getattr(item_encoder, "tokens_per_item", 1))
        self.prompt = PromptBuilder(
            backbone.tokenizer, template, item_token=backbone.item_token, tokens_per_item=tokens_per_item
        )
        self.aux_weight = aux_weight
        self.score_chunk_rows = score_chunk_rows
        self._cache_kw = _cache_kwarg(self.lm.base_model)

    # ----------------------------------------------------------------- bookkeeping
    def train(self, mode: bool = True) -> AMFRecModel:
        super().train(mode)
        self.lm.eval()  # frozen backbone: never dropout
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The item encoder's parameters (the only ones the optimiser may see)."""
        return [p for p in self.item_encoder.parameters() if p.requires_grad]

    def parameter_report(self) -> tuple[int, int]:
        """(trainable, total) parameter counts."""
        trainable = sum(p.numel() for p in self.trainable_parameters())
        total = sum(p.numel() for p in self.parameters())
        return trainable, total

    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    def fit(self, data, seed: int) -> dict:
        raise NotImplementedError("train AMFRec with amfrec.llm.train.train(model, data, config)")

    # ----------------------------------------------------------------- prompt pieces
    def _items(self, history: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """items (B, S): non-zero history (oldest first) then candidates, 0-padded; valid (B, S) bool."""
        if (candidates <= 0).any():
            raise ValueError("candidates must be item indices >= 1 (0 is padding)")
        full = torch.cat([history, candidates], dim=1)  # (B, L + C)
        valid = full != 0
        order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)  # valid first, order kept
        items, valid = full.gather(1, order), valid.gather(1, order)
        width = int(valid.sum(1).max())
        return items[:, :width], valid[:, :width]

    def _titles(self, idx: torch.Tensor) -> list[list[str]]:
        """(B, L) item indices -> per-row titles of the non-zero items, in order."""
        return [[self.titles[i] for i in row if i] for row in idx.tolist()]

    def _item_vectors(
        self, history: torch.Tensor, candidates: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Soft tokens in placeholder order: (N * T, d), the aux loss, the gate weights."""
        items, valid = self._items(history, candidates)
        enc = self.item_encoder(items, history)
        tokens = enc.tokens  # (B, S, T, d)
        if tokens.shape[2] != self.prompt.tokens_per_item:
            raise ValueError(
                f"item encoder gives {tokens.shape[2]} tokens per item, "
                f"prompt expects {self.prompt.tokens_per_item}"
            )
        vectors = tokens[valid].reshape(-1, tokens.shape[-1])  # (N * T, d), row-major = placeholder order
        return vectors, enc.aux_loss, enc.weights

    def inject(self, input_ids: torch.Tensor, item_vectors: torch.Tensor) -> torch.Tensor:
        """Token embeddings with placeholder rows replaced by ``item_vectors``.

        input_ids (B, T) long; item_vectors (N, d) in placeholder order (row-major over the batch).
        Returns inputs_embeds (B, T, d) in the backbone's dtype. Raises ValueError when the number of
        placeholders differs from N.
        """
        embeds = self.lm.get_input_embeddings()(input_ids)  # (B, T, d)
        mask = input_ids == self.prompt.item_token_id  # (B, T)
        n_slots = int(mask.sum())
        if n_slots != item_vectors.shape[0]:
            raise ValueError(
                f"prompt has {n_slots} {self.prompt.item_token} placeholders but "
                f"{item_vectors.shape[0]} item vectors were given"
            )
        if item_vectors.shape[-1] != embeds.shape[-1]:
            raise ValueError(
                f"item vectors have dim {item_vectors.shape[-1]}, backbone expects {embeds.shape[-1]}"
            )
        mask3 = mask.unsqueeze(-1).expand_as(embeds)  # (B, T, d)
        return embeds.masked_scatter(mask3, item_vectors.to(embeds.dtype))

    def _embed_prompt(
        self,
        history: torch.Tensor,
        candidates: torch.Tensor,
        answers: list[str] | None,
    ) -> tuple[PromptBatch, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        history, candidates = history.to(self.device), candidates.to(self.device)
        batch = self.prompt.build(self._titles(history), self._titles(candidates), answers).to(self.device)
        vectors, aux, weights = self._item_vectors(history, candidates)
        return batch, self.inject(batch.input_ids, vectors), aux, weights

    # ----------------------------------------------------------------- training
    def forward(self, history: torch.Tensor, candidates: torch.Tensor, target: torch.Tensor) -> AMFRecOutput:
        """Loss on the answer tokens.

        history (B, L) left-padded item indices; candidates (B, C); target (B,) item indices.
        """
        answers = [self.titles[t] for t in target.tolist()]
        batch, embeds, aux, weights = self._embed_prompt(history, candidates, answers)
        hidden = self._decoder(embeds, batch.attention_mask, _positions(batch.attention_mask))  # (B, T, d)
        targets = batch.labels[:, 1:]  # (B, T-1): token t+1 is predicted at t
        sel = targets != IGNORE_INDEX  # (B, T-1)
        logits = self.lm.get_output_embeddings()(hidden[:, :-1][sel]).float()  # (N, V), answer positions only
        lm_loss = F.cross_entropy(logits, targets[sel])
        aux = aux.to(lm_loss.dtype) if torch.is_tensor(aux) else lm_loss.new_tensor(float(aux))
        return AMFRecOutput(
            loss=lm_loss + self.aux_weight * aux,
            lm_loss=lm_loss,
            aux_loss=aux,
            weights=weights,
            n_answer_tokens=int(sel.sum()),
            n_tokens=int(batch.attention_mask.sum()),
        )

    # ----------------------------------------------------------------- inference
    @torch.inference_mode()
    def score(self, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Log-likelihood of each candidate's title + eos after the prompt: (B, L), (B, C) -> (B, C) float32.

        Two backbone passes per batch, no copy of the prompt's key/value cache ("tree attention"):

        1. the prompt (B, P), left-padded, filling the cache; its last position predicts every candidate's
           first token;
        2. the C continuations of an example packed one after another into one row (B, Q) (Q = the longest
           example's sum over its candidates of title tokens + eos - 1; shorter rows are padded), with a 4D
           boolean mask over [cache | packed]: a continuation token sees the example's prompt and the earlier
           tokens of its own continuation only, and its position ids restart after the prompt for each
           continuation. Each continuation thus sees exactly what it would see appended to the prompt alone.

        ``score_chunk_rows`` bounds the continuation rows (examples * C) per packed pass; the peak memory of a
        pass is its packed tokens' activations plus one cache (not C copies).
        """
        from transformers import DynamicCache

        bsz, n_cand = candidates.shape
        batch, embeds, _, _ = self._embed_prompt(history, candidates, None)
        mask = batch.attention_mask  # (B, P)
        cache = DynamicCache(config=self.lm.config)
        hidden = self._decoder(embeds, mask, _positions(mask), cache=cache)  # (B, P, d)
        pmask = mask.bool()  # (B, P)

        # Continuations: (B*C, K) right-padded, row b * C + c = candidate c of example b.
        cont_list = self.prompt.encode_answers([self.titles[i] for i in candidates.reshape(-1).tolist()])
        lengths = torch.tensor([len(c) for c in cont_list], device=self.device)  # (B*C,)
        cont = nn.utils.rnn.pad_sequence(
            [torch.tensor(c, dtype=torch.long) for c in cont_list],
            batch_first=True,
            padding_value=self.prompt.pad_id,
        ).to(self.device)  # (B*C, K)
        cols = torch.arange(cont.shape[1], device=self.device)[None, :]  # (1, K)
        cmask = cols < lengths[:, None]  # (B*C, K) real tokens

        # Token 1 is predicted at the prompt's last position; tokens 2..K by the packed pass.
        token_logp = torch.zeros(cont.shape, dtype=torch.float32, device=self.device)  # (B*C, K)
        first_logp = self.lm.get_output_embeddings()(hidden[:, -1]).float().log_softmax(-1)  # (B, V)
        token_logp[:, 0] = first_logp.repeat_interleave(n_cand, dim=0).gather(1, cont[:, :1]).squeeze(1)
        if cont.shape[1] > 1:
            per = max(1, self.score_chunk_rows // n_cand)  # examples per packed pass
            if per >= bsz:
                token_logp[:, 1:] = self._packed_logprobs(cache, pmask, cont, lengths, n_cand)
            else:
                layers = [(kv[0], kv[1]) for kv in cache]
                for s in range(0, bsz, per):
                    e, rows = min(bsz, s + per), slice(s * n_cand, min(bsz, s + per) * n_cand)
                    part = DynamicCache(
                        ddp_cache_data=[(k[s:e], v[s:e]) for k, v in layers], config=self.lm.config
                    )  # views of the examples' rows, no copy
                    token_logp[rows, 1:] = self._packed_logprobs(
                        part, pmask[s:e], cont[rows], lengths[rows], n_cand
                    )
        scores = (token_logp * cmask).sum(1)  # (B*C,)
        if self.score_reduction is ScoreReduction.MEAN:
            scores = scores / lengths
        return scores.reshape(bsz, n_cand)

    def _packed_logprobs(
        self, cache, prompt_mask: torch.Tensor, cont: torch.Tensor, lengths: torch.Tensor, n_cand: int
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
        ids = torch.full((n_ex, q_len), self.prompt.pad_id, dtype=torch.long, device=dev)  # (E, Q)
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
        embeds = self.lm.get_input_embeddings()(ids)  # (E, Q, d)
        hidden = self._decoder(embeds, self._custom_mask(mask[:, None]), pos, cache=cache)  # (E, Q, d)

        logits = self.lm.get_output_embeddings()(hidden[packed]).float()  # (N, V), real slots only
        targets = cont[:, 1:][in_mask]  # (N,) the token each packed input predicts
        picked = logits.gather(1, targets[:, None]).squeeze(1) - logits.logsumexp(-1)  # (N,)
        out = torch.zeros(in_mask.shape, dtype=torch.float32, device=dev)  # (R, K-1)
        out[in_mask] = picked
        return out

    def _custom_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """A 4D bool mask (B, 1, Q, KV), True = attend, in the form the backbone's attention takes as-is.

        "sdpa": bool; "eager": additive float (0 / dtype min) in the backbone's dtype. Other implementations
        (flash attention, ...) do not take an arbitrary 4D mask: ValueError.
        """
        impl = getattr(self.lm.config, "_attn_implementation", None) or "eager"
        if impl == "sdpa":
            return mask
        if impl == "eager":
            dtype = self.lm.get_input_embeddings().weight.dtype
            zeros = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
            return zeros.masked_fill(~mask, torch.finfo(dtype).min)
        raise ValueError(
            f"candidate scoring needs attn_implementation 'sdpa' or 'eager' (custom 4D mask), got {impl!r}"
        )

    @torch.inference_mode()
    def generate(
        self, history: torch.Tensor, candidates: torch.Tensor, max_new_tokens: int = 64
    ) -> list[str]:
        """Greedy answers (first line, stripped), one string per example."""
        batch, embeds, _, _ = self._embed_prompt(history, candidates, None)
        out = self.lm.generate(
            inputs_embeds=embeds,
            attention_mask=batch.attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=self.prompt.pad_id,
            eos_token_id=self.prompt.eos_id,
        )  # (B, new) — with inputs_embeds only, the output holds only the new tokens
        texts = self.prompt.tokenizer.batch_decode(out, skip_special_tokens=True)
        return [(t.strip().splitlines() or [""])[0].strip() for t in texts]

    # ----------------------------------------------------------------- internals
    def _decoder(
        self,
        embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache=None,
    ) -> torch.Tensor:
        """Last hidden states (B, T, d) of the backbone's decoder (no output head)."""
        kwargs = {self._cache_kw: cache, "use_cache": cache is not None}
        out = self.lm.base_model(
            inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids, **kwargs
        )
        return out.last_hidden_state


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids for left-padded rows: 0 at the first real token (B, T)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _cache_kwarg(decoder: nn.Module) -> str:
    """transformers 5 renamed ``past_key_values`` to ``cache``; use whichever the decoder accepts."""
    params = inspect.signature(decoder.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def build_amfrec(
    cfg,
    features: dict,
    titles: list[str],
    device: str | None = None,
    backbone: Backbone | None = None,
) -> AMFRecModel:
    """An AMFRecModel from a ``ModelConfig`` (``amfrec.llm.config``), loaded features and item titles.

    features: name -> Modality (``values (n_items + 1, d_m)``, ``present (n_items + 1,)``). backbone: an
    already loaded one to reuse (else ``load_backbone(cfg.backbone, cfg.dtype, device)``).
    """
    from amfrec.llm.backbone import load_backbone
    from amfrec.llm.fusion import ItemEncoder

    if backbone is None:
        backbone = load_backbone(cfg.backbone, dtype=str(cfg.dtype), device=device)
    template = PromptTemplate(text=cfg.template, noun=cfg.noun, noun_plural=cfg.noun_plural)
    encoder = ItemEncoder(features, backbone.hidden_size, cfg, token_norm=backbone.embed_norm)
    model = AMFRecModel(backbone, encoder, titles, template=template, aux_weight=cfg.projector.aux_weight)
    return model.to(backbone.device)
