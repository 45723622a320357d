"""`--corrupt MODALITY=HOW`: only the named modality's present rows change; masks, other modalities stay."""

from __future__ import annotations

import pytest
import torch
from llm_fixtures import random_features

from amfrec.config.model import ModelConfig
from amfrec.errors import AmfrecError
from amfrec.features.corrupt import Corruption, corrupt, corrupt_features, parse_corruption
from amfrec.features.store import Modality
from amfrec.model.item_encoder import ItemEncoder

# rows: padding, two items with the modality, one without (its row stays zero)
VALUES = torch.tensor([[0.0, 0.0], [1.0, 2.0], [3.0, 4.0], [0.0, 0.0]])
PRESENT = torch.tensor([False, True, True, False])


def image() -> Modality:
    return Modality(name="image", values=VALUES.clone(), present=PRESENT.clone())


def test_zero_replaces_only_present_rows() -> None:
    out = corrupt(image(), Corruption.ZERO)
    assert torch.equal(out.values, torch.zeros(4, 2))
    assert torch.equal(out.present, PRESENT)


def test_shuffle_permutes_present_rows_among_themselves() -> None:
    outs = [corrupt(image(), Corruption.SHUFFLE, seed=s).values for s in range(8)]
    for v in outs:
        assert torch.equal(v[[0, 3]], VALUES[[0, 3]])  # padding and the absent item untouched
        assert sorted(map(tuple, v[1:3].tolist())) == [(1.0, 2.0), (3.0, 4.0)]
    assert any(torch.equal(v[1], VALUES[2]) for v in outs)  # some seed swaps the two rows


def test_noise_is_seeded_finite_and_leaves_absent_rows() -> None:
    a, b = corrupt(image(), Corruption.NOISE, seed=3), corrupt(image(), Corruption.NOISE, seed=3)
    assert torch.equal(a.values, b.values)
    assert torch.isfinite(a.values).all()
    assert torch.equal(a.values[[0, 3]], VALUES[[0, 3]])
    assert not torch.equal(a.values[1:3], VALUES[1:3])
    assert torch.equal(image().values, VALUES)  # the input is not modified in place


def test_parse_corruption() -> None:
    assert parse_corruption("image=shuffle") == ("image", Corruption.SHUFFLE)
    for bad, message in (("image", "MODALITY=HOW"), ("=zero", "MODALITY=HOW"), ("image=blur", "blur")):
        with pytest.raises(AmfrecError, match=message):
            parse_corruption(bad)


@pytest.mark.parametrize("how", list(Corruption))
def test_other_modalities_item_vectors_are_bit_identical(how: Corruption) -> None:
    feats = random_features(9, (("id", 4), ("text", 6), ("image", 5)))
    feats = {k: Modality(name=k, values=v.values, present=v.present) for k, v in feats.items()}
    feats["image"].present[4] = False  # one item without a poster
    feats["image"].values[4] = 0.0
    bad = corrupt_features(feats, "image", how, seed=1)
    assert bad["id"] is feats["id"] and bad["text"] is feats["text"]
    cfg = ModelConfig(modalities=["id", "text", "image"], projector={"hidden": 8}, gate={"hidden": 8})
    torch.manual_seed(0)
    clean_enc = ItemEncoder(feats, 12, cfg, token_norm=1.0)
    bad_enc = ItemEncoder(bad, 12, cfg, token_norm=1.0)
    bad_enc.load_state_dict(clean_enc.state_dict())
    with torch.no_grad():
        for i, name in enumerate(("id", "text", "image")):
            clean_u, _, _ = clean_enc.projectors[name](getattr(clean_enc, f"feat{i}"))  # (R, d)
            bad_u, _, _ = bad_enc.projectors[name](getattr(bad_enc, f"feat{i}"))
            assert torch.equal(getattr(clean_enc, f"mask{i}"), getattr(bad_enc, f"mask{i}"))
            assert torch.equal(clean_u, bad_u) == (name != "image"), name


def test_unknown_modality_is_named() -> None:
    feats = {"id": Modality(name="id", values=VALUES, present=PRESENT)}
    with pytest.raises(AmfrecError, match="'image'.*reads id"):
        corrupt_features(feats, "image", Corruption.ZERO)
