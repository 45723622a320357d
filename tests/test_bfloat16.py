"""The bfloat16 path, on every machine: the backbone is loaded with an explicit dtype (never `auto`), so these
tests run in bfloat16 even where bfloat16 matmuls are slow (tiny models keep that cheap).

What must hold in bfloat16: soft tokens are cast where they are written into the embeddings (both dtypes);
the adapter, the scores and the loss stay float32; gradients reach only the adapter; item-token scores agree
with the float32 model within a bound derived from bfloat16's precision; a trained run reloads to the same
scores; the API serves it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from llm_fixtures import (
    HIDDEN,
    SMALL,
    TITLES,
    make_tiny_amfrec_inputs,
    make_tiny_backbone_dir,
    random_features,
)
from safetensors.torch import load_file

from amfrec.config.model import AMFRecConfig, GateConfig, ModelConfig, ProjectorConfig
from amfrec.data.dataset import PreparedData
from amfrec.llm.backbone import Backbone, load_backbone
from amfrec.model.item_encoder import ItemEncoder
from amfrec.model.model import AMFRecModel
from amfrec.model.query import query
from amfrec.runs.amfrec_run import build_model, evaluate_run, load_run, train_amfrec
from amfrec.runs.ranker import Ranker
from amfrec.serve.app import create_app

N_ITEMS = len(TITLES) - 1
HISTORY = torch.tensor([[0, 0, 1, 2, 3], [0, 0, 0, 0, 4], [5, 6, 7, 8, 9]])  # (B, L), left-padded
CANDIDATES = torch.tensor([[4, 10, 8, 11], [1, 12, 3, 2], [10, 11, 12, 1]])  # (B, C)
TARGET = torch.tensor([10, 12, 1])
SCALE = 3.0  # the cosine scale s of the item-token score
UNIT_ROUNDOFF = 2.0**-8  # bfloat16 keeps 8 significant bits: one rounding is off by at most 2^-8 relative
DTYPES = ("float32", "bfloat16")


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_backbone_dir(tmp_path_factory.mktemp("tiny_lm"))


def backbone(lm_dir: Path, dtype: str) -> Backbone:
    return load_backbone(str(lm_dir), dtype=dtype, device="cpu")


def make_model(bb: Backbone) -> AMFRecModel:
    """An item_token model whose adapter weights depend only on the seed (not on the backbone's dtype)."""
    cfg = ModelConfig(modalities=["id", "text"], projector=ProjectorConfig(n_experts=2, hidden=8),
                      gate=GateConfig(hidden=8), user_token=None, collab_score=False, max_len=5)  # fmt: skip
    torch.manual_seed(0)
    enc = ItemEncoder(random_features(N_ITEMS), HIDDEN, cfg, token_norm=bb.embed_norm)
    model = AMFRecModel(bb, enc, TITLES, answer="item_token")
    with torch.no_grad():
        model.adapter.log_scale.fill_(math.log(SCALE))
    return model.eval()


@pytest.mark.parametrize("dtype", DTYPES)
def test_soft_tokens_are_cast_where_they_are_injected(lm_dir: Path, dtype: str) -> None:
    bb = backbone(lm_dir, dtype)
    model = make_model(bb)
    assert bb.dtype == getattr(torch, dtype)
    batch = model.prompt.build(model._titles(HISTORY), model._titles(CANDIDATES))
    vectors, _, _ = model._item_vectors(HISTORY, CANDIDATES)  # (N, d): the adapter's float32 output
    assert vectors.dtype == torch.float32
    embeds = model.inject(batch.input_ids, vectors)  # (B, T, d)
    assert embeds.dtype == bb.dtype
    slots = batch.input_ids == model.prompt.item_token_id  # (B, T)
    assert torch.equal(embeds[slots], vectors.to(bb.dtype))  # placeholder rows: the soft tokens, rounded once
    words = model.lm.get_input_embeddings()(batch.input_ids)  # (B, T, d)
    assert torch.equal(embeds[~slots], words[~slots])  # every other row: the word embedding


def test_bfloat16_loss_and_gradients_reach_only_the_adapter(lm_dir: Path) -> None:
    bb = backbone(lm_dir, "bfloat16")
    model = make_model(bb).train()
    before = {k: v.clone() for k, v in bb.model.state_dict().items()}
    out = model(HISTORY, CANDIDATES, TARGET)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    adapter = list(model.adapter.parameters())
    assert adapter and all(p.dtype == torch.float32 for p in adapter)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.item_encoder.parameters())
    assert any(float(p.grad.abs().sum()) > 0 for p in model.item_encoder.parameters())
    assert all(p.grad is None for p in bb.model.parameters())
    assert all(torch.equal(before[k], v) for k, v in bb.model.state_dict().items())


