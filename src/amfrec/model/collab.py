"""The collaborative side of AMFRec: a trained SASRec / GRU4Rec, frozen, read from its run directory.

It gives per user the sequence representation (the user soft token's input, A-LLMRec style) and its own
item logits (rep . item embedding, the score it was trained with), which the item_token head adds with a
learned weight. Its weights never train and are not part of AMFRec's checkpoint: the run directory is.

Items the collaborative net never trained on (`known` False: no training interaction, so a random row) carry
no collaborative evidence: they are left out of the history it reads, and their logit is the user's mean
logit over the known items (no evidence either way), so only the content term tells them apart. A net that
scores unseen items by their content (sasrec_content: `cold_table`) gives them that content-only logit
instead, and so does an item whose id is dropped in training: it is scored exactly as a new item is.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from amfrec.data.dataset import grown_rows
from amfrec.errors import AmfrecError
from amfrec.io import read_json, read_yaml_mapping


class CollaborativeNet(nn.Module):
    """A frozen sequential recommender network: history (B, L) -> representation (B, H); item logits."""

    def __init__(
        self,
        net: nn.Module,
        source: str = "",
        known: torch.Tensor | None = None,
        cold_table: Callable[[], torch.Tensor] | None = None,
    ) -> None:
        """known: (n_items + 1,) bool, the items whose rows were trained (None = every item); cold_table:
        () -> (n_items + 1, H), the net's rows for items it did not see (None = no such rows: mean logit)."""
        super().__init__()
        self.net = net
        self.cold_table = cold_table
        self.source = source
        self.net.requires_grad_(False)
        self.net.eval()
        n_rows = int(net.item_table().shape[0])
        known = torch.ones(n_rows, dtype=torch.bool) if known is None else torch.as_tensor(known).bool()
        if known.shape != (n_rows,):
            raise ValueError(f"known: expected shape ({n_rows},), got {tuple(known.shape)}")
        known = known.clone()
        known[0] = False  # padding
        self.register_buffer("known", known, persistent=False)
        # The most history items the net reads: its position table's size (a SASRec trained with a shorter
        # max_len than AMFRec's histories reads their last items, as it was trained); None = any (GRU4Rec).
        pos = getattr(net, "pos_emb", None)
        self.max_len: int | None = int(pos.num_embeddings) if isinstance(pos, nn.Embedding) else None

    @property
    def hidden(self) -> int:
        return int(self.net.item_table().shape[1])

    def train(self, mode: bool = True) -> CollaborativeNet:
        super().train(mode)
        self.net.eval()  # frozen: never dropout
        return self

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        """history (B, L) left-padded item indices -> (B, H) the last position's representation, read from
        the known items only (unknown ones removed, the rest left-padded again); a history with no known item
        gives a zero representation."""
        kept = history * self.known[history]  # (B, L): unknown items -> padding, moved first (order kept)
        order = torch.sort((kept != 0).to(torch.int8), dim=1, stable=True).indices
        kept = kept.gather(1, order)
        if self.max_len is not None:
            kept = kept[:, -self.max_len :]  # (B, <= max_len) the last known items
        with torch.no_grad():
            rep = self.net(kept)[:, -1].float()  # (B, H)
        return torch.where((kept != 0).any(1, keepdim=True), rep, torch.zeros_like(rep))

    def set_items(self, index: torch.Tensor, rows: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Write item rows after training (a live catalogue; see ``ItemEncoder.set_items``). A new item is
        never trained: a content-aware net (sasrec_content) scores it by its content rows, as an unseen item
        of its data; any other net gives it the user's mean logit (``known`` False), as when it was loaded."""
        emb = self.net.item_emb
        n_rows = grown_rows(index, self.known.shape[0] - 1)
        grow = n_rows - self.known.shape[0]
        if hasattr(emb, "set_items"):  # ContentEmbedding
            emb.set_items(index, rows)
        else:
            weight = emb.weight.detach()
            emb.weight = nn.Parameter(torch.cat([weight, weight.new_zeros(grow, weight.shape[1])]), False)
            emb.num_embeddings = n_rows
        new_known = self.known.new_full((grow,), self.cold_table is not None)
        self.known = torch.cat([self.known, new_known])  # (n_rows,)

    def item_logits(
        self,
        rep: torch.Tensor,
        items: torch.Tensor | None = None,
        known: torch.Tensor | None = None,
        cold_mix: float = 1.0,
    ) -> torch.Tensor:
        """rep (B, H); items (B, C) indices -> (B, C), or None -> (B, n_items) over items 1..n_items.

        known: (n_items + 1,) bool, the items whose logit is used (default ``self.known``; training passes it
        with dropped ids removed); every other item gets cold_mix x its ``cold_table`` logit + (1 - cold_mix)
        x the user's mean logit over the used items (without a cold table: the mean logit alone).
        """
        table = self.net.item_table().float()  # (n_items + 1, H)
        logits = rep @ table.T  # (B, n_items + 1)
        use = self.known if known is None else known & self.known
        base = use.to(logits.dtype)  # (n_items + 1,)
        other = (logits * base).sum(1, keepdim=True) / base.sum().clamp(min=1)  # (B, 1): no evidence
        if self.cold_table is not None and cold_mix > 0:
            cold = rep @ self.cold_table().float().T  # (B, n_items + 1): content-only rows
            other = cold if cold_mix == 1 else cold_mix * cold + (1 - cold_mix) * other
        logits = torch.where(use, logits, other)  # (B, n_items + 1)
        return logits[:, 1:] if items is None else logits.gather(1, items)


def collab_run_from_features(features_dir: Path) -> Path:
    """The run directory the `id` modality of a feature folder was read from (its item_embeddings.npy)."""
    manifest = read_json(Path(features_dir) / "manifest.json")
    entry = manifest.get("modalities", {}).get("id")
    source = (entry or {}).get("encoder", {}).get("version", "")
    path = Path(source)
    if not entry or path.name != "item_embeddings.npy":
        raise AmfrecError(
            f"{Path(features_dir) / 'manifest.json'}: the id modality was not read from a SASRec run "
            "(build the features with --id-from RUN), so model.user_token has no collaborative run"
        )
    return path.parent


def load_collaborative(
    kind: str, run: Path, n_items: int, known: torch.Tensor | None = None
) -> CollaborativeNet:
    """Load the `kind` ("sasrec" | "gru4rec" | "sasrec_content") network of run directory `run`, frozen;
    known: (n_items + 1,) bool, the items whose rows it trained (None = all: sasrec_content's content rows
    stand for the items it never saw)."""
    from amfrec.baselines.content import SASRecContent
    from amfrec.baselines.sequential import GRU4Rec, SASRec

    if str(kind) == "sasrec_content":
        features = (read_yaml_mapping(Path(run) / "config.yaml").get("run") or {}).get("features")
        if not features:
            raise AmfrecError(f"{Path(run) / 'config.yaml'}: not a sasrec_content run (no run.features)")
        model = SASRecContent.load(run, None, features)
        known, cold = None, model._require_net().item_emb.content_weight
    else:
        model, cold = {"sasrec": SASRec, "gru4rec": GRU4Rec}[str(kind)].load(run), None
    if model.n_items != n_items:
        raise AmfrecError(f"{run}: the {kind} run covers {model.n_items} items, the data has {n_items}")
    return CollaborativeNet(model._require_net(), str(Path(run).resolve()), known, cold)
