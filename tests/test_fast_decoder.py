"""The fast decoder path computes what transformers' decoder computes (outputs and input gradients), on tiny
random Llama and Qwen2 models with non-trivial norm weights and left padding; unsupported models fall back."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from llm_fixtures import make_tiny_backbone_dir, make_tiny_model

from amfrec.llm.backbone import load_backbone, set_fast_decoder
from amfrec.llm.fast_decoder import FastDecoder, attention_bias, grouped_attention, unsupported_reason
from amfrec.llm.prompt import position_ids
from amfrec.model.head import cosine_scores


def _randomise_norms(decoder: torch.nn.Module, seed: int = 0) -> None:
    """Norm weights away from 1, so a norm applied in the wrong place shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in decoder.named_parameters():
            if "norm" in name:
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)


def _batch(d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """embeds (3, 7, d); rows 1 and 2 left-padded by 3 and 6 tokens; position ids from the mask."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, :3] = 0
    mask[2, :6] = 0
    return torch.randn(3, 7, d, generator=g), mask, position_ids(mask)


def _hf(decoder, x, mask, pos) -> torch.Tensor:
    return decoder(inputs_embeds=x, attention_mask=mask, position_ids=pos).last_hidden_state


def _tiny_qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    sizes = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2}
    config = Qwen2Config(vocab_size=50, num_hidden_layers=2, max_position_embeddings=64, **sizes)
    torch.manual_seed(1)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():  # Qwen2 has q/k/v biases (zero at init): make them count
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("make", [lambda: make_tiny_model(40), _tiny_qwen2], ids=["llama", "qwen2"])
def test_fast_path_equals_transformers_outputs_and_input_gradients(make) -> None:
    decoder = make().eval().requires_grad_(False).model
    _randomise_norms(decoder)
    assert unsupported_reason(decoder) is None
    x, mask, pos = _batch(decoder.config.hidden_size)
    tokens = mask.bool()  # padding positions' outputs are never read
    grad_out = torch.randn(3, 7, x.shape[-1], generator=torch.Generator().manual_seed(2)) * tokens[..., None]
    fast = FastDecoder(decoder)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ref, out = _hf(decoder, xa, mask, pos), fast(xb, mask, pos)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[tokens], ref[tokens], rtol=1e-5, atol=1e-5)
    ref.backward(grad_out)
    out.backward(grad_out)
    assert torch.isfinite(xb.grad).all()
    scale = xa.grad.abs().max()
    torch.testing.assert_close(xb.grad / scale, xa.grad / scale, rtol=0, atol=1e-5)


def test_checkpointed_and_compiled_fast_paths_give_the_same_values() -> None:
    decoder = make_tiny_model(40).eval().requires_grad_(False).model
    _randomise_norms(decoder, seed=3)
    x, mask, pos = _batch(decoder.config.hidden_size, seed=4)
    results = []
    for fast in (
        FastDecoder(decoder),
        FastDecoder(decoder, checkpoint=True),
        FastDecoder(decoder, compile=True),
    ):
        xg = x.clone().requires_grad_(True)
        out = fast(xg, mask, pos)
        out[mask.bool()].square().sum().backward()
        results.append((out.detach()[mask.bool()], xg.grad))
    for out, grad in results[1:]:
        torch.testing.assert_close(out, results[0][0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grad, results[0][1], rtol=1e-4, atol=1e-4)
    # another batch shape (compiled once more, padded to PAD_MULTIPLE tokens) still matches
    x2, m2 = torch.randn(2, 11, x.shape[-1]), torch.ones(2, 11, dtype=torch.long)
    fast = FastDecoder(decoder, compile=True)
    torch.testing.assert_close(
        fast(x2, m2, position_ids(m2)), _hf(decoder, x2, m2, position_ids(m2)), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("kind", ["eager", "checkpointed", "compiled"])
def test_last_only_is_transformers_last_position_with_its_input_gradients(kind: str) -> None:
    """`last_only` (the item_token head's query) computes the last layer for the last position alone; its
    output and input gradients are those of transformers' full forward read at the last position."""
    decoder = make_tiny_model(40).eval().requires_grad_(False).model
    _randomise_norms(decoder, seed=9)
    x, mask, pos = _batch(decoder.config.hidden_size, seed=10)
    fast = FastDecoder(decoder, compile=kind == "compiled", checkpoint=kind == "checkpointed")
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ref, out = _hf(decoder, xa, mask, pos)[:, -1:], fast(xb, mask, pos, last_only=True)
    assert out.shape == (3, 1, x.shape[-1])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    ref.square().sum().backward()
    out.square().sum().backward()
    tokens = mask.bool()  # a padding position's input gets no gradient in either
    scale = xa.grad.abs().max()
    torch.testing.assert_close(xb.grad[tokens] / scale, xa.grad[tokens] / scale, rtol=0, atol=1e-5)


def test_grouped_attention_equals_scaled_dot_product_attention() -> None:
    """The bfloat16 CPU path's products, in float32 against torch's own attention with repeated k/v heads."""
    g = torch.Generator().manual_seed(5)
    q, k, v = (
        torch.randn(2, 6, 5, 4, generator=g),
        torch.randn(2, 2, 5, 4, generator=g),
        torch.randn(2, 2, 5, 4),
    )
    bias = attention_bias(torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]]), torch.float32)  # (2, 1, 5, 5)
    expected = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1), attn_mask=bias, scale=0.5
    )
    torch.testing.assert_close(grouped_attention(q, k, v, bias, 0.5), expected, rtol=1e-5, atol=1e-6)