def test_bfloat16_scores_agree_with_float32_within_its_precision(lm_dir: Path) -> None:
    """The same adapter on the float32 and the bfloat16 backbone.

    Bound: the answer state q passes through ~8 roundings per layer (embeddings, 2 norms, q/k/v/o, MLP) and
    its relative error grows by at most one unit roundoff u each, so |dq|/|q| <= 8 (layers + 1) u (~0.09
    here; measured 0.014-0.035); the cosine moves by at most twice that, the score s * cos by s times it.
    """
    models = {dtype: make_model(backbone(lm_dir, dtype)) for dtype in DTYPES}
    q = {}
    with torch.no_grad():
        for dtype, model in models.items():
            q[dtype], _, _, _ = query(model, HISTORY, CANDIDATES, model.item_table()[0])  # (B, d) float32
    layers = 2
    rel = 8 * (layers + 1) * UNIT_ROUNDOFF
    err = (q["bfloat16"] - q["float32"]).norm(dim=-1) / q["float32"].norm(dim=-1)  # (B,)
    assert float(err.max()) <= rel and float(err.max()) > 0  # bfloat16 did run, within its precision
    users_apart = (q["float32"][0] - q["float32"][1]).norm() / q["float32"][0].norm()
    assert float(users_apart) > 2 * rel  # two users' states differ by more than the bound: it can fail
    f32, b16 = (models[d].score(HISTORY, CANDIDATES) for d in DTYPES)  # (B, C)
    assert b16.dtype == torch.float32 and b16.shape == CANDIDATES.shape
    assert float((b16 - f32).abs().max()) <= SCALE * 2 * rel


def test_projectors_compute_in_bfloat16_and_keep_float32_weights_and_outputs(lm_dir: Path) -> None:
    """An encoder whose projectors compute in bfloat16 (what build_model sets on a bfloat16 backbone) gives
    float32 tokens and float32 gradients within bfloat16's precision of the float32 encoder's (same weights),
    and not bit-equal to them: the matmuls did run in bfloat16.

    Bound: a projector is 2 matmuls + GELU; each rounding of an operand or result moves a value by at most
    one unit roundoff u relative, ~6 roundings per path, and the unit normalisations keep that relative:
    |d token| <= 8 u |token| with margin (measured 0.0047); gradients within 5% (measured 1.7%)."""
    model = make_model(backbone(lm_dir, "float32")).train()
    enc = model.item_encoder
    items = torch.arange(N_ITEMS + 1)[None]  # (1, n_items + 1): the catalogue
    runs = {}
    for dtype in (None, torch.bfloat16):
        enc.compute_dtype = dtype
        enc.zero_grad()
        out = enc(items)
        (out.tokens.pow(3).sum() + out.aux_loss).backward()
        runs[dtype] = (out.tokens.detach(), {n: p.grad.clone() for n, p in enc.named_parameters()})
    (t32, g32), (t16, g16) = runs[None], runs[torch.bfloat16]
    assert t16.dtype == torch.float32 and all(p.dtype == torch.float32 for p in enc.parameters())
    err = (t16 - t32).norm(dim=-1) / t32.norm(dim=-1).clamp(min=1e-12)  # (1, n_items + 1, T)
    assert float(err.max()) <= 8 * UNIT_ROUNDOFF and not torch.equal(t16, t32)
    for name, grad in g16.items():
        assert grad.dtype == torch.float32 and torch.isfinite(grad).all(), name
        assert float((grad - g32[name]).norm()) <= 0.05 * float(g32[name].norm()) + 1e-6, name


@pytest.mark.parametrize("dtype", DTYPES)
def test_build_model_sets_the_projectors_precision_from_the_backbone(
    tiny_prepared: Path, tmp_path: Path, dtype: str
) -> None:
    features, config = make_tiny_amfrec_inputs(tiny_prepared, tmp_path, dtype=dtype)
    cfg = AMFRecConfig.from_yaml(config, SMALL)
    model = build_model(cfg, PreparedData.load(tiny_prepared), features)
    assert model.backbone.dtype == getattr(torch, dtype)
    assert model.item_encoder.compute_dtype == (torch.bfloat16 if dtype == "bfloat16" else None)


@pytest.fixture(scope="module")
def bf16_run(tiny_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bf16-run")
    features, config = make_tiny_amfrec_inputs(tiny_prepared, root, dtype="bfloat16")
    train_amfrec(tiny_prepared, features, config, 1, root / "run", SMALL, limit=6)
    return root / "run"


def test_bfloat16_run_saves_float32_adapter_and_reloads_to_the_same_scores(bf16_run: Path) -> None:
    weights = load_file(bf16_run / "checkpoint" / "trainable.safetensors")
    assert weights and all(w.dtype == torch.float32 for w in weights.values())
    model, data, _ = load_run(bf16_run)
    assert model.backbone.dtype == torch.bfloat16
    again = evaluate_run(bf16_run, split="test", limit=6)
    first = json.loads((bf16_run / "metrics.json").read_text())
    for key in ("hr@1", "hr@5", "ndcg@10", "mrr"):
        assert again[key] == first[key]  # the same model on the same candidates: the same ranks
    hist, cands = data.test.history[:4], data.test.candidates[:4]
    torch.testing.assert_close(
        model.score(hist, cands), load_run(bf16_run)[0].score(hist, cands), rtol=0, atol=0
    )


def test_bfloat16_run_is_served(bf16_run: Path, tiny_prepared: Path) -> None:
    ranker = Ranker.load(bf16_run)
    ids = [json.loads(line)["item_id"] for line in (tiny_prepared / "items.jsonl").open()]
    want = ranker.rank(ids[:3], k=5)
    res = TestClient(create_app(ranker)).post("/recommend", json={"history": ids[:3], "k": 5})
    assert res.status_code == 200
    got = res.json()["items"]
    assert [it["item_id"] for it in got] == [r["item_id"] for r in want]
    assert all(math.isfinite(it["score"]) for it in got)
