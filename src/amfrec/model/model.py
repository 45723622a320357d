"""AMFRecModel: a frozen causal LM reading hybrid prompts whose ``<|item|>`` rows are item soft tokens.

- ``inject``: one vectorised ``masked_scatter`` of the item vectors into the placeholder rows of
  ``inputs_embeds`` (and of the user vector into the ``<|user|>`` row), after a count check.
- Answer head ``item_token`` (default): the LM's last hidden state q at the answer position is scored
  against each item's own soft token e_c, the vector that represents c in a prompt: ``score(c) = s * cos(q,
  e_c) [+ w * collab(u, c)]`` with a learned scale s and, optionally, the frozen collaborative net's own
  logit with a learned weight w. One backbone pass scores any set of items; the loss is a softmax over the
  catalogue (or the candidates). ``no_llm``: the LM replaced by the mean of the prompt's soft tokens.
  ``positions`` "all": every item's boundary is a query; one prompt trains them all (``llm.positions``).
  ``new_item_control``: items without a trained id are scored against that mean instead of the LM's state.
  ``content_similarity``, ``new_item_order``: content_knn's score at inference (``similarity.py``).
- Answer head ``title`` (LLaRA): causal-LM loss on the target title + eos, logits only at the answer
  positions; scoring by title log-likelihood (``amfrec.model.scoring``); greedy generation.

Every trainable weight lives in ``model.adapter`` (``adapter.py``; the checkpoint is its state_dict).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from amfrec.config.model import AnswerHead, LossItems, Positions, coerce_enum, default_template
from amfrec.llm.backbone import Backbone
from amfrec.llm.prompt import PromptBatch, PromptBuilder, PromptTemplate, prompt_items, scatter_slots
from amfrec.model.adapter import Adapter, AMFRecOutput, ScoreParts
from amfrec.model.head import cosine_scores, fresh_items
from amfrec.model.projector import MLPProjector
from amfrec.model.query import query
from amfrec.model.scoring import ScoreReduction, generate_titles, score_titles, title_loss
from amfrec.model.similarity import new_item_order_term, similarity_scores
from amfrec.recommender import Recommender


class AMFRecModel(nn.Module, Recommender):
    """Frozen backbone + prompt builder + trainable adapter (+ a frozen collaborative net).

    titles: item titles by index (index 0 = padding, unused). tokens_per_item: placeholders per item (None =
    ``item_encoder.tokens_per_item``, else 1). answer: "item_token" or "title". collab: a frozen
    ``CollaborativeNet`` (needed by a user token or the collaborative score). no_llm: the mean-pooling control
    (item_token only). score_reduction / score_chunk_rows: title scoring (``scoring.py``). positions:
    "last" or "all" (``Positions``). max_len: the last history items the prompt and the control read (None =
    all); the collaborative net reads the whole history (up to its own length).
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
        answer: str = "item_token",
        collab: nn.Module | None = None,
        user_token: bool = False,
        collab_score: bool = False,
        no_llm: bool = False,
        query_head: bool = False,
        score_scale: float = 10.0,
        content_loss: float = 0.0,
        llm_residual: bool = False,
        new_item_control: bool = False,
        new_item_collab: float = 1.0,
        new_item_offset: float = 0.0,
        content_similarity: float = 0.0,
        new_item_order: float = 0.0,
        loss_items: str = "catalogue",
        train_items: torch.Tensor | None = None,
        score_reduction: str = "sum",
        score_chunk_rows: int = 40,
        positions: str = "last",
        max_len: int | None = None,
    ) -> None:
        super().__init__()
        if aux_weight < 0:
            raise ValueError(f"aux_weight must be >= 0, got {aux_weight}")
        if score_chunk_rows < 1:
            raise ValueError(f"score_chunk_rows must be >= 1, got {score_chunk_rows}")
        if len(titles) < 2:
            raise ValueError(f"titles must hold padding + at least one item, got {len(titles)}")
        self.answer = coerce_enum(AnswerHead, answer, "answer")
        self.loss_items = coerce_enum(LossItems, loss_items, "loss_items")
        self.score_reduction = coerce_enum(ScoreReduction, score_reduction, "score_reduction")
        self.positions = coerce_enum(Positions, positions, "positions")
        if self.positions is Positions.ALL and self.answer is not AnswerHead.ITEM_TOKEN:
            raise ValueError("positions 'all' needs answer 'item_token'")
        self.max_len = max_len
        if (user_token or collab_score) and collab is None:
            raise ValueError("a user token or the collaborative score needs `collab` (a CollaborativeNet)")
        if self.answer is AnswerHead.TITLE and (collab_score or no_llm):
            raise ValueError("collab_score and no_llm need answer 'item_token'")
        self.backbone = backbone
        self.lm = backbone.model  # registered as a submodule so .to(device) moves it; frozen
        self.collab = collab  # frozen; not in the checkpoint
        self.no_llm = no_llm
        self.titles = list(titles)
        self.prompt = self._prompt_builder(backbone, item_encoder, template, tokens_per_item, user_token)
        d = backbone.hidden_size
        user_map = MLPProjector(collab.hidden, d, d) if user_token else None
        q_dim = d if query_head else None  # the query map
        residual = d if llm_residual and not no_llm else None
        new_dim = d if new_item_control else None
        if not 0.0 <= new_item_collab <= 1.0:
            raise ValueError(f"new_item_collab must be in [0, 1], got {new_item_collab}")
        self.new_item_collab = new_item_collab  # fresh items' collab logit: content row (1) .. mean logit (0)
        self.new_item_offset = float(new_item_offset)  # added to fresh items' scores (``runs/calibrate.py``)
        self.content_similarity = float(content_similarity)  # w of the inference-only ``similarity`` term
        self.new_item_order = float(new_item_order)  # fresh items' order among themselves (``similarity.py``)
        self.adapter = Adapter(item_encoder, user_map, score_scale, collab_score, q_dim, residual, new_dim)
        self.token_norm = getattr(item_encoder, "token_norm", None) or backbone.embed_norm
        self.aux_weight = aux_weight
        self.content_loss = content_loss
        if content_loss < 0:
            raise ValueError(f"content_loss must be >= 0, got {content_loss}")
        # (n_items + 1,) bool: items with training interactions, the only classes of the catalogue softmax
        train_items = None if train_items is None else train_items.bool()
        self.register_buffer("train_items", train_items, persistent=False)
        self._table_cache: tuple | None = None  # (weight versions, item_table()) while no gradients are taken
        self.score_chunk_rows = score_chunk_rows

    def _prompt_builder(
        self,
        backbone: Backbone,
        encoder: nn.Module,
        template: PromptTemplate | None,
        tokens: int | None,
        user: bool,
    ) -> PromptBuilder:
        """The prompt builder: the head's default template unless one is given, ``tokens`` placeholders per
        item (None = the item encoder's own T; fusion "tokens": one per modality), the user token(s)."""
        every = self.positions is Positions.ALL
        tokens = int(getattr(encoder, "tokens_per_item", 1)) if tokens is None else tokens
        if template is None:
            text = default_template(self.answer, self.answer is AnswerHead.TITLE, user, self.positions)
            template = PromptTemplate(text=text)
        if template.has_user != (user and not every):
            raise ValueError(f"the template {'has' if template.has_user else 'lacks'} a {{user}} slot")
        return PromptBuilder(backbone.tokenizer, template, backbone.item_token, tokens, user and every)

    # ----------------------------------------------------------------- bookkeeping
    @property
    def item_encoder(self) -> nn.Module:
        return self.adapter.item_encoder

    def train(self, mode: bool = True) -> AMFRecModel:
        super().train(mode)
        self._table_cache = None
        self.lm.eval()  # frozen backbone: never dropout
        if self.collab is not None:
            self.collab.train(False)
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The adapter's parameters (the only ones the optimiser may see)."""
        return [p for p in self.adapter.parameters() if p.requires_grad]

    def parameter_report(self) -> tuple[int, int]:
        """(trainable, total) parameter counts."""
        trainable = sum(p.numel() for p in self.trainable_parameters())
        total = sum(p.numel() for p in self.parameters())
        return trainable, total

    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    def fit(self, data, seed: int) -> dict:
        raise NotImplementedError("train AMFRec with amfrec.training.train.train(model, data, config)")

    # ----------------------------------------------------------------- prompt pieces
    def _titles(self, idx: torch.Tensor) -> list[list[str]]:
        """(B, L) item indices -> per-row titles of the non-zero items, in order."""
        return [[self.titles[i] for i in row if i] for row in idx.tolist()]

    def item_table(
        self, drop: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Every item's soft tokens (n_items + 1, T, d), the aux loss, gate weights (n_items + 1, M) | None:
        one item-encoder pass over the catalogue (prompt tokens and output vectors of the item_token head).
        drop: (n_items + 1, M) bool modalities dropped in this training step (``draw_dropout``), or None.
        Without gradients (and without drop) it is kept until an item-encoder weight changes (the tensors'
        version counters)."""
        key = None
        if not torch.is_grad_enabled() and drop is None:
            key = tuple(p._version for p in self.item_encoder.parameters())
            if self._table_cache is not None and self._table_cache[0] == key:
                return self._table_cache[1]
        n_rows = len(self.titles)
        enc = self.item_encoder(
            torch.arange(n_rows, device=self.device)[None], None, None if drop is None else drop[None]
        )
        weights = enc.weights[0] if enc.weights is not None else None
        table = (enc.tokens[0], enc.aux_loss, weights)
        self._table_cache = (key, table) if key is not None else None
        return table

    def _item_vectors(
        self, history: torch.Tensor, candidates: torch.Tensor, table: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Soft tokens in placeholder order (N * T, d), the aux loss, the gate weights (B, S, M) | None.

        table: the item_token head's (n_items + 1, T, d) table to read from; None = encode the prompt's items
        (the title head, whose gate may use the user context).
        """
        if self.prompt.tokens_per_item == 0:  # titles only: nothing to inject
            zero = torch.zeros((), device=self.device)
            return zero.new_zeros((0, self.backbone.hidden_size)), zero, None
        items, valid = prompt_items(history, candidates, self.prompt.template.has_candidates)
        if table is not None:
            tokens, aux, weights = table[items], torch.zeros((), device=items.device), None  # (B, S, T, d)
        else:
            enc = self.item_encoder(items, history)
            tokens, aux, weights = enc.tokens, enc.aux_loss, enc.weights  # (B, S, T, d)
        if tokens.shape[2] != self.prompt.tokens_per_item:
            raise ValueError(
                f"item encoder gives {tokens.shape[2]} tokens per item, "
                f"prompt expects {self.prompt.tokens_per_item}"
            )
        vectors = tokens[valid].reshape(-1, tokens.shape[-1])  # (N * T, d), row-major = placeholder order
        return vectors, aux, weights

    def user_vectors(self, history: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(user soft tokens (B, d) | None, collaborative representation (B, H) | None)."""
        if self.collab is None:
            return None, None
        rep = self.collab(history)  # (B, H), no gradient into the collaborative net
        if self.adapter.user is None:
            return None, rep
        return F.normalize(self.adapter.user(rep), dim=-1) * self.token_norm, rep

    def inject(
        self, input_ids: torch.Tensor, item_vectors: torch.Tensor, user_vectors: torch.Tensor | None = None
    ) -> torch.Tensor:
        """inputs_embeds (B, T, d) in the backbone's dtype: the embeddings of input_ids (B, T) with
        placeholder rows replaced by item_vectors (N, d) in placeholder order (row-major over the batch) and
        user_vectors (B, d) | None. ValueError when a placeholder count differs from the vectors' count."""
        embeds = self.lm.get_input_embeddings()(input_ids)  # (B, T, d)
        slots = [(self.prompt.item_token_id, item_vectors, self.prompt.item_token)]
        if self.prompt.has_user:
            if user_vectors is None:
                raise ValueError("the prompt has a <|user|> placeholder but no user vectors were given")
            slots.append((self.prompt.user_token_id, user_vectors, "<|user|>"))
        return scatter_slots(embeds, input_ids, slots)

    def embed_prompt(
        self,
        history: torch.Tensor,
        candidates: torch.Tensor,
        answers: list[str] | None,
        table: torch.Tensor | None = None,
        user: torch.Tensor | None = None,
    ) -> tuple[PromptBatch, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(token batch, inputs_embeds (B, T, d), aux loss, gate weights) of a batch of hybrid prompts.

        user: the user soft tokens (B, d) when already computed (else computed here when the prompt has one).
        """
        history, candidates = history.to(self.device), candidates.to(self.device)
        listed = self._titles(candidates) if self.prompt.template.reads_candidates else [[]] * len(candidates)
        batch = self.prompt.build(self._titles(history), listed, answers).to(self.device)
        vectors, aux, weights = self._item_vectors(history, candidates, table)
        if user is None and self.prompt.has_user:
            user, _ = self.user_vectors(history)
        return batch, self.inject(batch.input_ids, vectors, user), aux, weights

    # ----------------------------------------------------------------- item_token head
    def fresh_items(self, drop: torch.Tensor | None = None) -> torch.Tensor:
        """(n_items + 1,) bool: the items without a trained id, which the control's query scores
        (``new_item_control``) and the offset and order terms move, with or without it."""
        mods = self.item_encoder.modalities
        return fresh_items(len(self.titles), self.train_items, drop, mods, self.device)

    def item_logits(
        self,
        q: torch.Tensor,
        rep: torch.Tensor | None,
        out: torch.Tensor,
        items: torch.Tensor | None,
        known: torch.Tensor | None = None,
        q_new: torch.Tensor | None = None,
        fresh: torch.Tensor | None = None,
    ) -> ScoreParts:
        """Scores of items, term by term: q (B, d); out (n_items + 1, d) output vectors; items (B, C) or None
        = 1..n_items; known (n_items + 1,) bool, the items whose collaborative logit counts (None = those the
        collaborative net trained on; the others get the user's mean logit, see ``CollaborativeNet``). Terms:
        content s * cos(W q + b, out[c]), collab w * collab(rep, c) (None without the collaborative score),
        each (B, C) or (B, n_items); W q + b only with the query map (``query_head``), else q itself. Items in
        fresh ((n_items + 1,) bool) get + o (``new_item_offset``), with ``new_item_control`` the content
        s' * cos(W' q_new + b', out[c]) instead."""
        if self.adapter.query is not None:
            q = self.adapter.query(q)  # (B, d)
        content = self.adapter.log_scale.exp() * cosine_scores(q, out, items)  # (B, n_items) or (B, C)
        is_new = None if fresh is None else fresh[1:] if items is None else fresh[items]  # (n_items,)|(B, C)
        if q_new is not None and is_new is not None:
            new = self.adapter.new_log_scale.exp() * cosine_scores(self.adapter.new_query(q_new), out, items)
            content = torch.where(is_new, new, content)
        if self.new_item_offset and is_new is not None:  # o: the new items' calibration against the warm ones
            content = content + self.new_item_offset * is_new
        collab = None
        if self.adapter.collab_weight is not None:
            logits = self.collab.item_logits(rep, items, known, self.new_item_collab)
            collab = self.adapter.collab_weight * logits
        return ScoreParts(content=content, collab=collab)

    def _forward_item_token(
        self,
        history: torch.Tensor,
        candidates: torch.Tensor,
        target: torch.Tensor,
        lengths: torch.Tensor | None,
    ) -> AMFRecOutput:
        drop = self.item_encoder.draw_dropout(len(self.titles)) if self.training else None  # (R, M) | None
        tokens, aux, weights = self.item_table(drop)  # (n_items + 1, T, d)
        q, q_new, rep, n_tokens = query(self, history, candidates, tokens, lengths)
        fresh = self.fresh_items(drop)  # (n_items + 1,) bool: never trained, or the id dropped
        out = tokens.mean(1)  # (n_items + 1, d): an item's output vector = its (mean) soft token
        target = target.to(self.device)
        known = ~fresh  # an item whose id is dropped is scored as a new item: no collaborative logit either
        if self.loss_items is LossItems.CATALOGUE:
            parts = self.item_logits(q, rep, out, None, known, q_new, fresh)  # each (B, n_items)
            label = target - 1
            if self.train_items is not None:  # never a target, so no class: else only ever a negative
                never = ~self.train_items[1:]  # (n_items,); -inf content = -inf total as well
                parts = ScoreParts(parts.content.masked_fill(never, float("-inf")), parts.collab)
        else:
            candidates = candidates.to(self.device)
            parts = self.item_logits(q, rep, out, candidates, known, q_new, fresh)  # each (B, C)
            hit = candidates == target[:, None]
            if not bool(hit.any(1).all()):
                raise ValueError("loss_items 'candidates': every candidate set must hold its target")
            label = hit.float().argmax(1)
        loss = F.cross_entropy(parts.total, label)
        if self.content_loss > 0 and parts.collab is not None:  # the content term must rank on its own too
            loss = loss + self.content_loss * F.cross_entropy(parts.content, label)
        balance = self.item_encoder.cfg.gate.balance if weights is not None else 0.0
        if balance > 0:  # no present modality switched off by the gate
            loss = loss + balance * self.item_encoder.balance_loss(weights, drop)
        return AMFRecOutput.of(loss, self.aux_weight, aux, weights, int(target.shape[0]), n_tokens)

    # ----------------------------------------------------------------- training
    def forward(
        self,
        history: torch.Tensor,
        candidates: torch.Tensor,
        target: torch.Tensor,
        lengths: torch.Tensor | None = None,
    ) -> AMFRecOutput:
        """The answer head's loss (mean over targets). history (P, L) left-padded item indices; candidates
        (P, C); target (P,); lengths (B,): P windows grouped in B chunks, one prompt each (positions "all",
        ``amfrec.model.positions``), or None: one prompt per window."""
        if lengths is not None and self.positions is not Positions.ALL:
            raise ValueError("chunk lengths need positions 'all'")
        if self.answer is AnswerHead.ITEM_TOKEN:
            return self._forward_item_token(history, candidates, target, lengths)
        return title_loss(self, history, candidates, target)

    # ----------------------------------------------------------------- inference
    @torch.inference_mode()
    def score(self, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """(B, L), (B, C) -> (B, C) float32, higher = better. item_token: one backbone pass (q), then
        ``score_parts``. title: the log-likelihood of each candidate's title + eos (``score_titles``)."""
        if self.answer is AnswerHead.TITLE:
            return score_titles(self, history, candidates)
        return self.score_parts(history, candidates).total

    @torch.inference_mode()
    def score_parts(self, history: torch.Tensor, candidates: torch.Tensor) -> ScoreParts:
        """The item_token score of (B, L) histories' (B, C) candidates, term by term (see ``ScoreParts``)."""
        if self.answer is not AnswerHead.ITEM_TOKEN:
            raise ValueError("score parts exist for answer 'item_token' only")
        tokens, _, _ = self.item_table()
        q, q_new, rep, _ = query(self, history, candidates, tokens, None)
        fresh = self.fresh_items()  # (n_items + 1,) bool
        reorder = bool(self.new_item_order) and bool(fresh[1:].any())
        items = None if reorder else candidates.to(self.device)  # reorder: the places of the whole catalogue
        parts = self.item_logits(q, rep, tokens.mean(1), items, ~fresh, q_new, fresh)
        collab = None if parts.collab is None else parts.collab.float()
        cosines = None  # content_knn's cosines, (B, C) or (B, n_items): computed once for both terms
        if self.content_similarity or reorder:
            cosines = similarity_scores(self.item_encoder, history, items)  # on the features' device
        similar = self.content_similarity * cosines if self.content_similarity else None
        out = ScoreParts(content=parts.content.float(), collab=collab, similar=similar)
        if reorder:  # (B, n_items) terms -> (B, C)
            out.order = new_item_order_term(out.total, cosines, history, fresh, self.new_item_order)
            out = out.take(candidates.to(self.device))
        return out

    def generate(
        self, history: torch.Tensor, candidates: torch.Tensor, max_new_tokens: int = 64
    ) -> list[str]:
        """Greedy answers (first line, stripped), one string per example (answer: title)."""
        return generate_titles(self, history, candidates, max_new_tokens)
