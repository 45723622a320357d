"""The collaborative side of AMFRec: a trained SASRec / GRU4Rec, frozen, read from its run directory.

It gives per user the sequence representation (the user soft token's input, A-LLMRec style) and its own
item logits (rep . item embedding, the score it was trained with), which the item_token head adds with a
learned weight. Its weights never train and are not part of AMFRec's checkpoint: the run directory is.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from amfrec.errors import AmfrecError
from amfrec.io import read_json


class CollaborativeNet(nn.Module):
    """A frozen sequential recommender network: history (B, L) -> representation (B, H); item logits."""

    def __init__(self, net: nn.Module, source: str = "") -> None:
        super().__init__()
        self.net = net
        self.source = source
        self.net.requires_grad_(False)
        self.net.eval()

    @property
    def hidden(self) -> int:
        return int(self.net.item_table().shape[1])

    def train(self, mode: bool = True) -> CollaborativeNet:
        super().train(mode)
        self.net.eval()  # frozen: never dropout
        return self

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        """history (B, L) left-padded item indices -> (B, H) the last position's representation."""
        with torch.no_grad():
            return self.net(history)[:, -1].float()

    def item_logits(self, rep: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """rep (B, H); items (B, C) indices -> (B, C), or None -> (B, n_items) over items 1..n_items."""
        table = self.net.item_table().float()  # (n_items + 1, H)
        if items is None:
            return rep @ table[1:].T  # (B, n_items)
        return torch.einsum("bh,bch->bc", rep, table[items])  # (B, C)


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


def load_collaborative(kind: str, run: Path, n_items: int) -> CollaborativeNet:
    """Load the `kind` ("sasrec" | "gru4rec") network of run directory `run`, frozen."""
    from amfrec.baselines.sequential import GRU4Rec, SASRec

    cls = {"sasrec": SASRec, "gru4rec": GRU4Rec}[str(kind)]
    model = cls.load(run)
    if model.n_items != n_items:
        raise AmfrecError(f"{run}: the {kind} run covers {model.n_items} items, the data has {n_items}")
    return CollaborativeNet(model._require_net(), source=str(Path(run).resolve()))
