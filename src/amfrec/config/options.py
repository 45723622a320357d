"""The pieces AMFRec's configuration is made of: str-enums, default prompt templates, the validators that
name the bad field and value, and the YAML plumbing (dotted overrides, unknown keys, line numbers)."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from collections.abc import Mapping, Sequence
from enum import Enum, StrEnum
from typing import Any

import yaml

from amfrec.errors import AmfrecError
from amfrec.io import parse_overrides


class ConfigError(AmfrecError, ValueError):
    """A bad configuration file or override (one line: file, field, problem)."""


class FusionMode(StrEnum):
    GATED = "gated"  # AMFRec: softmax gate over present modalities, one soft token per item
    TOKENS = "tokens"  # one soft token per modality (T = M tokens per item), no gate
    MEAN = "mean"  # average of the present modalities' projections, no gate
    CONCAT = "concat"  # one projector over the concatenated features (absent -> zeros)
    SINGLE = "single"  # one modality only (`single_modality`)
    LLARA = "llara"  # LLaRA: the id modality through one MLP, no MoE, no gate


class AnswerHead(StrEnum):
    # The LM's last hidden state scored against each item's own soft token (cosine x learned scale): one
    # backbone pass scores every candidate, or the whole catalogue.
    ITEM_TOKEN = "item_token"
    TITLE = "title"  # LLaRA: the target title's tokens (generation protocol; an ablation)


class UserToken(StrEnum):
    SASREC = "sasrec"  # the collaborative run's sequence representation, frozen, through a trainable MLP
    GRU4REC = "gru4rec"
    # SASRec over ID + frozen content vectors (baselines/content.py): it also knows items it never trained on
    SASREC_CONTENT = "sasrec_content"


class LossItems(StrEnum):
    CATALOGUE = "catalogue"  # item_token: softmax over every item (one backbone pass, 1,682 classes)
    CANDIDATES = "candidates"  # softmax over the example's target + n_negatives drawn items


class Positions(StrEnum):
    # Every history item's boundary is a query: one prompt teaches each of its items' successors in one causal
    # pass (as SASRec trains); each item carries its own collaborative user token (the collaborative net's
    # state after that item), and the prompt ends at the last item, whose boundary scores the next one.
    ALL = "all"
    # One query, after the template's last word: one training target per prompt (one window, one target).
    LAST = "last"


class ItemText(StrEnum):
    TITLE = "title"  # the item file's title field
    FULL = "full"  # title, year, genres and every other text field (e.g. categories, brand): ItemInfo.text()


class DType(StrEnum):
    AUTO = "auto"  # measured per machine (amfrec.hardware): bfloat16 only where it is faster
    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"


class BalanceLoss(StrEnum):
    SWITCH = "switch"  # K * sum_k f_k * p_k, f_k = fraction of items routed to expert k (Switch / GShard)
    SOFT = "soft"  # K * sum_k p_k^2: f_k replaced by the mean router probability (fully differentiable)


DEFAULT_TEMPLATE = (  # candidates listed in the prompt (answer: title, or prompt_candidates: true)
    "This user has watched {history} in the previous. "
    "Please predict the next {noun} this user will watch. "
    "Choose the answer from the following {n_candidates} {noun} titles: {candidates}. Answer:"
)
# History only: the answer position is the prompt's last token, whose hidden state scores the items.
ITEM_TOKEN_TEMPLATE = "A user watched these {noun_plural}, oldest first: {history}. The next {noun} is:"
ITEM_TOKEN_USER_TEMPLATE = (
    "A user with the taste {user} watched these {noun_plural}, oldest first: {history}. The next {noun} is:"
)


# positions 'all': the prompt ends at the last item (its boundary is the query); user tokens follow each item.
ITEM_TOKEN_ALL_TEMPLATE = "A user's {noun_plural}, oldest first: {history}"


def default_template(
    answer: AnswerHead, prompt_candidates: bool, user_token: bool, positions: Positions = Positions.LAST
) -> str:
    """The packaged template for an answer head / prompt layout."""
    if positions == Positions.ALL:
        return ITEM_TOKEN_ALL_TEMPLATE
    if answer == AnswerHead.TITLE or prompt_candidates:
        user = DEFAULT_TEMPLATE.replace("This user", "This user {user}", 1)
        return user if user_token else DEFAULT_TEMPLATE
    return ITEM_TOKEN_USER_TEMPLATE if user_token else ITEM_TOKEN_TEMPLATE


def check_template(template: str, prompt_candidates: bool, user_token: bool, positions: Positions) -> None:
    """Raise a ValueError naming model.template when its slots do not fit the prompt layout."""
    if not isinstance(template, str) or "{history}" not in template:
        raise ValueError("model.template: the slot {history} is missing")
    if ("{candidates}" in template) != prompt_candidates:
        raise ValueError("model.template: the slot {candidates} must appear iff model.prompt_candidates")
    if positions == Positions.ALL:
        if "{user}" in template or not template.rstrip().endswith("{history}"):
            raise ValueError(
                "model.template: with model.positions 'all' it must end with {history} and have no {user} "
                "slot (the last item's boundary is the query; user tokens follow each item)"
            )
    elif ("{user}" in template) != user_token:
        raise ValueError("model.template: the slot {user} must appear iff model.user_token is set")


def check_noun(noun: str | None, noun_plural: str) -> None:
    """Raise a ValueError naming model.noun / model.noun_plural when either is not text."""
    if noun is not None and (not isinstance(noun, str) or not noun.strip()):
        raise ValueError(f"model.noun: must be a non-empty string or null, got {noun!r}")
    if not isinstance(noun_plural, str):
        raise ValueError(f"model.noun_plural: must be a string, got {noun_plural!r}")


def coerce_enum(cls: type[Enum], value: Any, name: str) -> Any:
    """Coerce `value` to enum `cls` or raise a ValueError listing the allowed values."""
    if isinstance(value, cls):
        return value
    try:
        return cls(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in cls)
        raise ValueError(f"{name}: unknown value {value!r} (expected one of {allowed})") from None


def _positive_int(value: Any, name: str, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: must be an integer >= {minimum}, got {value!r}")


def _number(value: Any, name: str, *, low: float = 0.0, strict: bool = False) -> float:
    """Return `value` as a float, or raise. Strings like "1e-4" (YAML 1.1 reads them as text) are parsed."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (strict and value == low):
        bound = "" if low == -math.inf else f" {'>' if strict else '>='} {low:g}"
        raise ValueError(f"{name}: must be a finite number{bound}, got {value!r}")
    return float(value)


