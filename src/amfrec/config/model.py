"""AMFRec configuration: validated dataclasses with str-enums, read from / written to YAML.

`AMFRecConfig(model=ModelConfig(...), train=TrainConfig(...))`; every dataclass validates itself in
`__post_init__` and raises a `ValueError` naming the field and the bad value; `AMFRecConfig.from_yaml(path,
overrides)` adds the file and raises `ConfigError` (an `AmfrecError`, one line on the command line).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from amfrec.config.options import (  # noqa: F401 - re-exported: the config's vocabulary
    DEFAULT_TEMPLATE,
    ITEM_TOKEN_ALL_TEMPLATE,
    ITEM_TOKEN_TEMPLATE,
    ITEM_TOKEN_USER_TEMPLATE,
    AnswerHead,
    BalanceLoss,
    ConfigError,
    DType,
    FusionMode,
    ItemText,
    LossItems,
    Positions,
    UserToken,
    _build,
    _field_line,
    _number,
    _plain,
    _positive_int,
    apply_overrides,
    check_noun,
    check_template,
    coerce_enum,
    default_template,
)
from amfrec.config.train import TrainConfig
from amfrec.errors import AmfrecError
from amfrec.io import read_text, read_yaml_mapping


@dataclass
class ProjectorConfig:
    # K experts per modality, each Linear(d_m, hidden) -> GELU -> Linear(hidden, d_llm). K = 1 is "no MoE".
    # 4 experts of hidden 256: nothing found in RESULTS that compares other sizes on validation (or test);
    # an unmeasured architecture default.
    n_experts: int = 4
    hidden: int = 256
    # None: dense mixture of all K experts; an int k: keep the k most probable experts (renormalised).
    top_k: int | None = None
    # Weight of the load-balancing loss added to the LM loss (0 turns it off).
    aux_weight: float = 0.01
    balance: BalanceLoss = BalanceLoss.SWITCH

    def __post_init__(self) -> None:
        _positive_int(self.n_experts, "model.projector.n_experts")
        _positive_int(self.hidden, "model.projector.hidden")
        if self.top_k is not None:
            _positive_int(self.top_k, "model.projector.top_k")
            if self.top_k > self.n_experts:
                raise ValueError(
                    f"model.projector.top_k: {self.top_k} exceeds projector.n_experts ({self.n_experts})"
                )
        self.aux_weight = _number(self.aux_weight, "model.projector.aux_weight")
        self.balance = coerce_enum(BalanceLoss, self.balance, "model.projector.balance")


@dataclass
class GateConfig:
    # LayerNorm per modality -> concat (+ presence flags, + user context) -> Linear -> GELU -> Linear(M).
    # 128: nothing found in RESULTS that compares gate widths; an unmeasured default.
    hidden: int = 128
    # Condition the weights on the user: the mean of the history items' normalised features. Title head
    # only: the item_token head scores every user against one shared item table.
    use_user_context: bool = False
    # Softmax temperature of the modality weights (< 1 sharper, > 1 flatter).
    temperature: float = 1.0
    # item_token head: + this weight x the mean over items of KL(uniform over the item's present modalities
    # || the gate's weights), so no present modality is switched off (trained jointly with a strong
    # collaborative logit, the gate put 0.999 on one modality) and a missing one has others to stand in.
    balance: float = 0.0

    def __post_init__(self) -> None:
        _positive_int(self.hidden, "model.gate.hidden")
        self.balance = _number(self.balance, "model.gate.balance")
        if not isinstance(self.use_user_context, bool):
            raise ValueError(
                f"model.gate.use_user_context: must be true or false, got {self.use_user_context!r}"
            )
        self.temperature = _number(self.temperature, "model.gate.temperature", strict=True)


# The recipe's modality dropout (model.modality_dropout: None): id dropped for half the items of a step, so
# half are trained as new items are scored; text less often, so that it carries the ranking alone too.
# Chosen on validation (each recipe choice and its number: RESULTS, "The recipe").
RECIPE_DROPOUT = {"id": 0.5, "text": 0.3}

_MODEL_FLAGS = (  # ModelConfig's true/false settings (checked together)
    "prompt_candidates", "collab_score", "no_llm", "query_head", "soft_tokens", "gradient_checkpointing",
    "llm_residual", "new_item_control", "fast_decoder", "compile",
)  # fmt: skip


@dataclass
class ModelConfig:
    # Backbone: a name the backbone loader knows ("smollm2-135m"), a hub id or a local path; kept frozen.
    backbone: str = "smollm2-135m"
    dtype: DType = DType.AUTO  # never fixed in a packaged config: CPUs differ 70x in bf16 speed
    # Modalities to use, in this order (the gate's weight columns follow it); must exist in the feature dir.
    modalities: list[str] = field(default_factory=lambda: ["id", "text", "image"])
    # gated: chosen on validation against mean fusion (RESULTS, "The recipe").
    fusion: FusionMode = FusionMode.GATED
    single_modality: str | None = None  # the modality for fusion="single" (required then, else ignored)
    # Soft-token norm: "embed_norm" = the backbone's mean input-embedding norm, a float = that norm,
    # None = the projector's raw output. embed_norm: never compared (RESULTS, "The recipe").
    token_scale: str | float | None = "embed_norm"
    # Answer head: item_token (scores items by their own soft token) or title (LLaRA's generated title).
    answer: AnswerHead = AnswerHead.ITEM_TOKEN
    # List the candidates in the prompt (title needs them; item_token scores without them, so the score of an
    # item does not depend on which other items are candidates, and the prompt is 2-3x shorter). None = the
    # head's own: true with title, false with item_token.
    prompt_candidates: bool | None = None
    # One more soft token: the collaborative run's (frozen) user representation through a trainable MLP. The
    # recipe's is a content-aware SASRec (ID + text/image vectors): it also scores items it never trained on.
    # Chosen on validation against SASRec (RESULTS, "The recipe").
    user_token: UserToken | None = UserToken.SASREC_CONTENT
    # The collaborative net's run folder; null = the id features' run (experiment: the seed's sasrec_content).
    collab_run: str | None = None
    # item_token: add the frozen collaborative net's own logit (user rep . item embedding) with a learned
    # weight, so the LM only has to contribute what the collaborative signal lacks. Needs user_token. None =
    # on with the item_token head and a user token, else off. Adopted on a prototype's numbers of an unnamed
    # split, later seen on validation too (RESULTS, "The recipe").
    collab_score: bool | None = None
    # The control: the prompt's soft tokens mean-pooled replace the LM's state; all else is the same.
    no_llm: bool = False
    # Run only the first `lm_layers` decoder layers of the frozen LM (then its final norm); null = all.
    # 10: a CPU budget (about a third of the FLOPs per token), never compared on validation.
    lm_layers: int | None = 10
    # item_token: a trainable d x d map (identity at start) on the answer state before the cosine; None = on
    # with item_token. Validation, the recipe (RESULTS, "The recipe"): ndcg@10 +0.0028 [+0.0004, +0.0051].
    query_head: bool | None = None
    # Recompute the frozen decoder's activations in backward: less memory, about one more forward.
    gradient_checkpointing: bool = False
    # Llama-family LMs: amfrec.llm.fast_decoder's forward (the same function, 1.1-1.3x faster steps on CPU).
    fast_decoder: bool = True
    # With fast_decoder: torch.compile its layers (~10 s per prompt shape; bf16 step 1.7x faster on AMX).
    compile: bool = False
    score_scale: float = 10.0  # initial learned scale of the cosines; never compared (drifts to 8.3-9.8)
    # With collab_score: weight of a second cross-entropy on the content term alone (so it is not starved).
    content_loss: float = 0.0
    # item_token with the LM: the query is the no_llm control's (the mean of the prompt's soft tokens) plus a
    # zero-initialised map of the LM's state, so training starts from the control and the LM can only add.
    llm_residual: bool = False
    # item_token with the LM: an item without a trained id (a new item; in training, one whose id was dropped)
    # is scored against the control's query (the mean of the prompt's soft tokens, its own map and scale), not
    # the LM's state. None = on with item_token. Validation (RESULTS, "new_item_control re-chosen"): full
    # ndcg@10 +0.0021, new targets' recall@10 +0.031 over off, which leads among 1 + 19 candidates (+0.0088).
    new_item_control: bool | None = None
    # The collaborative logit of an item without a trained id: 1 = the collaborative net's content-only row
    # (sasrec_content's cold rows), 0 = the user's mean logit (no evidence: the content term alone ranks it).
    # 1: chosen on validation against 0 (RESULTS, "The recipe").
    new_item_collab: float = 1.0
    # Added at inference, chosen on validation after training (train.calibrate_examples): new_item_offset to
    # items without a trained id (with or without new_item_control); content_similarity x content_knn cosine;
    # new_item_order: items without a trained id keep their places as a group, taken in the order of score +
    # new_item_order x the cosine (runs/calibrate.py; RESULTS, "New items take their places").
    new_item_offset: float = 0.0
    content_similarity: float = 0.0
    new_item_order: float = 0.0
    # false = items appear by title only, no <|item|> placeholders (the zero-shot LM; answer 'title' only).
    soft_tokens: bool = True
    # Which item boundaries are queries (training targets): "all" (a prompt teaches every item's successor,
    # 6.5-10.1x the targets/s) or "last" (one window per prompt). None = "all" with the item_token head and
    # no listed candidates, else "last". "all" - "last", validation ndcg@10 (seed 1; RESULTS "Every position a
    # target"): +0.0092 [+0.0042, +0.0143] on amazon-scientific, -0.0034 [-0.0105, +0.0039] on ml-100k.
    positions: Positions | None = None
    # Prompt: a template with the slots {history} (required), {candidates} (iff candidates are listed),
    # {user} (iff user_token, positions last), {n_candidates}, {noun}, {noun_plural}; null = the default.
    template: str | None = None
    noun: str | None = None  # what the prompt calls an item; null = the data's card (DESIGN.md §3) or "item"
    noun_plural: str = ""  # the {noun_plural} slot; empty = the card's, else noun + "s"
    max_len: int = 10  # the last history items the prompt (and the control) reads; the collaborative net: all
    n_candidates: int = 20
    # What stands before an item's <|item|> in the prompt: its title, or its full text (title, categories,
    # brand, ...), cut to item_tokens backbone tokens, so long product texts cannot blow up the prompt.
    # full: never compared with title. 8: a CPU budget; it ties 16 on validation at the whole recipe on both
    # data sets (seed 1) in 0.60-0.76x the step time, so both fit 30 minutes (RESULTS, "The budget").
    item_text: ItemText = ItemText.FULL
    item_tokens: int | None = 8  # null = no cut
    # Training only (item_token head): per step, each item drops modality m with probability
    # modality_dropout[m] (never all of its modalities), so every projector learns to carry the ranking alone
    # and the gate to reweight. An item whose id is dropped also loses its collaborative logit: it is trained
    # exactly as a new item is scored. None = RECIPE_DROPOUT on the modalities the item encoder reads
    # (`used_modalities`), none with the title head; a given mapping is checked as given ({} = none). The
    # rates' validation numbers: RECIPE_DROPOUT above.
    modality_dropout: dict[str, float] | None = None
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    gate: GateConfig = field(default_factory=GateConfig)

    def __post_init__(self) -> None:
        if isinstance(self.projector, Mapping):
            self.projector = _build(ProjectorConfig, self.projector, "model.projector")
        if isinstance(self.gate, Mapping):
            self.gate = _build(GateConfig, self.gate, "model.gate")
        if not isinstance(self.backbone, str) or not self.backbone.strip():
            raise ValueError(f"model.backbone: must be a non-empty string, got {self.backbone!r}")
        self.dtype = coerce_enum(DType, self.dtype, "model.dtype")
        self.fusion = coerce_enum(FusionMode, self.fusion, "model.fusion")
        if isinstance(self.modalities, str) or not isinstance(self.modalities, Sequence):
            raise ValueError(f"model.modalities: must be a list of names, got {self.modalities!r}")
        self.modalities = list(self.modalities)
        if not self.modalities:
            raise ValueError("model.modalities: must name at least one modality")
        for m in self.modalities:
            if not isinstance(m, str) or not m:
                raise ValueError(f"model.modalities: {m!r} is not a modality name")
        dupes = sorted({m for m in self.modalities if self.modalities.count(m) > 1})
        if dupes:
            raise ValueError(f"model.modalities: duplicated {', '.join(dupes)}")
        if self.fusion == FusionMode.SINGLE:
            if self.single_modality is None:
                raise ValueError("model.single_modality: required when model.fusion is 'single'")
            if self.single_modality not in self.modalities:
                raise ValueError(
                    f"model.single_modality: {self.single_modality!r} is not in model.modalities "
                    f"{self.modalities}"
                )
        if self.fusion == FusionMode.LLARA and "id" not in self.modalities:
            raise ValueError("model.modalities: fusion 'llara' needs the 'id' modality")
        if isinstance(self.token_scale, str):
            if self.token_scale != "embed_norm":
                raise ValueError(
                    f"model.token_scale: expected 'embed_norm', a positive number or null, "
                    f"got {self.token_scale!r}"
                )
        elif self.token_scale is not None:
            self.token_scale = _number(self.token_scale, "model.token_scale", strict=True)
        self.answer = coerce_enum(AnswerHead, self.answer, "model.answer")
        if self.user_token is not None:
            self.user_token = coerce_enum(UserToken, self.user_token, "model.user_token")
        self._resolve_head_flags()
        for name in _MODEL_FLAGS:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"model.{name}: must be true or false, got {getattr(self, name)!r}")
        self.score_scale = _number(self.score_scale, "model.score_scale", strict=True)
        if self.lm_layers is not None:
            _positive_int(self.lm_layers, "model.lm_layers")
        if self.answer == AnswerHead.TITLE:
            if not self.prompt_candidates:
                raise ValueError("model.prompt_candidates: answer 'title' needs the candidates in the prompt")
            for name in ("collab_score", "no_llm", "query_head", "llm_residual", "new_item_control"):
                if getattr(self, name):
                    raise ValueError(f"model.{name}: only with answer 'item_token'")
        elif self.gate.use_user_context if isinstance(self.gate, GateConfig) else False:
            raise ValueError(
                "model.gate.use_user_context: must be false with answer 'item_token' (one item table "
                "scores every user)"
            )
        if not self.soft_tokens and self.answer != AnswerHead.TITLE:
            raise ValueError("model.soft_tokens: false needs answer 'title' (item_token scores soft tokens)")
        if self.collab_score and self.user_token is None:
            raise ValueError("model.collab_score: needs model.user_token (the collaborative run)")
        self.positions = coerce_enum(Positions, self.positions, "model.positions")
        if self.positions == Positions.ALL and (self.answer == AnswerHead.TITLE or self.prompt_candidates):
            raise ValueError("model.positions: 'all' needs answer 'item_token' without listed candidates")
        has_user = self.user_token is not None
        if self.template is None:
            self.template = default_template(self.answer, self.prompt_candidates, has_user, self.positions)
        check_template(self.template, self.prompt_candidates, has_user, self.positions)
        check_noun(self.noun, self.noun_plural)
        _positive_int(self.max_len, "model.max_len")
        _positive_int(self.n_candidates, "model.n_candidates", minimum=2)
        self._check_items()

    def _resolve_head_flags(self) -> None:
        """The head-dependent settings left at None: item_token's own (query_head, new_item_control and,
        with a user token, collab_score) on with that head and off with title, which lists the candidates;
        so `answer: title` alone is a valid config, and a value given explicitly is checked as given."""
        item_token = self.answer == AnswerHead.ITEM_TOKEN
        if self.prompt_candidates is None:
            self.prompt_candidates = not item_token
        for name in ("query_head", "new_item_control"):
            if getattr(self, name) is None:
                setattr(self, name, item_token)
        if self.positions is None:
            self.positions = Positions.ALL if item_token and not self.prompt_candidates else Positions.LAST
        if self.collab_score is None:
            self.collab_score = item_token and self.user_token is not None

    def _check_items(self) -> None:
        """item_text, item_tokens, modality_dropout, content_loss and new_item_collab."""
        self.new_item_collab = _number(self.new_item_collab, "model.new_item_collab")
        if self.new_item_collab > 1:
            raise ValueError(f"model.new_item_collab: must be in [0, 1], got {self.new_item_collab!r}")
        self.new_item_offset = _number(self.new_item_offset, "model.new_item_offset", low=-math.inf)
        for name in ("content_similarity", "new_item_order", "content_loss"):
            setattr(self, name, _number(getattr(self, name), f"model.{name}"))
        self.item_text = coerce_enum(ItemText, self.item_text, "model.item_text")
        if self.item_tokens is not None:
            _positive_int(self.item_tokens, "model.item_tokens")
        if self.modality_dropout is None:  # the recipe's rates, on what the encoder reads (title: none)
            use = self.used_modalities if self.answer == AnswerHead.ITEM_TOKEN else []
            self.modality_dropout = {m: rate for m, rate in RECIPE_DROPOUT.items() if m in use}
        if not isinstance(self.modality_dropout, Mapping):
            raise ValueError(
                f"model.modality_dropout: must map modality -> rate, got {self.modality_dropout!r}"
            )
        rates = {}
        for name, rate in self.modality_dropout.items():
            if name not in self.modalities:
                raise ValueError(
                    f"model.modality_dropout: {name!r} is not in model.modalities {self.modalities}"
                )
            rates[name] = _number(rate, f"model.modality_dropout.{name}")
            if not rates[name] < 1.0:
                raise ValueError(f"model.modality_dropout.{name}: must be in [0, 1), got {rate!r}")
        if rates and any(rates.values()) and self.answer != AnswerHead.ITEM_TOKEN:
            raise ValueError("model.modality_dropout: only with answer 'item_token'")
        self.modality_dropout = rates

    @property
    def used_modalities(self) -> list[str]:
        """The modalities the item encoder actually reads, in gate order."""
        if self.fusion == FusionMode.SINGLE:
            return [str(self.single_modality)]
        if self.fusion == FusionMode.LLARA:
            return ["id"]
        return list(self.modalities)


@dataclass
class AMFRecConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if isinstance(self.model, Mapping):
            self.model = _build(ModelConfig, self.model, "model")
        if isinstance(self.train, Mapping):
            self.train = _build(TrainConfig, self.train, "train")
        if self.train.n_negatives + 1 != self.model.n_candidates:
            raise ValueError(
                f"train.n_negatives: {self.train.n_negatives} + 1 must equal model.n_candidates "
                f"({self.model.n_candidates})"
            )

    # ------------------------------------------------------------------------------------------- dict / yaml
    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AMFRecConfig:
        """Build from a nested dict; unknown keys and bad values raise ValueError naming the field."""
        if not isinstance(d, Mapping):
            raise ValueError(f"config: expected a mapping at the top level, got {type(d).__name__}")
        return _build(cls, d, "")

    def to_dict(self) -> dict[str, Any]:
        """A plain nested dict (enums as their values, tuples as lists) that from_dict reads back."""
        return _plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    @classmethod
    def from_yaml(
        cls, path: str | Path | None, overrides: Mapping[str, Any] | Sequence[str] | None = None
    ) -> AMFRecConfig:
        """Read a YAML file (None = the defaults) and apply dotted overrides (`from_mapping`).

        overrides: {"train.lr": 1e-4} or ["train.lr=1e-4", "model.fusion=mean"] (values parsed as YAML).
        Raises ConfigError (an AmfrecError and a ValueError) naming the file and the field.
        """
        if path is None:
            return cls.from_mapping({}, overrides)
        try:
            raw = read_yaml_mapping(path)
        except AmfrecError as e:
            raise ConfigError(str(e)) from None
        return cls.from_mapping(raw, overrides, str(path), read_text(path))

    @classmethod
    def from_mapping(
        cls,
        raw: Mapping,
        overrides: Mapping | Sequence[str] | None = None,
        where: str = "config",
        text: str = "",
    ) -> AMFRecConfig:
        """A YAML file's top-level mapping `raw`, already read, with dotted overrides; a bad field raises
        ConfigError naming `where` (the file) and the field's line in the file's `text` (`_field_line`)."""
        try:
            return cls.from_dict(apply_overrides(raw, overrides or {}))
        except ValueError as e:
            line = _field_line(text, str(e).split(":", 1)[0], overrides)
            raise ConfigError(f"{where}{f':{line}' if line else ''}: {e}") from None
