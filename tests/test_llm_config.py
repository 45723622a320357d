"""AMFRecConfig: defaults, precise validation errors, YAML round trip, overrides, the shipped configs."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from amfrec.errors import AmfrecError
from amfrec.llm.config import (
    ITEM_TOKEN_USER_TEMPLATE,
    AMFRecConfig,
    AnswerHead,
    BalanceLoss,
    ConfigError,
    DType,
    FusionMode,
    GateConfig,
    ItemText,
    LossItems,
    ModelConfig,
    ProjectorConfig,
    TrainConfig,
    UserToken,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_defaults_and_enums():
    cfg = AMFRecConfig()
    assert cfg.model.fusion is FusionMode.GATED and cfg.model.fusion == "gated"
    assert cfg.model.projector.n_experts == 4 and cfg.model.projector.top_k is None
    assert cfg.model.dtype is DType.AUTO
    assert cfg.model.answer is AnswerHead.ITEM_TOKEN and not cfg.model.prompt_candidates
    assert cfg.model.user_token is UserToken.SASREC and cfg.model.collab_score and not cfg.model.no_llm
    assert cfg.model.template == ITEM_TOKEN_USER_TEMPLATE  # None resolves to the head's default
    assert not cfg.model.gate.use_user_context
    assert cfg.train.loss_items is LossItems.CATALOGUE
    assert cfg.model.used_modalities == ["id", "text", "image"]
    assert ModelConfig(fusion="llara").used_modalities == ["id"]
    assert ModelConfig(fusion="single", single_modality="image").used_modalities == ["image"]


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda: ModelConfig(fusion="attention"),
            "model.fusion: unknown value 'attention' (expected one of 'gated'",
        ),
        (
            lambda: ModelConfig(fusion="single"),
            "model.single_modality: required when model.fusion is 'single'",
        ),
        (
            lambda: ModelConfig(fusion="single", single_modality="audio"),
            "model.single_modality: 'audio' is not in",
        ),
        (lambda: ModelConfig(fusion="llara", modalities=["text"]), "fusion 'llara' needs the 'id' modality"),
        (lambda: ModelConfig(modalities=[]), "model.modalities: must name at least one modality"),
        (lambda: ModelConfig(modalities=["id", "id"]), "model.modalities: duplicated id"),
        (lambda: ModelConfig(token_scale="auto"), "model.token_scale: expected 'embed_norm'"),
        (lambda: ModelConfig(token_scale=-1.0), "model.token_scale: must be a finite number > 0"),
        (lambda: ModelConfig(template="no slots"), "model.template: the slot {history} is missing"),
        (lambda: ModelConfig(dtype="float8"), "model.dtype: unknown value 'float8'"),
        (lambda: ProjectorConfig(n_experts=0), "model.projector.n_experts: must be an integer >= 1, got 0"),
        (lambda: ProjectorConfig(n_experts=2, top_k=3), "model.projector.top_k: 3 exceeds"),
        (
            lambda: ProjectorConfig(aux_weight=-0.1),
            "model.projector.aux_weight: must be a finite number >= 0",
        ),
        (lambda: GateConfig(temperature=0), "model.gate.temperature: must be a finite number > 0, got 0"),
        (lambda: TrainConfig(lr=-1e-3), "train.lr: must be a finite number > 0, got -0.001"),
        (lambda: TrainConfig(lr=float("nan")), "train.lr: must be a finite number > 0"),
        (lambda: TrainConfig(batch_size=2.5), "train.batch_size: must be an integer >= 1, got 2.5"),
        (
            lambda: TrainConfig(warmup_steps=10, max_steps=10),
            "train.warmup_steps: 10 must be < train.max_steps",
        ),
        (lambda: TrainConfig(betas=(0.9, 1.0)), "train.betas: each must be in [0, 1)"),
        (lambda: AMFRecConfig(train=TrainConfig(n_negatives=9)), "train.n_negatives: 9 + 1 must equal"),
    ],
)
def test_validation_messages(make, message):
    with pytest.raises(ValueError) as e:
        make()
    assert message in str(e.value)


def test_check_modalities_names_the_missing_one():
    with pytest.raises(
        ValueError, match=r"model.modalities: 'image' not in the features \(available: id, text\)"
    ):
        ModelConfig().check_modalities(["id", "text"])
    ModelConfig(fusion="llara").check_modalities(["id"])  # only the id modality is needed


def test_unknown_keys_are_named():
    with pytest.raises(ValueError, match=r"model.gate.hiden: unknown key"):
        AMFRecConfig.from_dict({"model": {"gate": {"hiden": 3}}})
    with pytest.raises(ValueError, match=r"^optim: unknown key"):
        AMFRecConfig.from_dict({"optim": {}})
    with pytest.raises(ValueError, match=r"train.learning_rate: unknown key"):
        AMFRecConfig.from_dict({"train": {"learning_rate": 1}})


def test_dict_and_yaml_round_trip(tmp_path):
    cfg = AMFRecConfig.from_dict(
        {
            "model": {"fusion": "tokens", "projector": {"top_k": 2, "balance": "soft"}, "token_scale": 3.5},
            "train": {"lr": 3e-4, "betas": [0.8, 0.9], "train_examples": 100},
        }
    )
    assert cfg.model.projector.balance is BalanceLoss.SOFT and cfg.train.betas == (0.8, 0.9)
    d = cfg.to_dict()
    assert d["model"]["fusion"] == "tokens" and d["train"]["betas"] == [0.8, 0.9]
    assert AMFRecConfig.from_dict(d) == cfg
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert AMFRecConfig.from_yaml(path) == cfg


def test_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.01\n")
    cfg = AMFRecConfig.from_yaml(path, ["train.lr=1e-4", "model.fusion=mean", "model.gate.hidden=7"])
    assert cfg.train.lr == 1e-4 and cfg.model.fusion is FusionMode.MEAN and cfg.model.gate.hidden == 7
    cfg = AMFRecConfig.from_yaml(None, {"model.modalities": ["id"], "model.fusion": "llara"})
    assert cfg.model.modalities == ["id"]


def test_from_yaml_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  fusion: nope\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:2: model.fusion: unknown value 'nope'") as e:
        AMFRecConfig.from_yaml(path)
    assert isinstance(e.value, AmfrecError) and isinstance(e.value, ValueError)
    path.write_text("train:\n  lr: 0.1\n  batch_size: 0\nmodel:\n  gate:\n    hidden: 8\n    hiden: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:7: model.gate.hiden: unknown key"):
        AMFRecConfig.from_yaml(path)
    path.write_text("train:\n  lr: 0.1\n  batch_size: 0\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:3: train.batch_size: must be an integer >= 1, got 0"):
        AMFRecConfig.from_yaml(path)
    with pytest.raises(ConfigError, match=r"bad.yaml: train.batch_size: must be an integer >= 1, got -1"):
        AMFRecConfig.from_yaml(path, ["train.batch_size=-1"])  # from the override: no file line
    path.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:2: malformed YAML"):
        AMFRecConfig.from_yaml(path)
    with pytest.raises(ConfigError, match="file not found"):
        AMFRecConfig.from_yaml(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="expects KEY=VALUE.*got .train.lr."):
        AMFRecConfig.from_yaml(None, ["train.lr"])  # names the pair


@pytest.mark.parametrize("name", ["amfrec.yaml", "quickstart.yaml"])
def test_shipped_configs_load(name):
    cfg = AMFRecConfig.from_yaml(CONFIGS / name)
    assert cfg.model.fusion is FusionMode.GATED
    assert "{history}" in cfg.model.template
    assert ("{candidates}" in cfg.model.template) == cfg.model.prompt_candidates
    assert ("{user}" in cfg.model.template) == (cfg.model.user_token is not None)


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_amfrec_yaml_spells_out_the_defaults():
    # configs/amfrec.yaml is the documented default: it names every key, and its model section agrees with the
    # dataclass defaults except for the recipe's choices: lm_layers (a CPU budget), query_head (chosen on
    # validation; the dataclass keeps the LM's own logits as the default) and the choices for new items and
    # sparse data (a content-aware collaborative net, modality dropout, the full item text, new items scored
    # by the control's query) -- the train
    # section sets the schedule of the shipped recipe, so only its keys are checked.
    raw = yaml.safe_load((CONFIGS / "amfrec.yaml").read_text(encoding="utf-8"))
    assert set(raw) == {"model", "train"}
    assert set(raw["model"]) == _field_names(ModelConfig)
    assert set(raw["model"]["projector"]) == _field_names(ProjectorConfig)
    assert set(raw["model"]["gate"]) == _field_names(GateConfig)
    assert set(raw["train"]) == _field_names(TrainConfig)
    cfg = AMFRecConfig.from_yaml(CONFIGS / "amfrec.yaml")
    assert cfg.model.lm_layers is not None and cfg.model.query_head
    recipe = {
        "lm_layers": cfg.model.lm_layers,
        "query_head": True,
        "user_token": UserToken.SASREC_CONTENT,
        "modality_dropout": {"id": 0.5, "text": 0.3},
        "item_text": ItemText.FULL,
        "item_tokens": 16,
        "new_item_control": True,
    }
    assert cfg.model == dataclasses.replace(AMFRecConfig().model, **recipe)