def test_fast_path_in_bfloat16_is_close_to_transformers() -> None:
    """bfloat16 (the grouped products on CPU): within bfloat16 rounding of transformers' bfloat16 forward."""
    decoder = make_tiny_model(40).eval().requires_grad_(False).model
    _randomise_norms(decoder, seed=6)
    decoder.to(torch.bfloat16)
    x, mask, pos = _batch(decoder.config.hidden_size, seed=7)
    tokens = mask.bool()
    with torch.no_grad():
        ref = _hf(decoder, x.to(torch.bfloat16), mask, pos)[tokens].float()
    for grad in (True, False):  # the products (a training step) and flash attention (no gradients)
        xb = x.to(torch.bfloat16).requires_grad_(grad)
        out = FastDecoder(decoder)(xb, mask, pos)[tokens].float()
        assert ((out - ref).norm() / ref.norm()).item() < 0.03  # bfloat16 keeps ~3 significant digits a step


def test_attention_bias_by_hand() -> None:
    """Row [pad, tok, tok]: query 0 (padding) sees itself only; query 1 sees 1; query 2 sees 1 and 2."""
    bias = attention_bias(torch.tensor([[0, 1, 1]]), torch.float32)[0, 0]
    low = torch.finfo(torch.float32).min
    expected = torch.tensor([[0, low, low], [low, 0, low], [low, 0, 0]])
    assert torch.equal(bias, expected)


def test_loaded_backbones_take_the_fast_path_and_unsupported_ones_fall_back(tmp_path: Path) -> None:
    bb = load_backbone(str(make_tiny_backbone_dir(tmp_path / "tiny")), dtype="float32")
    assert bb.fast is not None
    decoder = bb.model.base_model
    x, mask, pos = _batch(bb.hidden_size)
    with torch.no_grad():
        fast, fast_last = bb.decode(x, mask, pos), bb.decode(x, mask, pos, last_only=True)
        set_fast_decoder(bb, enabled=False)
        assert bb.fast is None
        slow, slow_last = bb.decode(x, mask, pos), bb.decode(x, mask, pos, last_only=True)
    torch.testing.assert_close(fast[mask.bool()], slow[mask.bool()], rtol=1e-5, atol=1e-5)
    assert fast_last.shape == slow_last.shape == (3, 1, bb.hidden_size)
    torch.testing.assert_close(fast_last, slow[:, -1:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(slow_last, slow[:, -1:], rtol=0, atol=0)
    decoder.config.hidden_act = "gelu"  # an MLP the fast path does not implement
    assert "activation" in unsupported_reason(decoder)
    set_fast_decoder(bb)
    assert bb.fast is None
    with pytest.raises(ValueError, match="unsupported model"):
        FastDecoder(decoder)


def test_cosine_scores_of_long_and_short_candidate_lists_against_a_loop() -> None:
    g = torch.Generator().manual_seed(0)
    q, out = torch.randn(3, 8, generator=g), torch.randn(11, 8, generator=g)  # 10 items + padding row 0
    for n_candidates in (2, 10):  # a gather of rows, then one product over the catalogue
        items = torch.randint(1, 11, (3, n_candidates), generator=g)
        expected = torch.tensor(
            [[torch.nn.functional.cosine_similarity(q[b], out[c], dim=0).item() for c in row] for b, row in
             enumerate(items.tolist())]
        )  # fmt: skip
        torch.testing.assert_close(cosine_scores(q, out, items), expected, rtol=1e-5, atol=1e-6)


def test_long_bfloat16_prompts_take_flash_attention(monkeypatch) -> None:
    """Past PRODUCTS_MAX_LEN keys the (T, T) products are not built (their memory); the answer is the same."""
    import amfrec.llm.fast_decoder as fd

    g = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(1, 4, 6, 8, generator=g).to(torch.bfloat16) for _ in range(3))
    q.requires_grad_(True)  # a training step: the products, up to PRODUCTS_MAX_LEN keys
    bias = attention_bias(torch.ones(1, 6, dtype=torch.long), torch.bfloat16)
    products = fd._attention(q, k[:, :2], v[:, :2], bias, 0.3)
    called: list[int] = []
    monkeypatch.setattr(fd, "PRODUCTS_MAX_LEN", 5)
    monkeypatch.setattr(fd, "grouped_attention", lambda *a: called.append(1))
    flash = fd._attention(q, k[:, :2], v[:, :2], bias, 0.3)
    assert not called
    torch.testing.assert_close(flash.float(), products.float(), rtol=0.02, atol=0.02)
    monkeypatch.setattr(fd, "PRODUCTS_MAX_LEN", 512)
    with torch.no_grad():  # no gradients (evaluation, serving): flash attention's faster forward
        fd._attention(q, k[:, :2], v[:, :2], bias, 0.3)
    assert not called
