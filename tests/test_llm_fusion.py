"""Modality gate and item encoder: masking, exact zeros, shapes per fusion mode, norms, gradients."""

from types import SimpleNamespace

import pytest
import torch

from amfrec.config.model import GateConfig, ModelConfig, ProjectorConfig
from amfrec.model.item_encoder import ItemEncoder, ModalityGate

N_ITEMS, D_LLM = 6, 12
DIMS = {"id": 4, "text": 5, "image": 3}


def _features(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    feats = {}
    for name, d in DIMS.items():
        present = torch.ones(N_ITEMS + 1, dtype=torch.bool)
        present[0] = False
        values = torch.randn(N_ITEMS + 1, d, generator=g)
        feats[name] = SimpleNamespace(name=name, values=values, present=present)
    # item 2: no image; item 3: only text; item 5: nothing at all
    for item, absent in ((2, ["image"]), (3, ["id", "image"]), (5, ["id", "text", "image"])):
        for name in absent:
            feats[name].present[item] = False
            feats[name].values[item] = 0.0
    for f in feats.values():
        f.values[0] = 0.0
    return feats


# The gate's user context exists with the title head only (the item_token head shares one item table).
TITLE_HEAD = {"answer": "title", "prompt_candidates": True, "user_token": None, "collab_score": False}


def _cfg(**kw) -> ModelConfig:
    kw.setdefault("projector", ProjectorConfig(n_experts=3, hidden=8))
    kw.setdefault("gate", GateConfig(hidden=8, use_user_context=True))
    if kw["gate"].use_user_context:
        for key, value in TITLE_HEAD.items():
            kw.setdefault(key, value)
    return ModelConfig(**kw)


ITEMS = torch.tensor([[1, 2, 3], [5, 0, 4]])  # (B=2, S=3)
HIST = torch.tensor([[0, 1, 4], [0, 0, 0]])  # second user: empty history


def test_gate_masks_absent_exactly_and_handles_all_absent():
    torch.manual_seed(0)
    gate = ModalityGate([4, 5, 3], hidden=8, use_user_context=False, temperature=0.5)
    present = torch.tensor(
        [[True, True, True], [True, False, True], [False, False, False], [False, True, False]]
    )
    xs = [torch.randn(4, d) for d in (4, 5, 3)]
    w = gate(gate.features(xs, present), present)
    assert w[1, 1].item() == 0.0 and w[3, 0].item() == 0.0 and w[3, 2].item() == 0.0
    torch.testing.assert_close(w[[0, 1, 3]].sum(-1), torch.ones(3))
    assert w[3, 1].item() == 1.0
    assert torch.equal(w[2], torch.zeros(3))
    assert torch.isfinite(w).all()


def test_gated_encoder_weights_tokens_and_no_nan():
    torch.manual_seed(0)
    enc = ItemEncoder(_features(), D_LLM, _cfg(), token_norm=2.5)
    out = enc(ITEMS, HIST)
    assert out.tokens.shape == (2, 3, 1, D_LLM) and enc.tokens_per_item == 1
    assert out.weights.shape == (2, 3, 3)
    w = out.weights
    assert w[0, 1, 2].item() == 0.0  # item 2 has no image
    assert (
        w[0, 2, 0].item() == 0.0 and w[0, 2, 2].item() == 0.0 and w[0, 2, 1].item() == 1.0
    )  # item 3: text only
    torch.testing.assert_close(w[0].sum(-1), torch.ones(3))
    # item 5 (nothing present) and padding (0): zero weights, zero token
    assert torch.equal(w[1, 0], torch.zeros(3)) and torch.equal(w[1, 1], torch.zeros(3))
    assert torch.equal(out.tokens[1, 0], torch.zeros(1, D_LLM)) and torch.equal(
        out.tokens[1, 1], torch.zeros(1, D_LLM)
    )
    # real items have exactly the token norm
    norms = out.tokens[..., 0, :].norm(dim=-1)
    torch.testing.assert_close(norms[0], torch.full((3,), 2.5))
    torch.testing.assert_close(norms[1, 2], torch.tensor(2.5))
    assert torch.isfinite(out.tokens).all() and torch.isfinite(out.aux_loss)


def test_gated_token_is_weighted_sum_of_unit_projections():
    torch.manual_seed(0)
    feats = _features()
    enc = ItemEncoder(feats, D_LLM, _cfg(), token_norm=3.0)
    out = enc(torch.tensor([[1]]), torch.tensor([[4, 2]]))
    us = []
    for name in ("id", "text", "image"):
        p, _, _ = enc.projectors[name](feats[name].values[1:2])
        us.append(torch.nn.functional.normalize(p, dim=-1))
    fused = sum(out.weights[0, 0, m] * us[m] for m in range(3))
    torch.testing.assert_close(out.tokens[0, 0, 0], 3.0 * torch.nn.functional.normalize(fused, dim=-1)[0])


def test_user_context_changes_weights():
    torch.manual_seed(0)
    enc = ItemEncoder(_features(), D_LLM, _cfg(), token_norm=1.0)
    a = enc(torch.tensor([[1]]), torch.tensor([[2, 4]])).weights
    b = enc(torch.tensor([[1]]), torch.tensor([[6, 3]])).weights
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="history"):
        enc(torch.tensor([[1]]), None)


