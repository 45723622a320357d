"""Item encoder: per-modality features -> projectors -> (gated) fusion -> soft tokens in the LLM's space.

Fusion modes (`ModelConfig.fusion`), M = the modalities used, P_m = modality m's projector:
- gated (AMFRec): a gate gives softmax weights w over the *present* modalities; token = sum_m w_m u_m.
- tokens: one token per modality (T = M tokens per item); an absent modality's token is the zero vector.
- mean: the average of u_m over the present modalities.
- concat: one MoE projector over the concatenated raw features (absent modalities as zeros).
- single: one modality (`single_modality`) through its MoE projector.
- llara: the id modality through one `MLPProjector(d_id, d_llm, d_llm)` (LLaRA's), no MoE, no gate.

Token scale (`ModelConfig.token_scale`): with a norm s ("embed_norm" = the backbone's mean input-embedding
norm, passed as `token_norm`; or a fixed float), each projection is first L2-normalised,
u_m = P_m(x_m) / ||P_m(x_m)|| — so the gate's weights are true shares and no modality wins by magnitude — and
every output token is then L2-normalised and multiplied by s (a constant, not learned): its norm is exactly s,
like the backbone's own token embeddings. With token_scale None, u_m = P_m(x_m) and tokens are left unscaled.
Padding (item index 0) and items with no modality present give zero tokens (and, in gated mode, all-zero
weights), never NaN.

Precision: the projectors' matmuls run in `compute_dtype` (`build_model` sets the backbone's dtype when it is
bfloat16 or float16; None = float32) under autocast, their parameters, gradients and optimiser state stay
float32, and their outputs come back as float32. The soft tokens enter the LM in its dtype anyway; in
bfloat16 this roughly halves the cost of encoding the catalogue, a quarter of a training step in float32.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from amfrec.config.model import FusionMode, ModelConfig
from amfrec.data.dataset import grown_rows
from amfrec.model.projector import MLPProjector, MoEProjector


@dataclass
class ItemEncoderOutput:
    tokens: torch.Tensor  # (B, S, T, d_llm) float32 soft tokens
    aux_loss: torch.Tensor  # () load-balancing loss, NOT multiplied by projector.aux_weight
    weights: torch.Tensor | None  # (B, S, M) modality weights (gated: the gate's; mean: equal shares)


class ModalityGate(nn.Module):
    """Softmax weights over the modalities present for an item.

    Input features: each modality LayerNorm'd (absent ones zeroed), concatenated, plus the M presence flags
    and, with `use_user_context`, the user context (the mean of the history items' normalised features).
    An MLP gives logits (N, M); absent modalities are set to -inf before the softmax, so their weight is
    exactly 0 and the present ones sum to 1; an item with no modality present gets all-zero weights.
    """

    def __init__(self, dims: list[int], hidden: int, use_user_context: bool, temperature: float = 1.0):
        super().__init__()
        self.dims = list(dims)
        self.use_user_context = use_user_context
        self.temperature = float(temperature)
        self.norms = nn.ModuleList(nn.LayerNorm(d) for d in self.dims)
        d_feat = sum(self.dims)
        d_in = d_feat + len(self.dims) + (d_feat if use_user_context else 0)
        self.mlp = nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, len(self.dims)))

    def features(self, xs: list[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        """xs: M tensors (N, d_m); present (N, M) bool -> (N, sum d_m), absent modalities zero."""
        return torch.cat(
            [norm(x) * present[:, m : m + 1] for m, (norm, x) in enumerate(zip(self.norms, xs, strict=True))],
            -1,
        )

    def forward(
        self, feats: torch.Tensor, present: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """feats (N, sum d_m) from `features`, present (N, M) bool, context (N, sum d_m) -> weights (N, M)."""
        parts = [feats, present.to(feats.dtype)]
        if self.use_user_context:
            if context is None:
                raise ValueError("ModalityGate: use_user_context is on but no user context was given")
            parts.append(context)
        logits = self.mlp(torch.cat(parts, -1)) / self.temperature  # (N, M)
        logits = logits.masked_fill(~present, float("-inf"))
        any_present = present.any(-1, keepdim=True)  # (N, 1)
        logits = torch.where(any_present, logits, torch.zeros_like(logits))  # all-absent rows: no -inf row
        return F.softmax(logits, dim=-1) * any_present  # (N, M); all-absent rows -> zeros


def gate_balance_loss(weights: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """() the mean, over items with two or more present modalities, of KL(uniform over the present ones ||
    weights): 0 when the gate splits evenly, large when it switches a present modality off.

    weights (N, M) gate weights (absent modalities 0, each row summing to 1); present (N, M) bool."""
    n = present.sum(-1, keepdim=True).to(weights.dtype)  # (N, 1)
    u = present.to(weights.dtype) / n.clamp(min=1)  # (N, M) uniform over the present modalities
    log_ratio = torch.log(u.clamp(min=1e-12)) - torch.log(weights.clamp(min=1e-12))  # (N, M)
    kl = (u * log_ratio * present).sum(-1)  # (N,)
    rows = n[:, 0] >= 2  # (N,)
    return kl[rows].mean() if bool(rows.any()) else weights.new_zeros(())


class ItemEncoder(nn.Module):
    """Item indices -> soft tokens.

    features: name -> object with .values (n_items + 1, d_m) float and .present (n_items + 1,) bool
    (amfrec.features.store.Modality). They are kept as non-persistent buffers: they come from the feature
    directory, never from the checkpoint, whose state_dict holds only the trainable weights.
    d_llm: the backbone's hidden size. token_norm: the backbone's mean input-embedding norm (required when
    cfg.token_scale == "embed_norm").
    """

    def __init__(
        self, features: Mapping[str, Any], d_llm: int, cfg: ModelConfig, token_norm: float | None = None
    ) -> None:
        super().__init__()
        check_modalities(cfg.used_modalities, features.keys())
        self.cfg = cfg
        self.mode = cfg.fusion
        self.modalities = cfg.used_modalities
        self.d_llm = d_llm
        if cfg.token_scale == "embed_norm":
            if token_norm is None or not token_norm > 0:
                raise ValueError(
                    f"token_norm: token_scale 'embed_norm' needs a positive norm, got {token_norm!r}"
                )
            self.token_norm: float | None = float(token_norm)
        else:
            self.token_norm = cfg.token_scale  # a float or None
        dims: list[int] = []
        n_rows = None
        for i, name in enumerate(self.modalities):
            values, present = _check_modality(name, features[name])
            if n_rows is not None and values.shape[0] != n_rows:
                raise ValueError(
                    f"features[{name!r}]: {values.shape[0]} rows, but {self.modalities[0]!r} has {n_rows}"
                )
            n_rows = values.shape[0]
            present = present.clone()
            present[0] = False  # index 0 is padding
            self.register_buffer(f"feat{i}", values, persistent=False)  # (n_items + 1, d_m)
            self.register_buffer(f"mask{i}", present, persistent=False)  # (n_items + 1,)
            dims.append(values.shape[1])
        self.n_items = int(n_rows) - 1
        self.dims = dims
        self.compute_dtype: torch.dtype | None = None  # the projectors' matmuls (module doc); None = float32
        p = cfg.projector
        if self.mode == FusionMode.LLARA:
            self.projectors = nn.ModuleDict({"id": MLPProjector(dims[0], d_llm, d_llm)})
        elif self.mode == FusionMode.CONCAT:
            self.projectors = nn.ModuleDict(
                {"concat": MoEProjector(sum(dims), p.hidden, d_llm, p.n_experts, p.top_k, p.balance)}
            )
        else:
            self.projectors = nn.ModuleDict(
                {
                    name: MoEProjector(d, p.hidden, d_llm, p.n_experts, p.top_k, p.balance)
                    for name, d in zip(self.modalities, dims, strict=True)
                }
            )
        rates = [float(cfg.modality_dropout.get(name, 0.0)) for name in self.modalities]
        self.register_buffer("drop_rates", torch.tensor(rates), persistent=False)  # (M,)
        g = cfg.gate
        self.gate = (
            ModalityGate(dims, g.hidden, g.use_user_context, g.temperature)
            if self.mode == FusionMode.GATED
            else None
        )

    @property
    def tokens_per_item(self) -> int:
        """T: soft tokens per item (M in tokens mode, 1 otherwise)."""
        return len(self.modalities) if self.mode == FusionMode.TOKENS else 1

    def presence(self, items: torch.Tensor) -> torch.Tensor:
        """items (N,) long -> (N, M) bool: which modalities each item has."""
        return torch.stack([getattr(self, f"mask{i}")[items] for i in range(len(self.modalities))], -1)

    def feature(self, name: str) -> torch.Tensor:
        """(n_items + 1, d_m) the feature rows of modality `name` (absent rows zero)."""
        return getattr(self, f"feat{self.modalities.index(name)}")

    def present(self, name: str) -> torch.Tensor:
        """(n_items + 1,) bool: which items have modality `name`."""
        return getattr(self, f"mask{self.modalities.index(name)}")

    def set_items(self, index: torch.Tensor, rows: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Write item rows after training (a live catalogue): index (A,) long, existing items or the next
        n_items + 1, n_items + 2, ... (every new index once); rows: modality -> (values (A, d_m), present
        (A,) bool). A modality not in `rows` keeps an existing item's row; a new item lacks it."""
        n_rows = grown_rows(index, self.n_items)
        for i, name in enumerate(self.modalities):
            feat, mask = getattr(self, f"feat{i}"), getattr(self, f"mask{i}")
            feat = torch.cat([feat, feat.new_zeros(n_rows - feat.shape[0], feat.shape[1])])  # (n_rows, d_m)
            mask = torch.cat([mask, mask.new_zeros(n_rows - mask.shape[0])])  # (n_rows,)
            if name in rows:
                values, present = _check_modality(name, _Rows(*rows[name]), min_rows=1)
                if values.shape[1] != feat.shape[1]:
                    raise ValueError(
                        f"{name}: {values.shape[1]} values per item, the model reads {feat.shape[1]}"
                    )
                feat[index] = values.to(feat) * present[:, None].to(feat)
                mask[index] = present.to(mask.device)
            setattr(self, f"feat{i}", feat)
            setattr(self, f"mask{i}", mask)
        self.n_items = n_rows - 1

    def balance_loss(self, weights: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """``gate_balance_loss`` of the item table's gate weights (n_items + 1, M), the dropped modalities
        (``draw_dropout``) counted as absent."""
        present = self.presence(torch.arange(weights.shape[0], device=weights.device))  # (n_items + 1, M)
        return gate_balance_loss(weights, present if drop is None else present & ~drop)

    def draw_dropout(self, n_rows: int) -> torch.Tensor | None:
        """(n_rows, M) bool: the modalities items 0..n_rows-1 drop in this training step (each with its
        ``modality_dropout`` rate, but never every modality an item has), or None when nothing is dropped."""
        if not self.training or not bool((self.drop_rates > 0).any()):
            return None
        present = self.presence(torch.arange(n_rows, device=self.drop_rates.device))  # (R, M)
        drop = (torch.rand(present.shape, device=present.device) < self.drop_rates) & present
        keeps_one = (present & ~drop).any(-1, keepdim=True)  # (R, 1)
        return drop & keeps_one  # an item that would lose everything keeps everything

    def forward(
        self, items: torch.Tensor, history: torch.Tensor | None = None, drop: torch.Tensor | None = None
    ) -> ItemEncoderOutput:
        """items (B, S) long item indices (0 = padding); history (B, L) long, the user's items (for the gate's
        user context; may be None when the gate does not use it); drop (B, S, M) bool, modalities treated as
        absent (``draw_dropout``) or None. Returns tokens (B, S, T, d_llm)."""
        B, S = items.shape
        flat = items.reshape(-1)  # (N,)
        self._check_indices(flat, "items")
        xs = [getattr(self, f"feat{i}")[flat] for i in range(len(self.modalities))]  # M x (N, d_m)
        present = self.presence(flat)  # (N, M)
        if drop is not None:
            present = present & ~drop.reshape(present.shape)
        any_present = present.any(-1, keepdim=True)  # (N, 1)
        weights = None

        if self.mode in (FusionMode.LLARA, FusionMode.CONCAT):
            proj = next(iter(self.projectors.values()))
            if self.mode == FusionMode.LLARA:
                out, aux = self._project(proj, xs[0])  # aux 0: an MLP has no router
            else:
                x = torch.cat([x * present[:, m : m + 1] for m, x in enumerate(xs)], -1)  # (N, sum d_m)
                out, aux = self._project(proj, x, any_present[:, 0])
            tokens = self._scale(out * any_present)[:, None]  # (N, 1, d_llm)
        else:
            us, auxes = [], []
            for m, name in enumerate(self.modalities):
                out, aux = self._project(self.projectors[name], xs[m], present[:, m])  # (N, d_llm)
                us.append(self._unit(out) * present[:, m : m + 1])
                auxes.append(aux)
            u = torch.stack(us, 1)  # (N, M, d_llm), absent modalities zero
            aux = torch.stack(auxes).mean()
            if self.mode == FusionMode.TOKENS:
                tokens = self._scale(u)  # (N, M, d_llm)
            elif self.mode == FusionMode.MEAN:  # weights: the equal shares of the present modalities
                count = present.sum(-1, keepdim=True).clamp(min=1).to(u.dtype)  # (N, 1)
                tokens = self._scale(u.sum(1) / count)[:, None]  # (N, 1, d_llm)
                weights = (present.to(u.dtype) / count).reshape(B, S, -1)
            elif self.mode == FusionMode.SINGLE:
                tokens = self._scale(u[:, 0])[:, None]
            else:  # gated
                feats = self.gate.features(xs, present)  # (N, D)
                context = self._user_context(history, B, S) if self.gate.use_user_context else None
                w = self.gate(feats, present, context)  # (N, M)
                tokens = self._scale(torch.einsum("nm,nmd->nd", w, u))[:, None]  # (N, 1, d_llm)
                weights = w.reshape(B, S, -1)
        return ItemEncoderOutput(
            tokens=tokens.reshape(B, S, tokens.shape[1], self.d_llm), aux_loss=aux, weights=weights
        )

    # ---------------------------------------------------------------------------------------------- helpers
    def _project(
        self, proj: nn.Module, x: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(out (N, d_llm) float32, aux_loss () float32) of one projector on x (N, d), its matmuls in
        ``compute_dtype`` (module doc)."""
        reduced = self.compute_dtype is not None and self.compute_dtype != x.dtype
        with torch.autocast(x.device.type, dtype=self.compute_dtype, enabled=reduced):
            if isinstance(proj, MLPProjector):
                out, aux = proj(x), x.new_zeros(())
            else:
                out, aux, _ = proj(x, mask)
        return out.float(), aux.float()

    def _user_context(self, history: torch.Tensor | None, B: int, S: int) -> torch.Tensor:
        """The mean of the history items' gate features per user, repeated for its S items -> (B*S, D)."""
        if history is None:
            raise ValueError("ItemEncoder: the gate uses the user context, so `history` (B, L) is required")
        if history.shape[0] != B:
            raise ValueError(f"ItemEncoder: history has {history.shape[0]} rows, items has {B}")
        L = history.shape[1]
        hflat = history.reshape(-1)  # (B*L,)
        self._check_indices(hflat, "history")
        xs = [getattr(self, f"feat{i}")[hflat] for i in range(len(self.modalities))]
        present = torch.stack([getattr(self, f"mask{i}")[hflat] for i in range(len(self.modalities))], -1)
        feats = self.gate.features(xs, present).reshape(B, L, -1)  # (B, L, D)
        valid = (history > 0).to(feats.dtype)  # (B, L)
        ctx = (feats * valid[..., None]).sum(1) / valid.sum(1, keepdim=True).clamp(min=1)  # (B, D)
        return ctx[:, None].expand(B, S, ctx.shape[-1]).reshape(B * S, -1)  # (B*S, D)

    def _unit(self, v: torch.Tensor) -> torch.Tensor:
        return v if self.token_norm is None else F.normalize(v, dim=-1)

    def _scale(self, v: torch.Tensor) -> torch.Tensor:
        """L2-normalise the last dim and multiply by the token norm (zero vectors stay zero)."""
        return v if self.token_norm is None else F.normalize(v, dim=-1) * self.token_norm

    def _check_indices(self, idx: torch.Tensor, what: str) -> None:
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) > self.n_items):
            raise ValueError(f"ItemEncoder: {what} holds item indices outside [0, {self.n_items}]")


class _Rows(NamedTuple):
    values: torch.Tensor
    present: torch.Tensor


def check_modalities(used: Sequence[str], available: Iterable[str]) -> None:
    """Raise ValueError naming every modality the model reads (``used``) that the features lack."""
    available = sorted(available)
    missing = [m for m in used if m not in available]
    if missing:
        raise ValueError(
            f"model.modalities: {', '.join(repr(m) for m in missing)} not in the features "
            f"(available: {', '.join(available) or 'none'})"
        )


def _check_modality(name: str, mod: Any, min_rows: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate one modality's matrix and mask; return float32 values (R, d) and bool present (R,)."""
    values = torch.as_tensor(mod.values).float()
    present = torch.as_tensor(mod.present).bool()
    if values.ndim != 2 or values.shape[0] < min_rows:
        raise ValueError(f"features[{name!r}]: values must be (n_items + 1, d), got {tuple(values.shape)}")
    if present.shape != (values.shape[0],):
        raise ValueError(
            f"features[{name!r}]: mask has shape {tuple(present.shape)}, values have {values.shape[0]} rows"
        )
    if not torch.isfinite(values).all():
        raise ValueError(f"features[{name!r}]: values hold NaN or infinity")
    if "." in name or not name:
        raise ValueError(f"features[{name!r}]: a modality name must be non-empty and without '.'")
    return values, present
