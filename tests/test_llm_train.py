"""Training loop and checkpoints, on the real AMFRecModel (item_token head, real ItemEncoder) over a tiny
random Llama. The toy task (targets always among items 1-3, random histories) is learnable only through the
adapter: every trainable weight lives in ``model.adapter``; the backbone stays frozen.
"""

import hashlib
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from llm_fixtures import make_tiny_backbone_dir, random_features

from amfrec.config.model import AMFRecConfig, GateConfig, ModelConfig, ProjectorConfig, TrainConfig
from amfrec.data.dataset import ItemInfo, PreparedData, Split
from amfrec.errors import AmfrecError
from amfrec.evaluate import evaluate
from amfrec.llm.backbone import load_backbone
from amfrec.model.build import build_amfrec
from amfrec.model.model import AMFRecModel
from amfrec.seeds import generator
from amfrec.training.checkpoint import load_checkpoint, load_train_state, save_checkpoint
from amfrec.training.sampling import draw_candidates
from amfrec.training.train import lr_at, train

N_ITEMS, L, D = 30, 5, 8


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny ops: one thread avoids thread-pool contention on a busy shared machine (restored after)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _features() -> dict:
    return random_features(N_ITEMS)


MODEL_CFG = ModelConfig(
    modalities=["id", "text"],
    projector=ProjectorConfig(n_experts=2, hidden=8),
    gate=GateConfig(hidden=8),
    max_len=L,
    user_token=None,
    collab_score=False,
    lm_layers=None,  # the tiny backbone's 2 layers
)
TITLES = ["<pad>"] + [f"Item {i}" for i in range(1, N_ITEMS + 1)]


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory):
    """A tiny random Llama (hidden 32), frozen: the real backbone class on a test-sized model."""
    return load_backbone(str(make_tiny_backbone_dir(tmp_path_factory.mktemp("tiny_lm"))), device="cpu")


def tiny_model(backbone, encoder_seed: int = 0) -> AMFRecModel:
    """The real AMFRecModel (item_token head) on the tiny backbone; `encoder_seed` sets the adapter's init."""
    torch.manual_seed(encoder_seed)
    return build_amfrec(MODEL_CFG, _features(), TITLES, backbone=backbone)


def _ndcg10(model, split: Split) -> dict:
    return evaluate(model, split, batch_size=16)


def _data() -> PreparedData:
    g = torch.Generator().manual_seed(1)

    def split(n: int, with_cands: bool) -> Split:
        history = torch.randint(4, N_ITEMS + 1, (n, L), generator=g)
        history[: n // 4, :2] = 0  # some left padding
        target = torch.randint(1, 4, (n,), generator=g)
        cands = draw_candidates(history, target, N_ITEMS, 19, g) if with_cands else None
        return Split([str(i) for i in range(n)], history, target, cands)

    items = [ItemInfo("", "")] + [ItemInfo(str(i), f"Item {i}") for i in range(1, N_ITEMS + 1)]
    return PreparedData(Path("."), {"max_len": L}, items, split(96, False), split(32, True), split(8, True))


def _cfg(**kw) -> TrainConfig:
    base = dict(
        lr=2e-2, warmup_steps=2, max_steps=40, batch_size=8, eval_every=10, eval_examples=None, patience=0
    )
    base.update(kw)
    return TrainConfig(**base)


# ---------------------------------------------------------------------------------------------- sampling
def test_draw_candidates_excludes_history_and_target_and_shuffles():
    history = torch.tensor([[0, 0, 3, 4, 5], [1, 2, 3, 4, 5]]).repeat(50, 1)  # (100, 5)
    target = torch.tensor([6, 7]).repeat(50)
    cands = draw_candidates(history, target, N_ITEMS, 19, generator(0))
    assert cands.shape == (100, 20)
    assert ((cands == target[:, None]).sum(1) == 1).all()  # the target exactly once
    assert not (cands[:, :, None] == history[:, None, :]).any()  # no history item
    assert (cands >= 1).all() and (cands <= N_ITEMS).all()
    assert all(len(set(row)) == 20 for row in cands.tolist())  # distinct
    pos = (cands == target[:, None]).float().argmax(1)
    assert len(set(pos.tolist())) > 5  # the target is not at a fixed position
    assert torch.equal(cands, draw_candidates(history, target, N_ITEMS, 19, generator(0)))
    assert not torch.equal(cands, draw_candidates(history, target, N_ITEMS, 19, generator(1)))


def test_draw_candidates_too_few_items():
    with pytest.raises(ValueError, match="cannot draw 19 negatives"):
        draw_candidates(torch.tensor([[1, 2, 3]]), torch.tensor([4]), 10, 19, generator(0))


# ---------------------------------------------------------------------------------------------- schedule
def test_lr_schedule_values():
    cfg = TrainConfig(lr=1.0, warmup_steps=4, max_steps=14, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.2)
    assert lr_at(3, cfg) == pytest.approx(0.8)
    assert lr_at(4, cfg) == pytest.approx(1.0)
    assert lr_at(9, cfg) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 2)))  # halfway: 0.55
    assert lr_at(14, cfg) == pytest.approx(0.1) and lr_at(99, cfg) == pytest.approx(0.1)


