"""AMFRecConfig: defaults, precise validation errors, YAML round trip, overrides, the shipped configs."""

from pathlib import Path

import pytest
import yaml

from amfrec.config.model import (
    ITEM_TOKEN_ALL_TEMPLATE,
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
    Positions,
    ProjectorConfig,
    TrainConfig,
    UserToken,
)
from amfrec.errors import AmfrecError
from amfrec.model.item_encoder import check_modalities
from amfrec.runs.rundir import resolve_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_defaults_and_enums():
    cfg = AMFRecConfig()
    assert cfg.model.fusion is FusionMode.GATED and cfg.model.fusion == "gated"
    assert cfg.model.projector.n_experts == 4 and cfg.model.projector.top_k is None
    assert cfg.model.dtype is DType.AUTO
    assert cfg.model.answer is AnswerHead.ITEM_TOKEN and not cfg.model.prompt_candidates
    assert (
        cfg.model.user_token is UserToken.SASREC_CONTENT and cfg.model.collab_score and not cfg.model.no_llm
    )
    assert cfg.model.new_item_control is True and cfg.model.query_head is True
    assert cfg.model.positions is Positions.ALL  # None resolves to the head's layout: every item a target
    assert cfg.model.template == ITEM_TOKEN_ALL_TEMPLATE  # None resolves to the layout's default
    last = ModelConfig(positions="last")
    assert (
        last.template == ITEM_TOKEN_USER_TEMPLATE and ModelConfig(answer="title").positions is Positions.LAST
    )
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
        (lambda: ModelConfig(new_item_offset="x"), "model.new_item_offset: must be a finite number, got 'x'"),
        (lambda: TrainConfig(batch_size=2.5), "train.batch_size: must be an integer >= 1, got 2.5"),
        (
            lambda: TrainConfig(warmup_steps=10, max_steps=10),
            "train.warmup_steps: 10 must be < train.max_steps",
        ),
        (lambda: TrainConfig(betas=(0.9, 1.0)), "train.betas: each must be in [0, 1)"),
        (lambda: TrainConfig(deterministic="yes"), "train.deterministic: must be true or false, got 'yes'"),
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
        check_modalities(ModelConfig().used_modalities, ["id", "text"])
    check_modalities(ModelConfig(fusion="llara").used_modalities, ["id"])  # only the id modality is needed


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
    last = cfg.model.positions is Positions.LAST  # with "all" a user token follows each item instead
    assert ("{user}" in cfg.model.template) == (cfg.model.user_token is not None and last)


def _leaves(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out |= _leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
    return out


def test_packaged_amfrec_yaml_is_the_defaults():
    # One source of truth: the dataclass defaults are the recipe; the packaged "amfrec" config resolves to
    # them and repeats none of them (a key there would be a change of the recipe).
    assert AMFRecConfig.from_yaml(resolve_config("amfrec")) == AMFRecConfig()
    assert AMFRecConfig.from_yaml(resolve_config(None)) == AMFRecConfig()  # what `amfrec train` reads
    raw = yaml.safe_load((CONFIGS / "amfrec.yaml").read_text(encoding="utf-8"))
    defaults = _leaves(AMFRecConfig().to_dict())
    repeated = {k: v for k, v in _leaves(raw).items() if defaults.get(k, object()) == v}
    assert not repeated
    model = AMFRecConfig().model
    assert model.user_token is UserToken.SASREC_CONTENT and model.new_item_control is True
    recipe = {"lm_layers": 10, "query_head": True, "collab_score": True, "item_text": ItemText.FULL,
              "item_tokens": 8, "modality_dropout": {"id": 0.5, "text": 0.3}}  # fmt: skip
    assert {k: getattr(model, k) for k in recipe} == recipe
    assert model.positions is Positions.ALL
    train = {"lr": 0.003, "warmup_steps": 10, "max_steps": None, "max_epochs": 3.0, "batch_size": 32,
             "eval_every": 139, "eval_examples": 1000, "patience": 2}  # fmt: skip
    assert {k: getattr(AMFRecConfig().train, k) for k in train} == train


def test_quickstart_yaml_only_shrinks_the_training_budget():
    raw = yaml.safe_load((CONFIGS / "quickstart.yaml").read_text(encoding="utf-8"))
    assert set(raw) == {"train"}
    assert set(raw["train"]) <= {"max_steps", "warmup_steps", "eval_every", "eval_examples", "patience",
                                 "train_examples"}  # fmt: skip
    quick, recipe = AMFRecConfig.from_yaml(CONFIGS / "quickstart.yaml"), AMFRecConfig()
    assert quick.model == recipe.model
    assert quick.train.max_steps == 32 and recipe.train.max_steps is None  # 32 steps against 3 passes


def test_head_dependent_defaults_resolve_with_the_head():
    title = ModelConfig(answer="title")  # valid alone: item_token's own settings resolve to off
    assert title.prompt_candidates and not (title.collab_score or title.query_head or title.new_item_control)
    assert title.modality_dropout == {} and "{candidates}" in title.template
    item = ModelConfig()
    assert not item.prompt_candidates and item.collab_score and item.query_head and item.new_item_control
    assert not ModelConfig(user_token=None).collab_score  # no collaborative run: no collaborative score
    d = AMFRecConfig().to_dict()["model"]  # what a run's config.yaml shows: resolved, no null left
    assert d["modality_dropout"] == {"id": 0.5, "text": 0.3} and d["new_item_control"] is True
    assert d["prompt_candidates"] is False and d["collab_score"] is True and d["query_head"] is True
    assert AMFRecConfig.from_dict(AMFRecConfig(model=title).to_dict()).model == title


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda: ModelConfig(answer="title", query_head=True),
            "model.query_head: only with answer 'item_token'",
        ),
        (lambda: ModelConfig(answer="title", collab_score=True), "model.collab_score: only with answer"),
        (lambda: ModelConfig(answer="title", new_item_control=True), "model.new_item_control: only with"),
        (
            lambda: ModelConfig(answer="title", prompt_candidates=False),
            "model.prompt_candidates: answer 'title'",
        ),
        (
            lambda: ModelConfig(user_token=None, collab_score=True),
            "model.collab_score: needs model.user_token",
        ),
        (
            lambda: ModelConfig(answer="title", modality_dropout={"id": 0.5}),
            "model.modality_dropout: only with",
        ),
        (lambda: ModelConfig(modalities=["id"], modality_dropout={"text": 0.3}), "'text' is not in"),
        (lambda: ModelConfig(query_head=None, no_llm="yes"), "model.no_llm: must be true or false"),
    ],
)
def test_explicit_contradictions_stay_errors(make, message):
    with pytest.raises(ValueError) as e:
        make()
    assert message in str(e.value)


@pytest.mark.parametrize(
    "kwargs, rates",
    [
        ({}, {"id": 0.5, "text": 0.3}),
        ({"modalities": ["id"]}, {"id": 0.5}),
        ({"modalities": ["text", "image"]}, {"text": 0.3}),
        ({"fusion": "single", "single_modality": "image"}, {}),
        ({"fusion": "single", "single_modality": "id"}, {"id": 0.5}),
        ({"fusion": "llara"}, {"id": 0.5}),
        ({"modalities": ["id"], "modality_dropout": {}}, {}),  # given: kept as given
        ({"modality_dropout": {"image": 0.2}}, {"image": 0.2}),
    ],
)
def test_modality_dropout_default_follows_the_modalities(kwargs, rates):
    assert ModelConfig(**kwargs).modality_dropout == rates
