"""`model.new_item_control`: an item without a trained id is scored against the control's query (the mean of
the prompt's soft tokens, its own map and scale), every other item against the LM's state."""

from __future__ import annotations

import pytest
import torch
from llm_fixtures import HIDDEN, TITLES, make_tiny_backbone_dir, random_features, tiny_collab

from amfrec.config.model import AMFRecConfig, GateConfig, ModelConfig, ProjectorConfig
from amfrec.llm.backbone import load_backbone
from amfrec.model.head import fresh_items
from amfrec.model.item_encoder import ItemEncoder
from amfrec.model.model import AMFRecModel
from amfrec.model.query import query

N_ITEMS, L = len(TITLES) - 1, 5
HISTORY = torch.tensor([[0, 0, 1, 2, 3], [0, 0, 0, 0, 4], [5, 6, 7, 8, 9]])  # (B, L)
CANDIDATES = torch.tensor([[4, 10, 7, 11], [1, 12, 3, 2], [10, 11, 12, 1]])  # (B, C)
NEW = (10, 11)  # never trained: no training interaction


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory):
    return load_backbone(str(make_tiny_backbone_dir(tmp_path_factory.mktemp("lm"))), dtype="float32")


def build(
    backbone, no_llm: bool, new_item_control: bool, dropout: dict | None = None, new_item_collab: float = 1.0
) -> AMFRecModel:
    cfg = ModelConfig(modalities=["id", "text"], projector=ProjectorConfig(n_experts=2, hidden=8),
                      gate=GateConfig(hidden=8), max_len=L, modality_dropout=dropout or {})  # fmt: skip
    torch.manual_seed(0)
    enc = ItemEncoder(random_features(N_ITEMS), HIDDEN, cfg, token_norm=backbone.embed_norm)
    trained = torch.ones(N_ITEMS + 1, dtype=torch.bool)
    trained[[0, *NEW]] = False
    collab = tiny_collab(N_ITEMS, L)
    torch.manual_seed(2)
    cold = torch.randn(N_ITEMS + 1, collab.hidden)  # the content-only rows, as sasrec_content's
    collab.cold_table = lambda: cold
    return AMFRecModel(backbone, enc, TITLES, answer="item_token", collab=collab,
                       user_token=True, collab_score=True, query_head=True, no_llm=no_llm,
                       new_item_control=new_item_control, new_item_collab=new_item_collab,
                       train_items=trained).eval()  # fmt: skip


def test_new_items_take_the_controls_score_and_the_others_the_lms(backbone) -> None:
    mixed = build(backbone, no_llm=False, new_item_control=True)
    plain = build(backbone, no_llm=False, new_item_control=False)
    control = build(backbone, no_llm=True, new_item_control=False)
    state = {k: v for k, v in mixed.adapter.state_dict().items() if not k.startswith("new_")}
    plain.adapter.load_state_dict(state)
    control.adapter.load_state_dict(state)  # the same encoder, user projector, query map (identity), scalars
    with torch.no_grad():
        mixed.adapter.new_log_scale.fill_(1.5)  # the control's scale is its own
        control.adapter.log_scale.fill_(1.5)
    got = mixed.score_parts(HISTORY, CANDIDATES)
    is_new = (CANDIDATES[..., None] == torch.tensor(NEW)).any(-1)  # (B, C)
    want = torch.where(is_new, control.score_parts(HISTORY, CANDIDATES).content,
                       plain.score_parts(HISTORY, CANDIDATES).content)  # fmt: skip
    torch.testing.assert_close(got.content, want)
    plain_collab = plain.score_parts(HISTORY, CANDIDATES).collab  # the others' collaborative logit: untouched
    torch.testing.assert_close(got.collab[~is_new], plain_collab[~is_new])


def test_a_new_items_collaborative_logit_is_its_content_row_or_the_users_mean(backbone) -> None:
    row = build(backbone, no_llm=False, new_item_control=True)  # new_item_collab 1: sasrec_content's cold row
    mean = build(backbone, no_llm=False, new_item_control=True, new_item_collab=0.0)
    mean.adapter.load_state_dict(row.adapter.state_dict())
    rep = row.collab(HISTORY)  # (B, H)
    logits = rep @ row.collab.net.item_table().float().T  # (B, n_items + 1) the rows it trained
    trained = torch.ones(N_ITEMS + 1, dtype=torch.bool)
    trained[[0, *NEW]] = False
    users_mean = logits[:, trained].mean(1, keepdim=True)  # (B, 1) over the trained items
    is_new = (CANDIDATES[..., None] == torch.tensor(NEW)).any(-1)  # (B, C)
    w = float(row.adapter.collab_weight)
    want = torch.where(is_new, users_mean, logits.gather(1, CANDIDATES))
    torch.testing.assert_close(mean.score_parts(HISTORY, CANDIDATES).collab, w * want)
    cold = rep @ row.collab.cold_table().T  # (B, n_items + 1)
    want = torch.where(is_new, cold.gather(1, CANDIDATES), logits.gather(1, CANDIDATES))
    torch.testing.assert_close(row.score_parts(HISTORY, CANDIDATES).collab, w * want)