def test_optimizer_follows_schedule(tmp_path, monkeypatch, backbone):
    lrs = []
    original = torch.optim.AdamW.step

    def spy(self, *a, **k):
        lrs.append(self.param_groups[0]["lr"])
        return original(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    cfg = _cfg(max_steps=6, warmup_steps=2, eval_every=6)
    train(tiny_model(backbone), _data(), cfg, tmp_path, _ndcg10)
    assert lrs == pytest.approx([lr_at(s, cfg) for s in range(6)])


# ---------------------------------------------------------------------------------------------- training
def test_loss_falls_only_trainable_params_change(tmp_path, backbone):
    model = tiny_model(backbone)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = {n: p.detach().clone() for n, p in model.adapter.named_parameters()}
    data = _data()
    start = _ndcg10(model, data.valid)["ndcg@10"]
    info = train(model, data, _cfg(), tmp_path, _ndcg10)
    first, last = sum(info["losses"][:8]) / 8, sum(info["losses"][-8:]) / 8
    assert last < 0.6 * first, (first, last)
    assert info["best_valid"]["ndcg@10"] > start
    assert info["steps"] == 40 and info["trainable_params"] < info["total_params"]
    assert info["tokens_per_s"] > 0
    for n, p in model.named_parameters():
        if n in frozen:
            assert p.grad is None, n
            assert torch.equal(p, frozen[n]), n
    assert any(not torch.equal(p, before[n]) for n, p in model.adapter.named_parameters())
    # the model ends with the best checkpoint's weights
    best, _, _ = load_checkpoint(tmp_path / "checkpoint")
    for k, v in model.adapter.state_dict().items():
        assert torch.equal(v, best[k]), k


def test_early_stopping(tmp_path, backbone):
    calls = []

    def flat(model, split):
        calls.append(1)
        return {"ndcg@10": 0.5}  # never improves after the first validation

    info = train(tiny_model(backbone), _data(), _cfg(patience=2, eval_every=5), tmp_path, flat)
    assert info["stopped_early"] and info["steps"] == 15 and len(calls) == 3 and info["best_step"] == 5


@pytest.mark.parametrize("deterministic", [True, False])
def test_the_loop_runs_on_deterministic_kernels_when_asked_and_restores_the_setting(
    tmp_path, backbone, deterministic
):
    seen = []

    def record(model, split):
        seen.append(torch.are_deterministic_algorithms_enabled())
        return {"ndcg@10": 0.5}

    before = torch.are_deterministic_algorithms_enabled()
    cfg = _cfg(max_steps=10, eval_every=5, deterministic=deterministic)
    train(tiny_model(backbone), _data(), cfg, tmp_path, record)
    assert seen == [deterministic, deterministic]  # both validations ran inside the loop's setting
    assert torch.are_deterministic_algorithms_enabled() == before


def test_missing_select_metric(tmp_path, backbone):
    with pytest.raises(ValueError, match="train.select_metric: 'ndcg@10' not in"):
        train(
            tiny_model(backbone),
            _data(),
            _cfg(max_steps=3, eval_every=3),
            tmp_path,
            lambda m, s: {"hr@1": 0.0},
        )


def test_non_finite_loss_stops_training(tmp_path, backbone):
    model = tiny_model(backbone)
    with torch.no_grad():
        model.adapter.log_scale.fill_(float("nan"))  # every score NaN -> NaN loss at the first step
    with pytest.raises(FloatingPointError, match="training loss is nan at step 0"):
        train(model, _data(), _cfg(max_steps=3, eval_every=3), tmp_path, _ndcg10)


def test_a_trainable_weight_outside_the_adapter_is_refused(tmp_path, backbone):
    model = tiny_model(backbone)
    weight = model.lm.get_input_embeddings().weight
    weight.requires_grad_(True)  # a backbone weight that would train but never reach the checkpoint
    try:
        with pytest.raises(ValueError, match="outside the adapter require grad"):
            train(model, _data(), _cfg(max_steps=3, eval_every=3), tmp_path, _ndcg10)
    finally:
        weight.requires_grad_(False)


# ---------------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip(tmp_path, backbone):
    model = tiny_model(backbone, encoder_seed=3)
    cfg = AMFRecConfig(model=MODEL_CFG, train=_cfg())
    save_checkpoint(model, cfg, tmp_path / "ck")
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [
        "backbone.json",
        "config.yaml",
        "manifest.json",
        "trainable.safetensors",
    ]
    manifest = json.loads((tmp_path / "ck" / "manifest.json").read_text())
    want = hashlib.sha256((tmp_path / "ck" / "config.yaml").read_bytes()).hexdigest()
    assert manifest["sha256"]["config.yaml"] == want
    state, config, identity = load_checkpoint(tmp_path / "ck")
    assert config == cfg and identity == backbone.identity
    assert state.keys() == model.adapter.state_dict().keys()
    assert not any(k.startswith(("feat", "mask")) for k in state)  # features come from the feature dir
    other = tiny_model(backbone, encoder_seed=4)
    data = _data()
    assert not torch.equal(
        other.score(data.test.history, data.test.candidates),
        model.score(data.test.history, data.test.candidates),
    )
    other.adapter.load_state_dict(state, strict=True)
    assert torch.equal(
        other.score(data.test.history, data.test.candidates),
        model.score(data.test.history, data.test.candidates),
    )
    with pytest.raises(AmfrecError, match="nowhere: not an AMFRec checkpoint"):
        load_checkpoint(tmp_path / "nowhere")


def test_altered_or_truncated_checkpoint_is_refused_by_name(tmp_path, caplog, backbone):
    save_checkpoint(tiny_model(backbone), AMFRecConfig(model=MODEL_CFG, train=_cfg()), tmp_path / "ck")
    weights = tmp_path / "ck" / "trainable.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(AmfrecError, match=r"trainable.safetensors: sha256 differs"):
        load_checkpoint(tmp_path / "ck")
    weights.write_bytes(data)
    (tmp_path / "ck" / "backbone.json").unlink()
    with pytest.raises(AmfrecError, match=r"backbone.json: file not found \(listed in manifest.json\)"):
        load_checkpoint(tmp_path / "ck")
    # a format-1 folder (before manifests) still loads, with a warning
    save_checkpoint(tiny_model(backbone), AMFRecConfig(model=MODEL_CFG, train=_cfg()), tmp_path / "old")
    (tmp_path / "old" / "manifest.json").unlink()
    with caplog.at_level("WARNING"):
        state, _, _ = load_checkpoint(tmp_path / "old")
    assert state and "no manifest" in caplog.text


def test_a_checkpoint_from_before_a_key_existed_loads_as_it_was_trained(tmp_path, backbone):
    """Keys added after the item_token head (new_item_control, item_text, item_tokens, modality_dropout)
    mean what they meant then when a checkpoint lacks them, not the recipe's defaults of today."""
    save_checkpoint(tiny_model(backbone), AMFRecConfig(model=MODEL_CFG, train=_cfg()), tmp_path / "ck")
    path = tmp_path / "ck" / "config.yaml"
    raw = yaml.safe_load(path.read_text())
    assert raw["model"]["new_item_control"] is True and raw["model"]["item_text"] == "full"
    for key in ("new_item_control", "item_text", "item_tokens", "modality_dropout"):
        del raw["model"][key]
    path.write_text(yaml.safe_dump(raw))
    (tmp_path / "ck" / "manifest.json").unlink()  # the old format: files not verified
    _, cfg, _ = load_checkpoint(tmp_path / "ck")
    old = (cfg.model.new_item_control, cfg.model.item_text, cfg.model.item_tokens, cfg.model.modality_dropout)
    assert old == (False, "title", 32, {})
    assert cfg.model.query_head is True  # a key the checkpoint names keeps its value


def test_train_writes_resolved_config(tmp_path, backbone):
    cfg = AMFRecConfig(model=MODEL_CFG, train=_cfg(max_steps=4, eval_every=4))
    train(tiny_model(backbone), _data(), cfg, tmp_path, _ndcg10)
    _, config, _ = load_checkpoint(tmp_path / "checkpoint")
    assert config == cfg
    assert load_train_state(tmp_path / "checkpoint")["train"]["step"] == 4


def test_resume_continues_from_saved_step(tmp_path, backbone):
    data, cfg = _data(), _cfg(max_steps=12, eval_every=6, grad_accum=2, batch_size=4)
    straight = tmp_path / "straight"
    train(tiny_model(backbone), data, cfg, straight, _ndcg10)

    calls = []

    def crash_on_second(model, split):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return _ndcg10(model, split)

    broken = tmp_path / "broken"
    with pytest.raises(KeyboardInterrupt):
        train(tiny_model(backbone), data, cfg, broken, crash_on_second)
    assert load_train_state(broken / "last")["train"]["step"] == 6

    model = tiny_model(backbone, encoder_seed=9)  # a fresh process: other init, overwritten by the checkpoint
    info = train(model, data, cfg, broken, _ndcg10, resume=True)
    assert info["steps"] == 12 and len(info["losses"]) == 6  # only steps 7..12 ran
    a, _, _ = load_checkpoint(straight / "last")
    b, _, _ = load_checkpoint(broken / "last")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6)
    assert [e["step"] for e in load_train_state(broken / "last")["train"]["evals"]] == [6, 12]


