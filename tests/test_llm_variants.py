"""The ablation variants and test-time corruption through the real pipeline (tiny random Llama, imported
random features, the tiny prepared data): every variant is a valid config; the zero-shot LM trains nothing,
reads titles only and scores by the LM's own title likelihood; `--corrupt` writes its own metrics file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from llm_fixtures import SMALL, make_tiny_amfrec_inputs, make_tiny_backbone_dir

from amfrec.config.model import AMFRecConfig
from amfrec.errors import AmfrecError
from amfrec.experiments.experiment import VARIANTS, parse_model, run_name
from amfrec.runs.amfrec_run import evaluate_run, load_run, resolve_config, train_amfrec


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_is_a_valid_recipe_config(variant: str) -> None:
    cfg = AMFRecConfig.from_yaml(resolve_config("amfrec"), VARIANTS[variant][1])
    assert cfg.model.answer in ("item_token", "title")


def test_parse_model_and_run_name() -> None:
    assert parse_model("sasrec") == ("sasrec", None)
    assert parse_model("amfrec:no_llm") == ("amfrec", "no_llm")
    assert run_name("amfrec:no_llm") == "amfrec-no_llm"
    for bad, message in (
        ("amfrec:nope", "variant 'nope'"),
        ("sasrec:mean", "unknown model"),
        ("x", "unknown"),
    ):
        with pytest.raises(AmfrecError, match=message):
            parse_model(bad)


@pytest.fixture(scope="module")
def setup(tiny_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(features dir with random id/text/image, a config file naming the tiny backbone, a work folder)."""
    root = tmp_path_factory.mktemp("variants")
    features, config = make_tiny_amfrec_inputs(tiny_prepared, root)
    return features, config, root


def test_zero_shot_trains_nothing_and_scores_title_likelihood(tiny_prepared: Path, setup) -> None:
    features, config, root = setup
    overrides = {**SMALL, **VARIANTS["zero_shot"][1], "model.dtype": "float32"}  # exact reference
    result = train_amfrec(tiny_prepared, features, config, 1, root / "zs", overrides, limit=3, name="zs")
    assert result["info"]["steps"] == 0 and result["test"]["model"] == "zs" and result["test"]["n"] == 3
    assert not (root / "zs" / "gate_weights.json").exists()  # no soft tokens: no gate at work
    with pytest.raises(AmfrecError, match="protocol parts needs the item_token head"):
        evaluate_run(root / "zs", protocol="parts", limit=1)
    model, data, _ = load_run(root / "zs")
    hist, cands = data.test.history[:1], data.test.candidates[:1]
    batch = model.prompt.build(model._titles(hist), model._titles(cands))
    assert int((batch.input_ids == model.prompt.item_token_id).sum()) == 0  # titles only
    with torch.inference_mode():
        scores = model.score(hist, cands)[0]  # (C,)
    # slow reference: the LM's own log-likelihood of " title" + eos after the text prompt, one at a time
    lm, prompt = model.lm, batch.input_ids[0][batch.attention_mask[0] == 1].tolist()
    for j in (0, 5, 19):
        answer = model.prompt.encode_answers([model.titles[int(cands[0, j])]])[0]
        ids = torch.tensor([prompt + answer])
        with torch.inference_mode():
            logp = torch.log_softmax(lm(input_ids=ids).logits[0, :-1].float(), -1)
        want = sum(float(logp[len(prompt) - 1 + k, t]) for k, t in enumerate(answer))
        assert float(scores[j]) == pytest.approx(want, abs=1e-3)


def test_corrupt_writes_its_own_metrics_and_gate_weights(tiny_prepared: Path, setup) -> None:
    features, config, root = setup
    train_amfrec(tiny_prepared, features, config, 1, root / "gated", SMALL, limit=6)
    gate = json.loads((root / "gated" / "gate_weights.json").read_text())
    assert gate["modalities"] == ["id", "text", "image"] and gate["fusion"] == "gated"
    weights = np.array(gate["weights"])  # (n_items, M)
    assert weights.shape[1] == 3 and np.allclose(weights.sum(1), 1.0, atol=1e-4)
    clean = json.loads((root / "gated" / "metrics.json").read_text())
    rec = evaluate_run(root / "gated", limit=6, corrupt="image=shuffle")
    saved = json.loads((root / "gated" / "test_score_corrupt-image-shuffle_metrics.json").read_text())
    assert saved == rec and rec["corrupt"] == "image=shuffle" and rec["n"] == clean["n"] == 6
    assert set(rec["gate_mean"]) == {"id", "text", "image"}
    with pytest.raises(AmfrecError, match="blur"):
        evaluate_run(root / "gated", limit=6, corrupt="image=blur")


def test_run_folder_mismatches_are_one_line_errors(tiny_prepared: Path, setup, capsys) -> None:
    """n_candidates unlike the data's; a run reloaded on a different backbone; recommend through main."""
    from amfrec.cli.main import main

    features, config, root = setup
    with pytest.raises(AmfrecError, match=r"tiny.yaml: model.n_candidates = 10, but .* has 20 candidates"):
        overrides = {**SMALL, "model.n_candidates": 10, "train.n_negatives": 9}
        train_amfrec(tiny_prepared, features, config, 1, root / "nc", overrides)
    run = root / "bb"
    train_amfrec(tiny_prepared, features, config, 1, run, SMALL, limit=4)
    items = [json.loads(line)["item_id"] for line in (tiny_prepared / "items.jsonl").open()]
    assert main(["recommend", "--run", str(run), "--history", ",".join(items[:3]), "--top", "5"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:3] == ["rank", "item", "id"] and len(lines) == 6
    assert lines[1].lstrip().startswith("1.") and "id=" in lines[1] and "image=" in lines[1]
    backbone_dir = Path(yaml.safe_load(config.read_text())["model"]["backbone"])
    make_tiny_backbone_dir(backbone_dir, seed=1)  # the same path now holds other weights
    capsys.readouterr()  # (the save's own progress output)
    assert main(["evaluate", "--run", str(run), "--limit", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # (after the loader's progress bars)
    assert err.startswith("amfrec: error: ") and "backbone.json: trained on backbone fingerprint" in err
    make_tiny_backbone_dir(backbone_dir, seed=0)  # put the module's backbone back


@pytest.mark.parametrize("damage", ["truncate", "flip a byte", "delete"])
def test_a_damaged_checkpoint_is_refused_naming_the_file(
    tiny_amfrec_run: Path, tmp_path: Path, damage, capsys
):
    import shutil

    from amfrec.cli.main import main

    run = tmp_path / "run"
    shutil.copytree(tiny_amfrec_run, run)
    weights = run / "checkpoint" / "trainable.safetensors"
    data = weights.read_bytes()
    if damage == "truncate":
        weights.write_bytes(data[: len(data) // 3])
    elif damage == "flip a byte":
        weights.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    else:
        weights.unlink()
    assert main(["evaluate", "--run", str(run), "--limit", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("amfrec: error: ") and "checkpoint/trainable.safetensors" in err