@pytest.mark.parametrize(
    "fusion, kw, T",
    [
        ("gated", {}, 1),
        ("tokens", {}, 3),
        ("mean", {}, 1),
        ("concat", {}, 1),
        ("single", {"single_modality": "text"}, 1),
        ("llara", {}, 1),
    ],
)
def test_each_mode_shape_padding_and_gradients(fusion, kw, T):
    torch.manual_seed(0)
    enc = ItemEncoder(_features(), D_LLM, _cfg(fusion=fusion, **kw), token_norm=2.0)
    assert enc.tokens_per_item == T
    out = enc(ITEMS, HIST)
    assert out.tokens.shape == (2, 3, T, D_LLM)
    assert (out.weights is not None) == (fusion in ("gated", "mean"))
    assert torch.equal(out.tokens[1, 1], torch.zeros(T, D_LLM))  # padding
    assert torch.isfinite(out.tokens).all()
    # the token norm is fixed, so use a direction-sensitive loss (a random linear read-out)
    ((out.tokens * torch.randn_like(out.tokens)).sum() + out.aux_loss).backward()
    for name, p in enc.named_parameters():
        if fusion == "single" and not name.startswith(("projectors.text", "gate")):
            continue
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_tokens_mode_absent_modality_is_zero_and_single_absent_is_zero():
    torch.manual_seed(0)
    enc = ItemEncoder(_features(), D_LLM, _cfg(fusion="tokens"), token_norm=2.0)
    tok = enc(torch.tensor([[2, 3]]), None).tokens  # item 2: no image; item 3: text only
    assert torch.equal(tok[0, 0, 2], torch.zeros(D_LLM))
    assert torch.equal(tok[0, 1, 0], torch.zeros(D_LLM)) and torch.equal(tok[0, 1, 2], torch.zeros(D_LLM))
    torch.testing.assert_close(tok[0, 0, :2].norm(dim=-1), torch.full((2,), 2.0))
    enc = ItemEncoder(_features(), D_LLM, _cfg(fusion="single", single_modality="id"), token_norm=2.0)
    assert torch.equal(enc(torch.tensor([[3]])).tokens, torch.zeros(1, 1, 1, D_LLM))


def test_mean_mode_averages_present_projections():
    torch.manual_seed(0)
    feats = _features()
    enc = ItemEncoder(feats, D_LLM, _cfg(fusion="mean", token_scale=None))
    tok = enc(torch.tensor([[2]])).tokens[0, 0, 0]  # item 2: id and text present
    want = (
        enc.projectors["id"](feats["id"].values[2:3])[0]
        + enc.projectors["text"](feats["text"].values[2:3])[0]
    ) / 2
    torch.testing.assert_close(tok, want[0])
    # its weights are the equal shares of the present modalities (id, text, image order), by hand
    weights = enc(torch.tensor([[1, 2, 3, 5]])).weights[0]  # (4, 3)
    third = 1 / 3
    expected = torch.tensor([[third, third, third], [0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(weights, expected)


def test_features_are_non_persistent_buffers():
    enc = ItemEncoder(_features(), D_LLM, _cfg(), token_norm=1.0)
    keys = set(enc.state_dict())
    assert not any(k.startswith(("feat", "mask")) for k in keys)
    assert keys == {n for n, _ in enc.named_parameters()}
    assert all(not b.requires_grad for b in enc.buffers())


def test_validation_errors():
    feats = _features()
    with pytest.raises(ValueError, match="'audio' not in the features"):
        ItemEncoder(feats, D_LLM, _cfg(modalities=["id", "audio"]), token_norm=1.0)
    with pytest.raises(ValueError, match="token_norm"):
        ItemEncoder(feats, D_LLM, _cfg(), token_norm=None)
    bad = dict(
        feats,
        text=SimpleNamespace(name="text", values=torch.zeros(N_ITEMS, 5), present=feats["text"].present),
    )
    with pytest.raises(ValueError, match="rows"):
        ItemEncoder(bad, D_LLM, _cfg(), token_norm=1.0)
    nan = feats["id"].values.clone()
    nan[1, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        ItemEncoder(
            dict(feats, id=SimpleNamespace(name="id", values=nan, present=feats["id"].present)),
            D_LLM,
            _cfg(),
            token_norm=1.0,
        )
    enc = ItemEncoder(feats, D_LLM, _cfg(), token_norm=1.0)
    with pytest.raises(ValueError, match="outside"):
        enc(torch.tensor([[N_ITEMS + 1]]), HIST[:1])