# ---------------------------------------------------------------------------------------------- real model
def test_with_real_amfrec_model_on_tiny_backbone(tmp_path):
    """train() drives the real AMFRecModel (tiny random Llama, the default item_token head with a frozen tiny
    SASRec as user token and collaborative score): frozen weights kept, checkpoint (the adapter) reloads."""
    from llm_fixtures import TITLES, make_tiny_backbone_dir

    from amfrec.baselines.sequential import SASRecConfig, SASRecNet
    from amfrec.evaluate import evaluate
    from amfrec.llm.backbone import load_backbone
    from amfrec.model.build import build_amfrec
    from amfrec.model.collab import CollaborativeNet

    bb = load_backbone(str(make_tiny_backbone_dir(tmp_path / "bb")), device="cpu")
    n = len(TITLES) - 1
    g = torch.Generator().manual_seed(0)
    feats = {}
    for name, dim in (("id", 4), ("text", 6)):
        present = torch.rand(n + 1, generator=g) > 0.2
        present[0] = False
        feats[name] = SimpleNamespace(
            name=name, values=torch.randn(n + 1, dim, generator=g) * present[:, None], present=present
        )
    cfg = AMFRecConfig.from_dict(
        {
            "model": {
                "modalities": ["id", "text"],
                "projector": {"hidden": 8},
                "gate": {"hidden": 8},
                "max_len": 3,
                "n_candidates": 4,
                "lm_layers": None,
            },
            "train": {
                "max_steps": 4,
                "warmup_steps": 1,
                "batch_size": 4,
                "eval_every": 2,
                "eval_examples": 4,
                "n_negatives": 3,
            },
        }
    )

    def split(m: int, cands: bool) -> Split:
        h = torch.randint(1, n + 1, (m, 3), generator=g)
        h[:, 0] = 0
        t = torch.randint(1, 4, (m,), generator=g)
        return Split([str(i) for i in range(m)], h, t, draw_candidates(h, t, n, 3, g) if cands else None)

    items = [ItemInfo("", "")] + [ItemInfo(str(i), TITLES[i]) for i in range(1, n + 1)]
    data = PreparedData(
        Path("."), {"max_len": 3, "n_candidates": 4}, items, split(16, False), split(4, True), split(4, True)
    )
    assert cfg.model.user_token is not None and cfg.model.collab_score  # the defaults
    torch.manual_seed(0)
    collab = CollaborativeNet(SASRecNet(n, 3, SASRecConfig(hidden=8, layers=1, heads=1)))
    model = build_amfrec(cfg.model, feats, TITLES, backbone=bb, collab=collab)
    frozen = {k: v.clone() for k, v in model.lm.state_dict().items()}
    frozen_collab = {k: v.clone() for k, v in collab.state_dict().items()}
    before = {k: v.clone() for k, v in model.adapter.state_dict().items()}
    info = train(model, data, cfg, tmp_path / "run", lambda m, s: evaluate(m, s, batch_size=4))
    assert info["steps"] == 4
    for k, v in model.lm.state_dict().items():
        assert torch.equal(v, frozen[k]), k
    assert all(p.grad is None for p in model.lm.parameters())
    for k, v in collab.state_dict().items():
        assert torch.equal(v, frozen_collab[k]), k
    assert all(p.grad is None and not p.requires_grad for p in collab.parameters())
    assert any(not torch.equal(v, before[k]) for k, v in model.adapter.state_dict().items())
    state, config, identity = load_checkpoint(tmp_path / "run" / "checkpoint")
    assert config == cfg and identity["hidden_size"] == bb.hidden_size
    assert state.keys() == model.adapter.state_dict().keys()  # no backbone or collaborative weights
    assert {"log_scale", "collab_weight"} <= set(state) and any(k.startswith("user.") for k in state)
    model2 = build_amfrec(config.model, feats, TITLES, backbone=bb, collab=collab)
    model2.adapter.load_state_dict(state, strict=True)
    torch.testing.assert_close(
        model2.score(data.test.history, data.test.candidates),
        model.score(data.test.history, data.test.candidates),
        rtol=0,
        atol=0,
    )