def apply_overrides(raw: Mapping[str, Any], overrides: Mapping[str, Any] | Sequence[str]) -> dict[str, Any]:
    """A deep copy of `raw` with dotted keys set: {"model.gate.hidden": 64} or ["model.gate.hidden=64"]."""
    out = copy.deepcopy(dict(raw))
    try:
        items = overrides if isinstance(overrides, Mapping) else parse_overrides(overrides, "override")
    except AmfrecError as e:
        raise ValueError(str(e)) from None
    for key, value in items.items():
        parts = key.split(".")
        node = out
        for p in parts[:-1]:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise ValueError(f"override {key!r}: {p!r} is not a section")
            node = child
        node[parts[-1]] = value
    return out


def _field_line(text: str, dotted: str, overrides: Mapping[str, Any] | Sequence[str] | None) -> int | None:
    """The line of the field `a.b.c` in a config file's YAML `text` (`_yaml_line`), or None when an override
    set the field (the file is not where its value came from)."""
    overridden = isinstance(overrides, Mapping) and dotted in overrides
    overridden = overridden or any(str(o).startswith(dotted + "=") for o in (overrides or ()))
    return None if overridden or not text else _yaml_line(text, dotted)


def _yaml_line(text: str, dotted: str) -> int | None:
    """1-based line of the key `a.b.c` in the YAML `text` (the deepest part found), or None."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for part in dotted.split("."):
        if not isinstance(node, yaml.MappingNode):
            break
        match = next(((k, v) for k, v in node.value if getattr(k, "value", None) == part), None)
        if match is None:
            break
        line, node = match[0].start_mark.line + 1, match[1]
    return line


def _build(cls: type, d: Mapping[str, Any], prefix: str) -> Any:
    """Instantiate dataclass `cls` from `d`, rejecting unknown keys by their dotted name."""
    if not isinstance(d, Mapping):
        raise ValueError(f"{prefix or 'config'}: expected a mapping, got {d!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    for k in d:
        if k not in names:
            full = f"{prefix}.{k}" if prefix else str(k)
            raise ValueError(f"{full}: unknown key (known: {', '.join(sorted(names))})")
    return cls(**d)


def _plain(x: Any) -> Any:
    if isinstance(x, Enum):
        return x.value
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    return x