def test_the_controls_query_by_hand(backbone) -> None:
    model = build(backbone, no_llm=False, new_item_control=True)
    table = model.item_table()[0]  # (n_items + 1, T, d)
    user, _ = model.user_vectors(HISTORY)  # (B, d)
    _, q_new, _, _ = query(model, HISTORY, CANDIDATES, table)
    for b in range(len(HISTORY)):  # the mean over each history item's tokens and the user token
        rows = [table[i, t] for i in HISTORY[b].tolist() if i for t in range(table.shape[1])]
        want = torch.stack([*rows, user[b]]).mean(0)
        torch.testing.assert_close(q_new[b], want)


def test_fresh_items_are_the_untrained_and_in_training_the_id_dropped() -> None:
    trained = torch.tensor([False, True, True, False, True])
    drop = torch.tensor([[False, False], [True, False], [False, True], [False, False], [False, False]])
    assert fresh_items(5, trained, None, ["id", "text"]).tolist() == [True, False, False, True, False]
    assert fresh_items(5, trained, drop, ["id", "text"]).tolist() == [True, True, False, True, False]
    assert fresh_items(5, trained, drop, ["text", "image"]).tolist() == [True, False, False, True, False]
    assert fresh_items(3, None, None, ["id"]).tolist() == [False, False, False]


@pytest.mark.parametrize("control", [True, False])
def test_the_offset_and_order_move_the_new_items_with_or_without_the_control(backbone, control: bool) -> None:
    """The inference terms act on the items without a trained id whichever query scores them: the offset
    adds to exactly their scores; the order hands their places among themselves and leaves the others'."""
    model = build(backbone, no_llm=False, new_item_control=control)
    catalogue = torch.arange(1, N_ITEMS + 1).expand(len(HISTORY), -1)  # (B, n_items)
    is_new = torch.zeros(N_ITEMS, dtype=torch.bool)
    is_new[[i - 1 for i in NEW]] = True  # by hand: the items built without a training interaction
    assert model.fresh_items()[1:].cpu().tolist() == is_new.tolist()
    before = model.score(HISTORY, catalogue)
    model.new_item_offset = 2.5
    shifted = model.score(HISTORY, catalogue)
    torch.testing.assert_close(shifted - before, 2.5 * is_new.float().expand(len(HISTORY), -1))
    moved = []
    for order in (50.0, -50.0):  # by the cosine, then against it: one of them moves some new item's place
        model.new_item_offset, model.new_item_order = 0.0, order
        ordered = model.score(HISTORY, catalogue)
        moved.append(not torch.allclose(ordered[:, is_new], before[:, is_new]))
    torch.testing.assert_close(ordered[:, ~is_new], before[:, ~is_new])  # (B, n_items) vs (B, C) paths
    new_scores = lambda s: torch.sort(s[:, is_new], dim=1).values  # noqa: E731
    torch.testing.assert_close(new_scores(ordered), new_scores(before))  # the same places, as a group
    assert any(moved)


def test_only_id_dropped_items_teach_the_controls_query_in_training(backbone) -> None:
    grads = {}
    for rate in (0.0, 0.5):  # never-trained items are no class of the softmax: only dropped ids reach it
        model = build(backbone, no_llm=False, new_item_control=True, dropout={"id": rate} if rate else None)
        torch.manual_seed(1)
        model.train()
        model(HISTORY, CANDIDATES, CANDIDATES[:, 2]).loss.backward()
        model.eval()
        grads[rate] = model.adapter.new_query.weight.grad
        assert float(model.adapter.query.weight.grad.abs().sum()) > 0  # the LM's query: the items with an id
    assert grads[0.0] is None or float(grads[0.0].abs().sum()) == 0
    assert float(grads[0.5].abs().sum()) > 0


def test_new_item_control_needs_the_item_token_head() -> None:
    with pytest.raises(ValueError, match="model.new_item_control: only with answer 'item_token'"):
        AMFRecConfig.from_dict({"model": {"answer": "title", "prompt_candidates": True, "collab_score": False,
                                          "new_item_control": True}})  # fmt: skip
    with pytest.raises(ValueError, match="model.new_item_control: must be true or false"):
        ModelConfig(new_item_control=1)
    with pytest.raises(ValueError, match=r"model.new_item_collab: must be in \[0, 1\]"):
        ModelConfig(new_item_collab=1.5)
