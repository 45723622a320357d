"""`model.llm_residual`: the LM's query is the no_llm control's plus a zero-initialised map of the LM's state,
so a model starts exactly as its control and training can only add what the LM reads."""

from __future__ import annotations

import pytest
import torch
from llm_fixtures import HIDDEN, TITLES, make_tiny_backbone_dir, random_features, tiny_collab

from amfrec.config.model import AMFRecConfig, GateConfig, ModelConfig, ProjectorConfig
from amfrec.llm.backbone import load_backbone
from amfrec.model.item_encoder import ItemEncoder
from amfrec.model.model import AMFRecModel

N_ITEMS, L = len(TITLES) - 1, 5
HISTORY = torch.tensor([[0, 0, 1, 2, 3], [0, 0, 0, 0, 4], [5, 6, 7, 8, 9]])  # (B, L)
CANDIDATES = torch.tensor([[4, 10, 7, 11], [1, 12, 3, 2], [10, 11, 12, 1]])  # (B, C)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory):
    return load_backbone(str(make_tiny_backbone_dir(tmp_path_factory.mktemp("lm"))), dtype="float32")


def build(backbone, no_llm: bool, llm_residual: bool) -> AMFRecModel:
    cfg = ModelConfig(modalities=["id", "text"], projector=ProjectorConfig(n_experts=2, hidden=8),
                      gate=GateConfig(hidden=8), max_len=L)  # fmt: skip
    torch.manual_seed(0)
    enc = ItemEncoder(random_features(N_ITEMS), HIDDEN, cfg, token_norm=backbone.embed_norm)
    return AMFRecModel(backbone, enc, TITLES, answer="item_token", collab=tiny_collab(N_ITEMS, L),
                       user_token=True, collab_score=True, query_head=True, no_llm=no_llm,
                       llm_residual=llm_residual).eval()  # fmt: skip


def test_at_the_start_the_model_is_its_control_and_training_moves_it(backbone) -> None:
    residual = build(backbone, no_llm=False, llm_residual=True)
    control = build(backbone, no_llm=True, llm_residual=True)  # the control has nothing to add to
    assert control.adapter.residual is None and residual.adapter.residual is not None
    state = {k: v for k, v in residual.adapter.state_dict().items() if not k.startswith("residual.")}
    control.adapter.load_state_dict(state)  # the same item encoder, user projector, query map and scalars
    torch.testing.assert_close(residual.score(HISTORY, CANDIDATES), control.score(HISTORY, CANDIDATES))
    plain = build(backbone, no_llm=False, llm_residual=False)  # without the residual: the LM's raw state
    assert not torch.allclose(plain.score(HISTORY, CANDIDATES), control.score(HISTORY, CANDIDATES))
    residual.train()
    residual(HISTORY, CANDIDATES, CANDIDATES[:, 0]).loss.backward()
    grad = residual.adapter.residual.weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0  # the LM's map learns from the first step
    residual.eval()


def test_llm_residual_needs_the_item_token_head() -> None:
    with pytest.raises(ValueError, match="model.llm_residual: only with answer 'item_token'"):
        AMFRecConfig.from_dict({"model": {"answer": "title", "prompt_candidates": True, "collab_score": False,
                                          "llm_residual": True}})  # fmt: skip
    with pytest.raises(ValueError, match="model.llm_residual: must be true or false"):
        ModelConfig(llm_residual="yes")
