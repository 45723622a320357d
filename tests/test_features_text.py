"""Text encoder: mean pooling over the attention mask (tiny random BERT), signal on real ml-100k titles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from amfrec.errors import AmfrecError
from amfrec.features.text import TextEncoder
from amfrec.io import file_sha256


def test_tiny_encoder_shape_norm_and_padding_invariance(tiny_bert: Path) -> None:
    enc = TextEncoder(str(tiny_bert))
    texts = ["star wars", "the empire of the jedi toy story comedy drama", "toy"]
    together = enc.encode(texts, batch_size=3, progress=False)  # (3, 16): short texts padded in the batch
    alone = np.stack([enc.encode([t], batch_size=1, progress=False)[0] for t in texts])
    assert together.shape == (3, 16) and together.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(together, alone, atol=1e-5)  # padding never leaks into the mean
    assert not np.allclose(together[0], together[2])


def test_tiny_encoder_mean_pooling_by_hand(tiny_bert: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    enc = TextEncoder(str(tiny_bert))
    got = enc.encode(["star wars jedi"], progress=False)[0]
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    model = AutoModel.from_pretrained(tiny_bert).eval()
    with torch.no_grad():
        h = model(**tok(["star wars jedi"], return_tensors="pt")).last_hidden_state[0]  # (T, 16), no padding
    want = h.mean(0) / h.mean(0).norm()
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5)


def test_info_identifies_weights(tiny_bert: Path) -> None:
    info = TextEncoder(str(tiny_bert)).info()
    assert info["name"] == str(tiny_bert)
    assert info["file_sha256"] == file_sha256(tiny_bert / "model.safetensors")


def test_unknown_encoder_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AmfrecError, match="not a local folder"):
        TextEncoder(str(tmp_path / "no-such-model"))


@pytest.mark.e2e
def test_default_encoder_star_wars_neighbours(prepared_ml100k: Path) -> None:
    """All 1,682 ml-100k items (title, year, genres): 50, 172, 181 are in each other's 10 NN (cosine)."""
    from amfrec.data.dataset import PreparedData

    data = PreparedData.load(prepared_ml100k)
    texts = [it.text() for it in data.items[1:]]  # position p = item index p + 1
    enc = TextEncoder()
    assert enc.info()["name"] == "sentence-transformers/all-MiniLM-L6-v2"
    v = enc.encode(texts, batch_size=64, progress=False)  # (1682, 384)
    assert v.shape == (1682, 384) and np.isfinite(v).all()
    sim = v @ v.T
    np.fill_diagonal(sim, -np.inf)
    nn = np.argsort(-sim, axis=1)[:, :10]  # (1682, 10)
    star = [data.index[i] - 1 for i in ("50", "172", "181")]
    for a in star:
        for b in star:
            if a != b:
                assert b in nn[a], f"{texts[b]!r} not among the 10 nearest of {texts[a]!r}"
