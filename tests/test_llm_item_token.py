"""The item_token answer head on a tiny random Llama, a real ItemEncoder and a real tiny frozen SASRec.

score(c) = s * cos(q, e_c) [+ w * rep . item_emb_c]: q is the LM's last hidden state after a history-only
prompt (or, with no_llm, the mean of the prompt's soft tokens), e_c the item's own soft token, rep the frozen
collaborative net's user representation (also the input of the optional ``<|user|>`` soft token).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch
from llm_fixtures import HIDDEN, TITLES, make_tiny_backbone_dir, random_features, tiny_collab
from torch.nn import functional as F

from amfrec.config.model import GateConfig, ModelConfig, ProjectorConfig
from amfrec.llm.backbone import USER_TOKEN, Backbone, load_backbone
from amfrec.llm.prompt import PromptTemplate
from amfrec.model.build import build_amfrec
from amfrec.model.collab import CollaborativeNet
from amfrec.model.item_encoder import ItemEncoder
from amfrec.model.model import AMFRecModel
from amfrec.model.query import query

N_ITEMS, L = len(TITLES) - 1, 5
# history left-padded with 0, most recent last; candidates (B, C); targets (B,)
HISTORY = torch.tensor([[0, 0, 1, 2, 3], [0, 0, 0, 0, 4], [5, 6, 7, 8, 9]])
CANDIDATES = torch.tensor([[4, 10, 8, 11], [1, 12, 3, 2], [10, 11, 12, 1]])
TARGET = torch.tensor([10, 12, 1])
SCALE = 3.0  # the cosine scale s the tests set (not the init value 10, so that s is visibly used)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> Backbone:
    return load_backbone(
        str(make_tiny_backbone_dir(tmp_path_factory.mktemp("tiny_lm"))), dtype="float32", device="cpu"
    )


def features() -> dict[str, SimpleNamespace]:
    return random_features(N_ITEMS)


def encoder_config(fusion: str = "gated") -> ModelConfig:
    return ModelConfig(
        modalities=["id", "text"],
        fusion=fusion,
        projector=ProjectorConfig(n_experts=2, hidden=8),
        gate=GateConfig(hidden=8),
        user_token=None,
        collab_score=False,
        max_len=L,
    )


def make_collab(seed: int = 1) -> CollaborativeNet:
    """A tiny random SASRec, frozen (llm_fixtures.tiny_collab)."""
    return tiny_collab(N_ITEMS, L, seed)


def make_model(
    backbone: Backbone,
    *,
    user_token: bool = False,
    collab_score: bool = False,
    no_llm: bool = False,
    loss_items: str = "catalogue",
    fusion: str = "gated",
    query_head: bool = False,
) -> AMFRecModel:
    """An item_token model (history-only default template); same seeds -> same weights."""
    torch.manual_seed(0)
    enc = ItemEncoder(features(), HIDDEN, encoder_config(fusion), token_norm=backbone.embed_norm)
    collab = make_collab() if user_token or collab_score else None
    model = AMFRecModel(
        backbone,
        enc,
        TITLES,
        answer="item_token",
        collab=collab,
        user_token=user_token,
        collab_score=collab_score,
        no_llm=no_llm,
        loss_items=loss_items,
        query_head=query_head,
    )
    with torch.no_grad():
        model.adapter.log_scale.fill_(math.log(SCALE))
    return model.eval()


def history_items(row: torch.Tensor) -> torch.Tensor:
    return row[row != 0]


# ---------------------------------------------------------------------------------------------------- 1
def test_scores_are_the_lms_own_logits_with_soft_tokens_as_output_rows(backbone: Backbone) -> None:
    """s * cos(q, e_c) = logit of a vocabulary row holding s * e_c / ||e_c||, divided by ||q||.

    q is computed here without the model's prompt code: the placeholder rows of the token embeddings are
    overwritten by hand with the item encoder's tokens, and the LM's decoder runs on them.
    """
    model = make_model(backbone)
    assert not model.prompt.template.has_candidates and not model.prompt.template.has_user
    scores = model.score(HISTORY, CANDIDATES)  # (B, C)
    assert scores.shape == CANDIDATES.shape and scores.dtype == torch.float32
    assert scores.std() > 0.1  # the comparison below can fail

    lm = model.lm
    with torch.no_grad():
        tokens = model.item_encoder(torch.arange(N_ITEMS + 1)[None]).tokens[0]  # (n + 1, T=1, d)
        e = tokens.mean(1)  # (n + 1, d): each item's soft token
        titles = [[TITLES[i] for i in history_items(row).tolist()] for row in HISTORY]
        batch = model.prompt.build(titles, [[] for _ in titles])  # no {candidates} in the template
        embeds = lm.get_input_embeddings()(batch.input_ids).clone()  # (B, T, d)
        for b in range(HISTORY.shape[0]):
            slots = (batch.input_ids[b] == backbone.item_token_id).nonzero().squeeze(1)
            items = history_items(HISTORY[b])
            assert slots.numel() == items.numel()
            embeds[b, slots] = tokens[items, 0]
        mask = batch.attention_mask
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        q = lm.base_model(inputs_embeds=embeds, attention_mask=mask, position_ids=pos).last_hidden_state[
            :, -1
        ]
        # q is what the LM's own output head reads at the answer position
        full = lm(inputs_embeds=embeds, attention_mask=mask, position_ids=pos).logits[:, -1]  # (B, V)
        torch.testing.assert_close(full, lm.get_output_embeddings()(q), atol=1e-5, rtol=1e-5)

        head = copy.deepcopy(lm.get_output_embeddings())  # the backbone itself stays untouched
        rows = torch.tensor([7, 3, 20, 11])  # arbitrary vocabulary rows
        for b in range(HISTORY.shape[0]):
            head.weight[rows] = SCALE * F.normalize(e[CANDIDATES[b]], dim=-1)
            logits = head(q[b])  # (V,)
            torch.testing.assert_close(scores[b], logits[rows] / q[b].norm(), atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------------- 2
@pytest.mark.parametrize("full", [False, True], ids=["plain", "user_token+collab_score"])
def test_scores_do_not_depend_on_the_candidate_order_or_set(backbone: Backbone, full: bool) -> None:
    model = make_model(backbone, user_token=full, collab_score=full)
    scores = model.score(HISTORY, CANDIDATES)
    perm = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(model.score(HISTORY, CANDIDATES[:, perm]), scores[:, perm], atol=1e-5, rtol=0)
    # a candidate's score is the same whatever the other candidates are
    torch.testing.assert_close(model.score(HISTORY, CANDIDATES[:, 1:2]), scores[:, 1:2], atol=1e-5, rtol=0)
    assert scores.std() > 0.1


# ---------------------------------------------------------------------------------------------------- 3
def test_user_token_placement_injection_and_gradients(backbone: Backbone) -> None:
    model = make_model(backbone, user_token=True, collab_score=True)
    tok = backbone.tokenizer
    uid = model.prompt.user_token_id
    assert uid == tok.convert_tokens_to_ids(USER_TOKEN) != backbone.item_token_id
    template = model.prompt.template
    assert template.has_user and not template.has_candidates

    with torch.no_grad():
        table, _, _ = model.item_table()  # (n + 1, 1, d)
        batch, embeds, _, _ = model.embed_prompt(HISTORY, CANDIDATES, None, table)
        user, rep = model.user_vectors(HISTORY)  # (B, d), (B, H)
    is_user = batch.input_ids == uid
    assert is_user.sum(1).tolist() == [1] * HISTORY.shape[0]  # exactly one per example
    # at the {user} slot: after the tokens of the template text before it, before every item placeholder
    prefix = template.text[: template.text.index("{user}")]
    assert "{" not in prefix
    n_prefix = len(tok(prefix, add_special_tokens=True)["input_ids"])
    for b in range(HISTORY.shape[0]):
        first = int((batch.attention_mask[b] == 0).sum())
        at = int(is_user[b].nonzero())
        assert at - first == n_prefix
        items_at = (batch.input_ids[b] == backbone.item_token_id).nonzero().squeeze(1)
        assert items_at.numel() == history_items(HISTORY[b]).numel() and (items_at > at).all()
    # inject wrote the user vector (unit direction times the soft-token norm) there
    torch.testing.assert_close(embeds[is_user], user)
    torch.testing.assert_close(user.norm(dim=-1), torch.full((3,), float(model.token_norm)))
    assert rep.shape == (3, model.collab.hidden) == (3, 8)

    vectors = torch.cat([table[history_items(row), 0] for row in HISTORY])  # placeholder order
    torch.testing.assert_close(model.inject(batch.input_ids, vectors, user), embeds)
    with pytest.raises(ValueError, match=r"3 <\|user\|> placeholders but 2 vectors"):
        model.inject(batch.input_ids, vectors, user[:2])
    with pytest.raises(ValueError, match="no user vectors"):
        model.inject(batch.input_ids, vectors, None)

    model.train()
    assert not model.lm.training and not model.collab.training and not model.collab.net.training
    out = model(HISTORY, CANDIDATES, TARGET)
    out.loss.backward()
    collab_params = list(model.collab.parameters())
    assert collab_params and all(p.grad is None and not p.requires_grad for p in collab_params)
    assert all(p.grad is None for p in model.lm.parameters())
    assert not {id(p) for p in collab_params} & {id(p) for p in model.trainable_parameters()}
    user_params = list(model.adapter.user.parameters())
    assert user_params and all(p.grad is not None and p.grad.abs().sum() > 0 for p in user_params)
    assert model.adapter.collab_weight.grad is not None and model.adapter.log_scale.grad is not None


# ---------------------------------------------------------------------------------------------------- 4
@pytest.mark.parametrize(("fusion", "user_token"), [("gated", True), ("tokens", False)])
def test_no_llm_query_is_the_mean_of_the_prompts_soft_tokens(
    backbone: Backbone, fusion: str, user_token: bool
) -> None:
    model = make_model(backbone, user_token=user_token, no_llm=True, fusion=fusion)

    def fail(*_: object) -> None:
        raise AssertionError("the backbone ran with no_llm")

    hooks = [model.lm.register_forward_pre_hook(fail), model.lm.base_model.register_forward_pre_hook(fail)]
    try:
        with torch.no_grad():
            table, _, _ = model.item_table()  # (n + 1, T, d)
            user, _ = model.user_vectors(HISTORY)
            q, _, _, n_read = query(model, HISTORY, CANDIDATES, table)
        assert table.shape[1] == (2 if fusion == "tokens" else 1)
        assert (user is not None) == user_token and n_read == 0
        want = []
        for b in range(HISTORY.shape[0]):
            soft = table[history_items(HISTORY[b])].reshape(-1, table.shape[-1])  # (S * T, d)
            if user is not None:
                soft = torch.cat([soft, user[b : b + 1]])
            want.append(soft.mean(0))
        torch.testing.assert_close(q, torch.stack(want))
        cos = F.cosine_similarity(torch.stack(want)[:, None], table.mean(1)[CANDIDATES], dim=-1)  # (B, C)
        torch.testing.assert_close(model.score(HISTORY, CANDIDATES), SCALE * cos, atol=1e-5, rtol=0)
        model.train()
        out = model(HISTORY, CANDIDATES, TARGET)  # trains without the backbone too
        out.loss.backward()
        assert out.n_tokens == 0 and torch.isfinite(out.loss)
    finally:
        for h in hooks:
            h.remove()


# ---------------------------------------------------------------------------------------------------- 5
def test_collab_score_adds_the_weighted_collaborative_logit_and_parts_split_it(backbone: Backbone) -> None:
    model = make_model(backbone, user_token=True, collab_score=True)
    with torch.no_grad():
        model.adapter.collab_weight.fill_(0.0)
        cosine = model.score(HISTORY, CANDIDATES)  # w = 0: the cosine part alone
        model.adapter.collab_weight.fill_(0.7)
    scores = model.score(HISTORY, CANDIDATES)
    assert (cosine.abs() <= SCALE + 1e-5).all()
    net = model.collab.net
    with torch.no_grad():
        rep = net(HISTORY)[:, -1]  # (B, H): SASRec's last position
        hand = (rep[:, None, :] * net.item_emb.weight[CANDIDATES]).sum(-1)  # (B, C)
    assert hand.abs().max() > 0.1
    torch.testing.assert_close(scores - cosine, 0.7 * hand, atol=1e-4, rtol=0)
    parts = model.score_parts(HISTORY, CANDIDATES)  # the two terms, as `--protocol parts` ranks by them
    torch.testing.assert_close(parts.content, cosine)
    torch.testing.assert_close(parts.collab, 0.7 * hand, atol=1e-4, rtol=0)
    torch.testing.assert_close(parts.total, scores)
    alone = make_model(backbone).score_parts(HISTORY, CANDIDATES)  # no collaborative score: content only
    assert alone.collab is None and torch.equal(alone.total, alone.content)


# ---------------------------------------------------------------------------------------------------- 6
@pytest.mark.parametrize("fusion", ["gated", "tokens"])  # tokens: T = 2 soft tokens per item, averaged
def test_catalogue_and_candidates_losses(backbone: Backbone, fusion: str) -> None:
    model = make_model(backbone, user_token=True, collab_score=True, fusion=fusion)
    out = model(HISTORY, CANDIDATES, TARGET)
    everything = torch.arange(1, N_ITEMS + 1).expand(HISTORY.shape[0], N_ITEMS)  # (B, n)
    logits = model.score(HISTORY, everything)  # the candidate path over every item
    torch.testing.assert_close(out.lm_loss, F.cross_entropy(logits, TARGET - 1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, out.lm_loss + model.aux_weight * out.aux_loss)
    if fusion == "gated":
        assert out.weights.shape == (N_ITEMS + 1, 2)  # the catalogue's gate weights
    assert out.n_answer_tokens == 3 and out.n_tokens > 0

    model = make_model(backbone, user_token=True, collab_score=True, loss_items="candidates", fusion=fusion)
    out = model(HISTORY, CANDIDATES, TARGET)
    label = (TARGET[:, None] == CANDIDATES).float().argmax(1)
    want = F.cross_entropy(model.score(HISTORY, CANDIDATES), label)
    torch.testing.assert_close(out.lm_loss, want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="target"):
        model(HISTORY, CANDIDATES, torch.tensor([5, 12, 1]))  # 5 is not a candidate of example 0


# ---------------------------------------------------------------------------------------------------- 7
@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ModelConfig(answer="title", prompt_candidates=False), "model.prompt_candidates"),
        (lambda: ModelConfig(answer="title", collab_score=True), "model.collab_score"),
        (lambda: ModelConfig(gate=GateConfig(use_user_context=True)), "model.gate.use_user_context"),
        (
            lambda: ModelConfig(user_token=None, collab_score=True),
            "model.collab_score: needs model.user_token",
        ),
        (lambda: ModelConfig(template="Watched {history}. Next:"), "{user}"),
        (
            lambda: ModelConfig(template="{user} watched {history} of {candidates}. Next:"),
            "{candidates}",
        ),
        (lambda: ModelConfig(user_token="bert4rec"), "model.user_token: unknown value"),
    ],
)
def test_model_config_validation(make, message: str) -> None:
    with pytest.raises(ValueError) as e:
        make()
    assert message in str(e.value)


def test_valid_head_configs() -> None:
    title = ModelConfig(
        answer="title",
        prompt_candidates=True,
        user_token=None,
        collab_score=False,
        gate=GateConfig(use_user_context=True),  # the gate's user context: title head only
    )
    assert "{candidates}" in title.template and "{user}" not in title.template
    plain = ModelConfig(user_token=None, collab_score=False)
    assert "{candidates}" not in plain.template and "{user}" not in plain.template
    listed = ModelConfig(prompt_candidates=True)  # item_token may list the candidates too
    assert "{candidates}" in listed.template and "{user}" in listed.template


def test_model_constructor_validation(backbone: Backbone) -> None:
    enc = ItemEncoder(features(), HIDDEN, encoder_config(), token_norm=backbone.embed_norm)
    with pytest.raises(ValueError, match="collab"):
        AMFRecModel(backbone, enc, TITLES, user_token=True)  # no collaborative net
    with pytest.raises(ValueError, match="item_token"):
        AMFRecModel(backbone, enc, TITLES, answer="title", collab=make_collab(), collab_score=True)
    with pytest.raises(ValueError, match="user"):
        AMFRecModel(
            backbone,
            enc,
            TITLES,
            template=PromptTemplate(text="Saw {history}:"),
            collab=make_collab(),
            user_token=True,
        )
    with pytest.raises(ValueError, match="answer"):
        AMFRecModel(backbone, enc, TITLES, answer="logits")


def test_build_amfrec_from_the_default_head_config(backbone: Backbone) -> None:
    cfg = ModelConfig(  # the tiny backbone has 2 layers: all of them
        modalities=["id", "text"],
        projector=ProjectorConfig(n_experts=2, hidden=8),
        gate=GateConfig(hidden=8),
        lm_layers=None,
    )
    assert cfg.user_token is not None and cfg.collab_score  # the defaults
    model = build_amfrec(cfg, features(), TITLES, backbone=backbone, collab=make_collab())
    assert model.adapter.user is not None and model.adapter.collab_weight is not None
    assert model.prompt.template.text == cfg.template and model.prompt.has_user  # a user token per item
    assert float(model.adapter.log_scale.detach().exp()) == pytest.approx(cfg.score_scale)
    scores = model.score(HISTORY, CANDIDATES)
    assert scores.shape == CANDIDATES.shape and torch.isfinite(scores).all()


def test_query_head_starts_as_the_identity_and_learns(backbone: Backbone) -> None:
    """query_head: W q + b with W = I, b = 0 at start (the LM's own logits); then W gets a gradient and a
    changed W changes the scores exactly as the hand-computed cosine with W q says."""
    plain, headed = make_model(backbone), make_model(backbone, query_head=True)
    torch.testing.assert_close(headed.score(HISTORY, CANDIDATES), plain.score(HISTORY, CANDIDATES))
    headed.train()
    headed(HISTORY, CANDIDATES, TARGET).loss.backward()
    assert headed.adapter.query.weight.grad is not None and headed.adapter.query.weight.grad.abs().sum() > 0
    with torch.no_grad():
        headed.adapter.query.weight.mul_(-1.0)  # W = -I: every cosine flips sign
    torch.testing.assert_close(headed.score(HISTORY, CANDIDATES), -plain.score(HISTORY, CANDIDATES))


@pytest.mark.parametrize("fast", [False, True], ids=["transformers", "fast"])
def test_gradient_checkpointing_recomputes_layers_and_changes_nothing(tmp_path, fast: bool) -> None:
    """The same loss and adapter gradients with checkpointing; each layer runs twice per step (forward, then
    again in the backward pass) instead of once, on transformers' forward and on the fast path."""
    cfg = ModelConfig(modalities=["id", "text"], projector=ProjectorConfig(hidden=8),
                      gate=GateConfig(hidden=8), user_token=None, collab_score=False,
                      fast_decoder=fast, lm_layers=None)  # fmt: skip
    path = make_tiny_backbone_dir(tmp_path / "lm")
    results = []
    for checkpointing in (False, True):
        bb = load_backbone(str(path), dtype="float32", device="cpu")
        calls: list[int] = []

        def counted(inner, _calls=calls):  # count every run of a layer
            def run(*args, **kwargs):
                _calls.append(1)
                return inner(*args, **kwargs)

            return run

        for layer in bb.model.base_model.layers:  # before checkpointing wraps them
            layer.forward = counted(layer.forward)
        torch.manual_seed(0)
        cfg_k = dataclasses.replace(cfg, gradient_checkpointing=checkpointing)
        model = build_amfrec(cfg_k, features(), TITLES, backbone=bb)
        assert (bb.fast is not None) == fast
        if fast:  # the fast path calls its layer function, never the layers' forward
            bb.fast.layer_fn = counted(bb.fast.layer_fn)
        out = model(HISTORY, CANDIDATES, TARGET)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.adapter.named_parameters() if p.grad is not None}
        results.append((out.loss.detach(), grads, len(calls) / len(bb.model.base_model.layers)))
        assert all(p.grad is None for p in bb.model.parameters())
    (loss0, grads0, runs0), (loss1, grads1, runs1) = results
    assert (runs0, runs1) == (1, 2)
    torch.testing.assert_close(loss1, loss0, rtol=0, atol=1e-6)
    assert grads0.keys() == grads1.keys()
    for name in grads0:
        torch.testing.assert_close(grads1[name], grads0[name], rtol=1e-5, atol=1e-6)


def test_the_item_table_is_reused_without_gradients_until_a_weight_changes(backbone: Backbone) -> None:
    cfg = ModelConfig(modalities=["id", "text"], projector=ProjectorConfig(hidden=8),
                      gate=GateConfig(hidden=8), user_token=None, collab_score=False,
                      lm_layers=None)  # fmt: skip
    model = build_amfrec(cfg, features(), TITLES, backbone=backbone).eval()
    with torch.no_grad():
        first = model.item_table()[0]
        assert model.item_table()[0] is first  # reused
        next(model.item_encoder.parameters()).add_(0.5)  # a weight changes in place
        changed = model.item_table()[0]
    assert changed is not first and not torch.equal(changed, first)
    fresh = model.item_table()[0]  # with gradients: always computed, never cached
    assert fresh.requires_grad and torch.allclose(fresh, changed)
    with torch.no_grad():
        model.adapter.load_state_dict(copy.deepcopy(model.adapter.state_dict()))
        assert model.item_table()[0] is not changed  # load_state_dict copies in place: a new version
