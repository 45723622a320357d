"""Backbone loader: real path code on a tiny saved model; the SmolLM2 default in an e2e test."""

from __future__ import annotations

import pytest
import torch
from llm_fixtures import make_tiny_backbone_dir, tiny_vocab
from transformers import AutoModelForCausalLM

from amfrec.errors import AmfrecError
from amfrec.llm.backbone import ITEM_TOKEN, USER_TOKEN, load_backbone, truncate_layers


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_backbone_dir(tmp_path_factory.mktemp("tiny_lm"))


def test_path_load_freezes_and_adds_item_token(tiny_dir):
    bb = load_backbone(str(tiny_dir), device="cpu")
    model, tok = bb.model, bb.tokenizer
    assert all(not p.requires_grad for p in model.parameters())
    assert not model.training
    n_vocab = len(tiny_vocab())
    assert bb.item_token_id == n_vocab  # appended after the original vocabulary
    assert tok(f"Babe {ITEM_TOKEN}{ITEM_TOKEN}", add_special_tokens=False)["input_ids"][-2:] == [n_vocab] * 2
    assert tok.convert_tokens_to_ids(USER_TOKEN) == n_vocab + 1
    assert tok(f"Babe {USER_TOKEN}", add_special_tokens=False)["input_ids"][-1] == n_vocab + 1
    assert model.get_input_embeddings().weight.shape == (n_vocab + 2, 32)  # <|item|> and <|user|>
    assert tok.pad_token == tok.eos_token == "</s>"  # the fixture has no pad token: pad = eos
    assert tok.padding_side == "left"
    assert bb.hidden_size == 32
    assert bb.identity["n_params"] == sum(p.numel() for p in model.parameters())
    assert bb.identity["hidden_size"] == 32
    assert len(bb.identity["fingerprint"]) == 64


def test_new_embedding_row_is_mean_and_embed_norm(tiny_dir):
    bb = load_backbone(str(tiny_dir), dtype="float32", device="cpu")  # compared with float32 weights
    original = AutoModelForCausalLM.from_pretrained(tiny_dir).get_input_embeddings().weight.detach()  # (V, d)
    w = bb.model.get_input_embeddings().weight
    torch.testing.assert_close(w[:-2], original)
    torch.testing.assert_close(w[-2:], original.mean(0).expand(2, -1))  # <|item|> and <|user|>
    assert bb.embed_norm == pytest.approx(float(original.norm(dim=-1).mean()), rel=1e-6)
    # tied output head: same storage, so the new output row is the mean row too
    assert bb.model.get_output_embeddings().weight.data_ptr() == w.data_ptr()


def test_untied_head_new_row_is_mean(tmp_path):
    path = make_tiny_backbone_dir(tmp_path / "untied", tie=False)
    bb = load_backbone(str(path), device="cpu")
    head = bb.model.get_output_embeddings().weight
    assert head.data_ptr() != bb.model.get_input_embeddings().weight.data_ptr()
    torch.testing.assert_close(head[-2:], head[:-2].mean(0).expand(2, -1))
    assert not head.requires_grad


def test_truncate_layers(tiny_dir):
    bb = load_backbone(str(tiny_dir), device="cpu")
    first = bb.model.base_model.layers[0]
    truncate_layers(bb, None)  # keep all
    assert len(bb.model.base_model.layers) == 2
    with pytest.raises(AmfrecError, match="lm_layers"):
        truncate_layers(bb, 3)
    truncate_layers(bb, 1)
    assert len(bb.model.base_model.layers) == 1 and bb.model.base_model.layers[0] is first
    assert bb.model.config.num_hidden_layers == 1
    assert bb.identity["lm_layers"] == 1
    ids = torch.tensor([[1, 5, 6]])
    assert bb.model(input_ids=ids).logits.shape == (1, 3, len(bb.tokenizer))  # still runs as an LM


def test_bfloat16_and_bad_dtype(tiny_dir):
    bb = load_backbone(str(tiny_dir), dtype="bfloat16", device="cpu")
    assert bb.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        load_backbone(str(tiny_dir), dtype="float16")


@pytest.mark.e2e
def test_smollm2_default_loads_frozen():
    bb = load_backbone(device="cpu")
    assert bb.identity["name"] == "smollm2-135m"
    assert len(bb.identity["file_sha256"]) == 64
    assert bb.hidden_size == 576
    assert bb.model.config.tie_word_embeddings
    assert bb.tokenizer.eos_token == "<|im_end|>"
    assert bb.item_token_id == 49152
    assert bb.identity["n_params"] == 134_515_008 + 2 * 576  # + the <|item|> and <|user|> rows
    assert all(not p.requires_grad for p in bb.model.parameters())
